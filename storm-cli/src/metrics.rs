//! `--metrics-addr HOST:PORT`: a server's metrics as Prometheus text at
//! `GET /metrics` on an address of its own.
//!
//! The figures are the hub's own totals ([`Hub::metrics`]), read on each
//! scrape and handed to the `metrics` facade ([`HubMetrics::record`]),
//! whose Prometheus recorder renders them: nothing is added to the
//! per-message path. The gateway adds its backends' state
//! ([`record_gateway`]), read the same way. The endpoint is one thread answering one request at
//! a time, each bounded in size and time, so a scraper cannot hold memory
//! or the thread for long.
//!
//! [`HubMetrics::record`]: storm_host::hub::HubMetrics::record

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use storm_host::hub::Hub;
use storm_services::gateway::BackendStatus;

/// Largest request head read; a longer one is answered 431 and closed.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a scraper gets to send its request and read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The process's recorder, installed by the first [`serve`].
static RENDER: OnceLock<PrometheusHandle> = OnceLock::new();

fn handle() -> io::Result<&'static PrometheusHandle> {
    if let Some(handle) = RENDER.get() {
        return Ok(handle);
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| {
        io::Error::other("--metrics-addr: another metrics recorder is already installed")
    })?;
    Ok(RENDER.get_or_init(|| handle))
}

/// A bound `--metrics-addr`, not yet answering: bound before the service
/// starts, so a bad address stops the program at once; [`serve`](Self::serve)
/// starts answering once the service's hub exists.
#[derive(Debug)]
pub struct MetricsEndpoint {
    listener: TcpListener,
    render: &'static PrometheusHandle,
}

impl MetricsEndpoint {
    /// Binds `addr` and installs the process's Prometheus recorder.
    ///
    /// # Errors
    ///
    /// The address cannot be bound, or another `metrics` recorder is
    /// installed in the process.
    pub fn bind(addr: &str) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("--metrics-addr {addr}: {e}")))?;
        Ok(Self {
            listener,
            render: handle()?,
        })
    }

    /// The address bound (port 0 picks one).
    ///
    /// # Errors
    ///
    /// The socket's address cannot be read.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers scrapes with `hub`'s metrics, labelled `service`, from a
    /// thread of its own until the process ends, and prints
    /// `metrics at http://ADDR/metrics` on stdout.
    ///
    /// # Errors
    ///
    /// The thread cannot be started.
    pub fn serve(self, service: &'static str, hub: Hub) -> io::Result<()> {
        self.serve_with(service, move || {
            hub.metrics(Instant::now()).record(service);
        })
    }

    /// [`serve`](Self::serve) for a service with figures beyond its hub's:
    /// `record` hands everything to the `metrics` facade (its hub's
    /// [`HubMetrics::record`](storm_host::hub::HubMetrics::record) and its own gauges and counters, labelled
    /// `service`) before each scrape is rendered.
    ///
    /// # Errors
    ///
    /// The thread cannot be started.
    pub fn serve_with(
        self,
        service: &'static str,
        record: impl Fn() + Send + 'static,
    ) -> io::Result<()> {
        let Self { listener, render } = self;
        let local = listener.local_addr()?;
        std::thread::Builder::new()
            .name("storm-metrics".to_owned())
            .spawn(move || {
                for stream in listener.incoming() {
                    let answered = stream.and_then(|stream| {
                        answer(stream, || {
                            record();
                            render.render()
                        })
                    });
                    if let Err(e) = answered {
                        tracing::debug!(error = %e, "metrics scrape failed");
                    }
                }
            })?;
        println!("metrics at http://{local}/metrics");
        tracing::info!(addr = %local, service, "serving metrics");
        Ok(())
    }
}

/// [`MetricsEndpoint::bind`] for `--metrics-addr`, if given.
///
/// # Errors
///
/// As [`MetricsEndpoint::bind`].
pub fn bind(addr: Option<&str>) -> io::Result<Option<MetricsEndpoint>> {
    addr.map(MetricsEndpoint::bind).transpose()
}

/// Starts `endpoint`, if any, for `hub`: where a service is started
/// inside a closure that cannot fail, a thread that cannot be spawned is
/// logged as an error rather than stopping the service.
pub fn start(endpoint: Option<MetricsEndpoint>, service: &'static str, hub: &Hub) {
    if let Some(endpoint) = endpoint {
        if let Err(e) = endpoint.serve(service, hub.clone()) {
            tracing::error!(error = %e, "--metrics-addr: cannot serve metrics");
        }
    }
}

/// Names of the gateway's own metrics, beside its hub's
/// ([`metric_names`](storm_host::hub::metric_names)), each labelled
/// `service="gateway"`.
pub mod gateway_names {
    /// Gauge: the backends (routes) of the route file.
    pub const BACKENDS: &str = "storm_gateway_backends";
    /// Gauge: the backends whose connection is up now.
    pub const BACKENDS_CONNECTED: &str = "storm_gateway_backends_connected";
    /// Gauge, also labelled `route`: 1 while that backend's connection is
    /// up, 0 while it is down (being reconnected).
    pub const BACKEND_UP: &str = "storm_gateway_backend_up";
    /// Counter: backend messages dropped (no valid `CLIENT=` header, or for
    /// a client that has gone).
    pub const DROPPED_REPLIES: &str = "storm_gateway_dropped_replies_total";
}

/// Hands the gateway's backend figures to the `metrics` facade, labelled
/// `service`: how many backends there are and are connected, each one's
/// state by route, and the backend messages dropped.
pub fn record_gateway(service: &str, backends: &[BackendStatus], dropped_replies: u64) {
    let label = || [("service", service.to_owned())];
    let connected = backends.iter().filter(|b| b.connected).count();
    metrics::gauge!(gateway_names::BACKENDS, &label()).set(count(backends.len()));
    metrics::gauge!(gateway_names::BACKENDS_CONNECTED, &label()).set(count(connected));
    for backend in backends {
        let labels = [
            ("service", service.to_owned()),
            ("route", backend.route.clone()),
        ];
        metrics::gauge!(gateway_names::BACKEND_UP, &labels)
            .set(count(usize::from(backend.connected)));
    }
    metrics::counter!(gateway_names::DROPPED_REPLIES, &label()).absolute(dropped_replies);
}

/// A count as a gauge's value: exact far beyond any real count.
fn count(n: usize) -> f64 {
    u32::try_from(n).map_or(f64::from(u32::MAX), f64::from)
}

/// Reads one request head from `stream` and answers it: the text `body`
/// makes for `GET /metrics`, 404 for another path, 405 for another
/// method, 400 or 431 for what is not a request head of at most
/// [`MAX_REQUEST`] bytes. One request per connection.
fn answer(mut stream: TcpStream, body: impl FnOnce() -> String) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0_u8; 1024];
    let (status, body) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(()); // gone before asking
        }
        head.extend_from_slice(chunk.get(..n).unwrap_or_default());
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                break match (request.method, request.path) {
                    (Some("GET"), Some("/metrics")) => ("200 OK", body()),
                    (Some("GET"), _) => ("404 Not Found", "not found: try /metrics\n".into()),
                    _ => ("405 Method Not Allowed", "GET /metrics only\n".into()),
                };
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_REQUEST => {}
            Ok(httparse::Status::Partial) => {
                break ("431 Request Header Fields Too Large", String::new());
            }
            Err(e) => break ("400 Bad Request", format!("{e}\n")),
        }
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()
}
