//! What a server's TLS handshake settled, as the async runtimes report it
//! (`storm_async::runtime::TlsInfo` on `Runtime::TlsServer`): the name the
//! client sent (SNI) and the protocol agreed on (ALPN), on tokio and smol.

use std::future::poll_fn;
use std::net::TcpListener;

use storm_async::runtime::TlsInfo;
use storm_host::options::TlsServerConfig;
use storm_tests::suite::on_async::Executor;
use storm_tests::suite::pki::Pki;
use storm_tests::suite::raw;

fn an_accepted_connection_says_its_sni_and_alpn<R: Executor>() {
    let pki = Pki::new();
    let config = TlsServerConfig::new(pki.server_config(&[b"storm-test", b"http/1.1"], false));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let client_config = pki.client_config(false, &[b"http/1.1", b"storm-test"]);
    // The client keeps its connection until the server has looked.
    let (looked, done) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let tls = raw::tls_connect(addr, client_config).expect("TLS handshake");
        let _ = done.recv_timeout(storm_tests::suite::WAIT);
        drop(tls);
    });
    R::block_on(async {
        let listener = R::listen(listener).unwrap();
        let (tcp, _) = poll_fn(|cx| R::poll_accept(&listener, cx)).await.unwrap();
        let tls = R::tls_accept(config, tcp).await.unwrap();
        assert_eq!(tls.sni(), Some("localhost"));
        assert_eq!(tls.alpn(), Some(&b"storm-test"[..]));
    });
    drop(looked);
    client.join().unwrap();
}

#[test]
fn tokio() {
    an_accepted_connection_says_its_sni_and_alpn::<storm_tokio::Tokio>();
}

#[test]
fn smol() {
    an_accepted_connection_says_its_sni_and_alpn::<storm_smol::Smol>();
}
