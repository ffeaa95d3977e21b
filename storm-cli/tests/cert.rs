//! `storm cert` through the real binary: the files it writes, that it
//! refuses to overwrite them, and that a TLS server with them is trusted by
//! clients that trust only its `ca.pem` (real sockets); and what a client
//! says of the certificate people make first.

mod child;
mod common;
use child::Storm;
use common::Inbox;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use storm_host::options::{ClientOptions, TlsClientOptions, WsOptions};
use storm_proto::Message;
use storm_tests::suite::pki::self_signed_ca_for_localhost;

/// A fresh directory under the system's temporary one, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("storm-cert-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// `storm cert ARGS` to its end: success, stdout, stderr.
fn cert(args: &[&str]) -> (bool, String, String) {
    let output = storm_tests::process::output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_storm"))
            .arg("cert")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("storm starts"),
        child::WAIT,
        "storm cert",
    );
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn cert_writes_a_ca_and_a_leaf_and_prints_commands_that_use_them() {
    let dir = TempDir::new("files");
    let out = dir.file("nested");
    let (ok, stdout, stderr) = cert(&["--out", path(&out), "--name", "example.test"]);
    assert!(ok, "{stderr}");
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    // The CA's key is not kept: nothing but these three.
    assert_eq!(names, ["ca.pem", "cert.pem", "key.pem"]);
    let (ca, leaf, key) = (
        out.join("ca.pem"),
        out.join("cert.pem"),
        out.join("key.pem"),
    );
    for (file, kind) in [
        (&ca, "CERTIFICATE"),
        (&leaf, "CERTIFICATE"),
        (&key, "PRIVATE KEY"),
    ] {
        let pem = std::fs::read_to_string(file).unwrap();
        assert!(pem.contains(&format!("-----BEGIN {kind}-----")), "{pem}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "key.pem is its owner's alone");
    }
    for text in [
        "localhost, 127.0.0.1, ::1, example.test".to_owned(),
        format!("storm echo --proto ws --tls {} {}", path(&leaf), path(&key)),
        format!("--tls-ca {}", path(&ca)),
        "storm client ws wss://localhost:9001/".to_owned(),
    ] {
        assert!(stdout.contains(&text), "{text:?} in {stdout}");
    }
}

#[test]
fn cert_never_overwrites_without_force() {
    let dir = TempDir::new("force");
    let out = path(&dir.0).to_owned();
    assert!(cert(&["--out", &out]).0);
    let before = std::fs::read(dir.file("ca.pem")).unwrap();
    let (ok, _, stderr) = cert(&["--out", &out]);
    assert!(!ok);
    assert!(
        stderr.contains("ca.pem already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(dir.file("ca.pem")).unwrap(), before);
    // One file left from another run is enough to refuse.
    std::fs::remove_file(dir.file("ca.pem")).unwrap();
    let (ok, _, stderr) = cert(&["--out", &out]);
    assert!(
        !ok && stderr.contains("cert.pem already exists"),
        "{stderr}"
    );
    assert!(!dir.file("ca.pem").exists(), "nothing written");
    let (ok, _, stderr) = cert(&["--out", &out, "--force"]);
    assert!(ok, "{stderr}");
    assert_ne!(std::fs::read(dir.file("ca.pem")).unwrap(), before);
    let (ok, _, stderr) = cert(&["--out", &out, "--force", "--name", "bad name!"]);
    assert!(!ok && stderr.contains("--name \"bad name!\""), "{stderr}");
}

/// The runtimes `storm client ws`/`tcp` run on.
const CLIENT_RUNTIMES: [&str; 3] = ["tokio", "smol", "std"];

/// A client trusting only `ca.pem` talks to a server with `cert.pem` and
/// `key.pem`: `storm client ws` and `storm client tcp` with `--tls-ca`
/// (by name and by address, IPv4 and IPv6), and a library client checking
/// an extra `--name`.
#[test]
fn a_server_with_cert_files_is_trusted_by_clients_of_its_ca() {
    let dir = TempDir::new("tls");
    let (ok, _, stderr) = cert(&["--out", path(&dir.0), "--name", "example.test"]);
    assert!(ok, "{stderr}");
    let (ca, leaf, key) = (
        dir.file("ca.pem"),
        dir.file("cert.pem"),
        dir.file("key.pem"),
    );
    let tls = ["--tls", path(&leaf), path(&key)];

    let (ws, ws_addr) = Storm::serve(
        "echo",
        "127.0.0.1:0",
        &[&["--proto", "ws"], &tls[..]].concat(),
    );
    let port = ws_addr.rsplit(':').next().unwrap().to_owned();
    let (ws6, ws6_addr) = Storm::serve("echo", "[::1]:0", &[&["--proto", "ws"], &tls[..]].concat());
    for url in [
        format!("wss://localhost:{port}/"),
        format!("wss://{ws_addr}/"),
        format!("wss://{ws6_addr}/"),
    ] {
        for runtime in CLIENT_RUNTIMES {
            let mut client = Storm::spawn(&[
                "client",
                "ws",
                &url,
                "--tls-ca",
                path(&ca),
                "--runtime",
                runtime,
            ]);
            client.stderr_line("connected to");
            client.send("over tls");
            assert_eq!(client.next_stdout(), "over tls", "{url} {runtime}");
            let (status, stderr) = client.finish();
            assert_eq!(status.code(), Some(0), "{url} {runtime}: {stderr}");
        }
    }

    let (line, line_addr) = Storm::serve(
        "echo",
        "127.0.0.1:0",
        &[&["--proto", "line"], &tls[..]].concat(),
    );
    for runtime in CLIENT_RUNTIMES {
        let mut client = Storm::spawn(&[
            "client",
            "tcp",
            &format!("tls://{line_addr}"),
            "--proto",
            "line",
            "--tls-ca",
            path(&ca),
            "--runtime",
            runtime,
        ]);
        client.stderr_line("connected to");
        client.send("line over tls");
        assert_eq!(client.next_stdout(), "line over tls", "{runtime}");
        // At stdin's end: close_notify and FIN, then the server's end.
        let (status, stderr) = client.finish();
        assert_eq!(status.code(), Some(0), "{runtime}: {stderr}");
    }

    // `storm client rpc` takes the same CA.
    let (rpc, rpc_addr) = Storm::serve("rpc", "127.0.0.1:0", &tls);
    let rpc_port = rpc_addr.rsplit(':').next().unwrap();
    let (status, stderr) = Storm::spawn(&[
        "client",
        "rpc",
        "--endpoint",
        &format!("wss://localhost:{rpc_port}/"),
        "--tls-ca",
        path(&ca),
        "--timeout-ms",
        "10000",
    ])
    .exit();
    assert_eq!(status.code(), Some(0), "{stderr}");

    // The extra name is in the certificate: a client that expects it (its
    // server_name) accepts the server at 127.0.0.1.
    let (tx, rx) = mpsc::channel();
    let ca_pem = std::fs::read(&ca).unwrap();
    let options = ClientOptions::default()
        .with_tls(TlsClientOptions::with_ca(ca_pem).with_server_name("example.test"));
    let client = storm_std::WsClient::connect(
        &format!("wss://{ws_addr}/"),
        options,
        WsOptions::default(),
        Inbox(tx),
    )
    .expect("a client expecting example.test connects");
    client.send(Message::from("named")).unwrap();
    let echoed = rx.recv_timeout(Duration::from_secs(20)).expect("echo");
    assert_eq!(echoed.as_bytes(), b"named");
    client.close();
    drop((ws, ws6, line, rpc));
}

/// `storm client json` and `storm bench` with `--tls-ca` talk to TLS
/// servers with `storm cert`'s files: the json demo by `host:port` (the
/// CA turns TLS on) and by `tls://`, and bench over TLS (json) and over
/// wss:// (echo-ws), every request answered.
#[test]
fn json_client_and_bench_trust_the_ca_of_storm_cert() {
    let dir = TempDir::new("json-bench");
    let (ok, _, stderr) = cert(&["--out", path(&dir.0)]);
    assert!(ok, "{stderr}");
    let ca = dir.file("ca.pem");
    let (leaf, key) = (dir.file("cert.pem"), dir.file("key.pem"));
    let tls = ["--tls", path(&leaf), path(&key)];

    let (json, json_addr) = Storm::serve("json", "127.0.0.1:0", &tls);
    for addr in [json_addr.clone(), format!("tls://{json_addr}")] {
        let client = Storm::spawn(&["client", "json", "--addr", &addr, "--tls-ca", path(&ca)]);
        client.stdout_line("demo done");
        let (status, stderr) = client.exit();
        assert_eq!(status.code(), Some(0), "{addr}: {stderr}");
    }

    let (ws, ws_addr) = Storm::serve(
        "echo",
        "127.0.0.1:0",
        &[&["--proto", "ws"], &tls[..]].concat(),
    );
    for (target, addr) in [("json", &json_addr), ("echo-ws", &ws_addr)] {
        let bench = Storm::spawn(&[
            "bench",
            target,
            "--addr",
            addr,
            "--tls-ca",
            path(&ca),
            "--connections",
            "2",
            "--max-messages",
            "50",
            "--duration",
            "30",
            "--json",
        ]);
        let summary = bench.stdout_line("\"msgs\"");
        let (status, stderr) = bench.exit();
        assert_eq!(status.code(), Some(0), "{target}: {summary} {stderr}");
        let summary: serde_json::Value = serde_json::from_str(&summary).expect("JSON summary");
        assert_eq!(
            summary["error"],
            serde_json::Value::Null,
            "{target}: {summary}"
        );
        assert_eq!(summary["msgs"], 50, "{target}: {summary}");
    }
    drop((json, ws));
}

/// The certificate most people make first, a self-signed CA certificate
/// (`openssl req -x509 … -subj /CN=localhost`), as a server's own: the
/// client refuses it, says why, and points to `storm cert`.
#[test]
fn a_ca_certificate_as_the_servers_own_points_to_storm_cert() {
    let dir = TempDir::new("ca-as-leaf");
    std::fs::create_dir_all(&dir.0).unwrap();
    let (ca_as_leaf, key) = self_signed_ca_for_localhost();
    std::fs::write(dir.file("cert.pem"), ca_as_leaf).unwrap();
    std::fs::write(dir.file("key.pem"), key).unwrap();
    let (cert_file, key_file) = (dir.file("cert.pem"), dir.file("key.pem"));
    let tls = ["--tls", path(&cert_file), path(&key_file)];
    let (server, addr) = Storm::serve(
        "echo",
        "127.0.0.1:0",
        &[&["--proto", "ws"], &tls[..]].concat(),
    );
    let client = Storm::spawn(&[
        "client",
        "ws",
        &format!("wss://{addr}/"),
        "--tls-ca",
        path(&cert_file),
    ]);
    let (status, stderr) = client.exit();
    assert_eq!(status.code(), Some(3), "a connect failure: {stderr}");
    for text in [
        "the server's certificate is a CA certificate",
        "`storm cert --out DIR` makes both",
        "CaUsedAsEndEntity",
    ] {
        assert!(stderr.contains(text), "{text:?} in {stderr}");
    }
    drop(server);
}
