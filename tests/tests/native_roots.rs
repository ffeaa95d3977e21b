//! `TlsClientOptions::native_roots`: a client trusting the operating
//! system's certificate store connects to a server whose CA is in it, on
//! every adapter. rustls-native-certs reads the store from `SSL_CERT_FILE`
//! when it is set, which this test points at its own CA; the one test of
//! this binary sets it before any thread starts, so no other test sees it.

use storm_host::options::TlsClientOptions;
use storm_tests::suite::on_async::{Smol, Tokio};
use storm_tests::suite::on_std::Std;
use storm_tests::suite::pki::Pki;
use storm_tests::suite::{Adapter, Client, ClientSpec, OnMessage, Server, ServerSpec, WAIT};

#[test]
fn a_client_trusting_the_system_store_connects_to_a_server_it_holds() {
    let pki = Pki::new();
    let files = pki.pem_files();
    // SAFETY: this binary's only test, before it starts any thread.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", &files.ca);
        std::env::remove_var("SSL_CERT_DIR");
    }
    echo_trusting_the_system::<Tokio>(&pki);
    echo_trusting_the_system::<Smol>(&pki);
    echo_trusting_the_system::<Std>(&pki);

    // The web roots do not hold this CA.
    let mut spec = ServerSpec::ws(OnMessage::Echo);
    spec.options.tls = Some(pki.server());
    let mut server = Server::start::<Std>(spec);
    let mut client = ClientSpec::to(&server);
    client.options.tls = Some(TlsClientOptions::default());
    let Err(error) = Client::try_connect::<Std>(&client) else {
        panic!("the web roots trusted a CA made now");
    };
    assert!(
        error.contains("not signed by a CA this client trusts"),
        "{error}"
    );
    server.shutdown(WAIT);
}

fn echo_trusting_the_system<A: Adapter>(pki: &Pki) {
    let mut spec = ServerSpec::ws(OnMessage::Echo);
    spec.options.tls = Some(pki.server());
    let mut server = Server::start::<A>(spec);
    let mut client_spec = ClientSpec::to(&server);
    client_spec.options.tls = Some(TlsClientOptions::with_native_roots());
    let client = Client::connect::<A>(&client_spec);
    client.send("trusted by the system");
    assert_eq!(
        client.recv(),
        storm_proto::Message::from("trusted by the system")
    );
    client.close();
    client.assert_closed();
    server.shutdown(WAIT);
}
