//! Middleware: hooks around a connection's life and its messages.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use storm_proto::Message;

use super::SessionId;

/// Hooks an adapter calls around a connection, on servers and clients
/// alike. Every method has a no-op default: implement only what you need.
///
/// Middleware is shared (`Send + Sync`, `&self`); keep per-session state in
/// your own map keyed by [`SessionId`] (clients use the id their adapter
/// gives them). The adapter calls the hooks without holding any hub lock.
///
/// ```
/// use storm_proto::Message;
/// use storm_host::hub::{Middleware, MiddlewareChain, SessionId};
///
/// /// Drops empty messages and upper-cases the rest.
/// struct Shout;
///
/// impl Middleware for Shout {
///     fn on_received(&self, _session: SessionId, message: Message) -> Option<Message> {
///         (!message.is_empty()).then(|| Message::from(message.as_bytes().to_ascii_uppercase()))
///     }
/// }
///
/// let chain = MiddlewareChain::new().with(Shout);
/// let id = SessionId::new(1);
/// assert_eq!(chain.received(id, Message::from("hi")), Some(Message::from(b"HI".to_vec())));
/// assert_eq!(chain.received(id, Message::from("")), None);
/// ```
pub trait Middleware: Send + Sync {
    /// A connection was established (after the handshake, before the
    /// application's own connect handler).
    fn on_connect(&self, session: SessionId) {
        let _ = session;
    }

    /// A message arrived. Return it (possibly transformed) to pass it on,
    /// or `None` to suppress it: later middleware and the application never
    /// see it.
    fn on_received(&self, session: SessionId, message: Message) -> Option<Message> {
        let _ = session;
        Some(message)
    }

    /// A message is about to be encoded and sent. Return it (possibly
    /// transformed), or `None` to suppress it.
    ///
    /// Broadcasts hand the hub one shared message, so they do not pass
    /// through this hook per recipient; an adapter may run it once, with the
    /// sender's id, before broadcasting.
    fn on_sending(&self, session: SessionId, message: Message) -> Option<Message> {
        let _ = session;
        Some(message)
    }

    /// The connection ended. Called in reverse order of registration, like
    /// unwinding.
    fn on_disconnect(&self, session: SessionId) {
        let _ = session;
    }

    /// The connection hit an error (protocol violation, I/O error).
    fn on_error(&self, session: SessionId, error: &(dyn Error + 'static)) {
        let _ = (session, error);
    }
}

/// An ordered list of [`Middleware`], itself a middleware.
///
/// Built once, then shared (`Clone` copies the `Arc`s), so running it takes
/// no lock. Connect, receive, send and error hooks run in order of
/// registration; a `None` from one layer stops the message there.
/// Disconnect hooks run in reverse order.
#[derive(Clone, Default)]
pub struct MiddlewareChain {
    layers: Vec<Arc<dyn Middleware>>,
}

impl fmt::Debug for MiddlewareChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MiddlewareChain")
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl MiddlewareChain {
    /// An empty chain: every hook passes messages through unchanged.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `middleware` (builder style).
    #[must_use]
    pub fn with(mut self, middleware: impl Middleware + 'static) -> Self {
        self.layers.push(Arc::new(middleware));
        self
    }

    /// Appends a shared middleware.
    pub fn push(&mut self, middleware: Arc<dyn Middleware>) {
        self.layers.push(middleware);
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the chain has no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Runs every layer's [`on_connect`](Middleware::on_connect), in order.
    pub fn connect(&self, session: SessionId) {
        for layer in &self.layers {
            layer.on_connect(session);
        }
    }

    /// Runs [`on_received`](Middleware::on_received) through the layers in
    /// order; `None` if one of them suppressed the message.
    #[must_use = "the message to hand to the application, or None if suppressed"]
    pub fn received(&self, session: SessionId, message: Message) -> Option<Message> {
        self.layers.iter().try_fold(message, |message, layer| {
            layer.on_received(session, message)
        })
    }

    /// Runs [`on_sending`](Middleware::on_sending) through the layers in
    /// order; `None` if one of them suppressed the message.
    #[must_use = "the message to send, or None if suppressed"]
    pub fn sending(&self, session: SessionId, message: Message) -> Option<Message> {
        self.layers
            .iter()
            .try_fold(message, |message, layer| layer.on_sending(session, message))
    }

    /// Runs every layer's [`on_disconnect`](Middleware::on_disconnect), in
    /// reverse order.
    pub fn disconnect(&self, session: SessionId) {
        for layer in self.layers.iter().rev() {
            layer.on_disconnect(session);
        }
    }

    /// Runs every layer's [`on_error`](Middleware::on_error), in order.
    pub fn error(&self, session: SessionId, error: &(dyn Error + 'static)) {
        for layer in &self.layers {
            layer.on_error(session, error);
        }
    }
}

impl Middleware for MiddlewareChain {
    fn on_connect(&self, session: SessionId) {
        self.connect(session);
    }

    fn on_received(&self, session: SessionId, message: Message) -> Option<Message> {
        self.received(session, message)
    }

    fn on_sending(&self, session: SessionId, message: Message) -> Option<Message> {
        self.sending(session, message)
    }

    fn on_disconnect(&self, session: SessionId) {
        self.disconnect(session);
    }

    fn on_error(&self, session: SessionId, error: &(dyn Error + 'static)) {
        self.error(session, error);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use std::sync::Mutex;

    use super::*;

    /// Records every hook call as "name:hook".
    struct Recorder {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
        suppress: bool,
    }

    impl Recorder {
        fn note(&self, hook: &str) {
            self.log
                .lock()
                .unwrap()
                .push(format!("{}:{hook}", self.name));
        }
    }

    impl Middleware for Recorder {
        fn on_connect(&self, _: SessionId) {
            self.note("connect");
        }
        fn on_received(&self, _: SessionId, message: Message) -> Option<Message> {
            self.note("received");
            if self.suppress {
                return None;
            }
            let mut out = message.as_bytes().to_vec();
            out.extend_from_slice(self.name.as_bytes());
            Some(out.into())
        }
        fn on_sending(&self, _: SessionId, message: Message) -> Option<Message> {
            self.note("sending");
            let mut out = message.as_bytes().to_vec();
            out.extend_from_slice(self.name.as_bytes());
            Some(out.into())
        }
        fn on_disconnect(&self, _: SessionId) {
            self.note("disconnect");
        }
        fn on_error(&self, _: SessionId, error: &(dyn Error + 'static)) {
            self.note(&format!("error {error}"));
        }
    }

    fn chain(log: &Arc<Mutex<Vec<String>>>, suppress_b: bool) -> MiddlewareChain {
        let layer = |name, suppress| Recorder {
            name,
            log: log.clone(),
            suppress,
        };
        MiddlewareChain::new()
            .with(layer("a", false))
            .with(layer("b", suppress_b))
            .with(layer("c", false))
    }

    #[test]
    fn hooks_run_in_order_and_disconnect_in_reverse() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let chain = chain(&log, false);
        let id = SessionId::new(7);
        chain.connect(id);
        assert_eq!(
            chain.received(id, Bytes::from_static(b">").into()),
            Some(Message::from(b">abc".to_vec()))
        );
        assert_eq!(
            chain.sending(id, Bytes::from_static(b"<").into()),
            Some(Message::from(b"<abc".to_vec()))
        );
        chain.error(id, &super::super::SessionClosed);
        chain.disconnect(id);
        let log = log.lock().unwrap().join(" ");
        assert_eq!(
            log,
            "a:connect b:connect c:connect a:received b:received c:received \
             a:sending b:sending c:sending a:error the session is closed \
             b:error the session is closed c:error the session is closed \
             c:disconnect b:disconnect a:disconnect"
        );
    }

    #[test]
    fn suppression_stops_the_chain() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let chain = chain(&log, true);
        assert_eq!(chain.received(SessionId::new(1), Bytes::new().into()), None);
        assert_eq!(*log.lock().unwrap(), ["a:received", "b:received"]);
    }

    #[test]
    fn empty_chain_and_defaults_pass_through() {
        struct Nothing;
        impl Middleware for Nothing {}
        let chain = MiddlewareChain::new().with(Nothing);
        let nested = MiddlewareChain::new().with(chain.clone());
        let id = SessionId::new(1);
        let message = Message::from(Bytes::from_static(b"same"));
        let out = nested.received(id, message.clone()).unwrap();
        assert_eq!(out.as_bytes().as_ptr(), message.as_bytes().as_ptr()); // no copy
        assert_eq!(nested.sending(id, message.clone()), Some(message));
        assert!(MiddlewareChain::new().is_empty());
        assert_eq!(nested.len(), 1);
    }
}
