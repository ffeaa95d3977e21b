//! Errors that say what to do, through the real `storm` binary: a plain
//! client of a TLS server and a TLS client of a plain server, swapped
//! `--tls` files, a certificate made the common way, and logs without
//! colour codes off a terminal.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use storm_tests::process::{lines, output_within};
use storm_tests::suite::pki::{Pki, self_signed_ca_for_localhost};

/// The most a test waits for a process or a line.
const WAIT: Duration = Duration::from_secs(20);

/// Runs `test` for every server runtime, at once (each mostly waits on
/// processes); a panic in any fails the test.
fn on_every_runtime(test: impl Fn(&str) + Sync) {
    std::thread::scope(|scope| {
        for runtime in ["tokio", "smol", "std"] {
            let test = &test;
            scope.spawn(move || test(runtime));
        }
    });
}

/// A running `storm` server, killed on drop, with its address (from the
/// banner) and its stderr lines.
struct Server {
    child: Child,
    addr: String,
    stderr: Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `storm ARGS` with `env`, once its banner says where it listens.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_storm"))
            .args(args)
            .env_remove("NO_COLOR")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("storm starts");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = lines(child.stderr.take().expect("stderr"));
        let banner = lines(stdout)
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no banner from storm {args:?}"));
        let addr = banner
            .trim()
            .rsplit("://")
            .next()
            .expect("address in the banner")
            .trim_end_matches('/')
            .to_owned();
        Self {
            child,
            addr,
            stderr,
        }
    }

    /// The first stderr line containing `text`, within [`WAIT`].
    fn logged(&self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => panic!("nothing containing {text:?} logged within {WAIT:?}"),
            }
        }
    }
}

/// Runs `storm ARGS` to its end (bounded by [`WAIT`]): success and stderr.
fn run(args: &[&str]) -> (bool, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_storm"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("storm starts");
    let output = output_within(child, WAIT, &format!("storm {args:?}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// `storm SERVICE --addr 127.0.0.1:0 --runtime RUNTIME EXTRA…` with `env`.
fn serve(service: &str, runtime: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let args = [service, "--addr", "127.0.0.1:0", "--runtime", runtime];
    Server::start(&[&args[..], extra].concat(), env)
}

/// `storm client rpc --endpoint ENDPOINT EXTRA…` to its end: success and
/// stderr. The call timeout leaves a loaded machine time for a handshake.
fn rpc_call(endpoint: &str, extra: &[&str]) -> (bool, String) {
    let args = [
        "client",
        "rpc",
        "--endpoint",
        endpoint,
        "--timeout-ms",
        "3000",
    ];
    run(&[&args[..], extra].concat())
}

/// `storm client broker request --addr ADDR … EXTRA…` (one byte on
/// channel 1) to its end: success and stderr.
fn broker_request(addr: &str, extra: &[&str]) -> (bool, String) {
    let args = [
        "client",
        "broker",
        "request",
        "--addr",
        addr,
        "--channel",
        "1",
        "--data",
        "x",
    ];
    run(&[&args[..], extra].concat())
}

#[test]
fn a_plain_broker_client_of_a_tls_broker_is_told_to_use_tls() {
    let files = Pki::new().pem_files();
    on_every_runtime(|runtime| {
        let broker = serve("broker", runtime, &files.tls_args(), &[]);
        let (ok, stderr) = broker_request(&broker.addr, &[]);
        assert!(!ok, "{runtime}: {stderr}");
        assert!(
            stderr.contains("the server speaks TLS") && stderr.contains("--tls-ca"),
            "{runtime}: {stderr}"
        );
        assert!(!stderr.contains("incomplete frame"), "{runtime}: {stderr}");
    });
}

#[test]
fn a_ws_rpc_client_of_a_wss_server_is_told_to_use_wss() {
    let files = Pki::new().pem_files();
    on_every_runtime(|runtime| {
        let server = serve("rpc", runtime, &files.tls_args(), &[]);
        let (ok, stderr) = rpc_call(&format!("ws://{}/", server.addr), &[]);
        assert!(!ok, "{runtime}: {stderr}");
        assert!(
            stderr.contains("the server speaks TLS") && stderr.contains("use a wss:// URL"),
            "{runtime}: {stderr}"
        );
    });
}

/// A TLS client of a plain server is a configuration mistake: every
/// server service logs it at the default level (`warn`), naming the peer.
#[test]
fn a_client_hello_on_a_plain_port_is_logged_as_such() {
    let files = Pki::new().pem_files();
    let trust = ["--tls-ca", path(&files.ca)];
    let told = |server: &Server, runtime: &str| {
        let line = server.logged("TLS ClientHello on a plain port");
        assert!(line.contains("not running with TLS"), "{runtime}: {line}");
        assert!(line.contains("WARN"), "{runtime}: {line}");
        assert!(line.contains("from 127.0.0.1:"), "{runtime}: {line}");
    };
    on_every_runtime(|runtime| {
        // WebSocket: the handshake hears the ClientHello; the TLS client
        // is told the reply is not TLS.
        let echo = serve("echo", runtime, &[], &[]);
        let (ok, stderr) = rpc_call(&format!("wss://{}/", echo.addr), &trust);
        assert!(!ok && stderr.contains("is not TLS"), "{runtime}: {stderr}");
        told(&echo, runtime);
        // Length-prefixed TCP: the framer hears it.
        let echo = serve("echo", runtime, &["--proto", "lp"], &[]);
        let (ok, stderr) = rpc_call(&format!("tls://{}", echo.addr), &trust);
        assert!(!ok, "{runtime}: {stderr}");
        told(&echo, runtime);
        // The other services, through the same log.
        let rpc = serve("rpc", runtime, &["--proto", "tcp"], &[]);
        let (ok, stderr) = rpc_call(&format!("tls://{}", rpc.addr), &trust);
        assert!(!ok, "{runtime}: {stderr}");
        told(&rpc, runtime);
        let broker = serve("broker", runtime, &[], &[]);
        let (ok, stderr) = broker_request(&broker.addr, &trust);
        assert!(!ok, "{runtime}: {stderr}");
        told(&broker, runtime);
    });
}

#[test]
fn swapped_tls_files_are_named_with_what_they_hold_and_the_order() {
    let files = Pki::new().pem_files();
    let (ok, stderr) = run(&[
        "echo",
        "--addr",
        "127.0.0.1:0",
        "--tls",
        path(&files.key),
        path(&files.cert),
    ]);
    assert!(!ok, "{stderr}");
    for text in [
        "--tls CERT_PEM KEY_PEM",
        &format!("certificate chain file {}", path(&files.key)),
        "holds a PRIVATE KEY, not a CERTIFICATE",
        "the certificate chain (leaf first) comes first and its private key second",
    ] {
        assert!(stderr.contains(text), "{text:?} in {stderr}");
    }
}

#[test]
fn a_ca_certificate_as_the_servers_own_is_explained() {
    let (ca_as_leaf, key) = self_signed_ca_for_localhost();
    let dir = std::env::temp_dir().join(format!("storm-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, ca_as_leaf).expect("cert");
    std::fs::write(&key_file, key).expect("key");
    // The servers take it (it is a valid certificate); every client
    // refuses it, and says why and what to make instead.
    let tls = ["--tls", path(&cert_file), path(&key_file)];
    let server = serve("rpc", "tokio", &tls, &[]);
    for runtime in ["tokio", "smol"] {
        let (ok, stderr) = rpc_call(
            &format!("wss://{}/", server.addr),
            &["--tls-ca", path(&cert_file), "--runtime", runtime],
        );
        assert!(!ok, "{runtime}: {stderr}");
        assert!(
            stderr.contains("the server's certificate is a CA certificate")
                && stderr.contains("leaf certificate")
                && stderr.contains("subjectAltName"),
            "{runtime}: {stderr}"
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    for env in [
        &[("STORM_LOG", "info")][..],
        &[("STORM_LOG", "info"), ("NO_COLOR", "1")],
    ] {
        let echo = serve("echo", "tokio", &[], env);
        let line = echo.logged("echo listening");
        assert!(!line.contains('\u{1b}'), "{env:?}: {line:?}");
    }
}
