//! A real `nats-server` for the tests: started on a free loopback port in
//! a temporary directory (its working directory; core NATS writes nothing),
//! and stopped by its pid. The NATS twin of `common/mod.rs`'s
//! `RedisServer`, with the same rule: a missing server is said on a line
//! of its own, and is a failure under CI.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a `nats-server` may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// One running `nats-server`; killed (by its pid) when dropped.
pub(crate) struct NatsServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl NatsServer {
    /// Starts a server on a free loopback port, or `None` (after saying so
    /// on a line of its own) when `nats-server` is not installed.
    pub(crate) fn start() -> Option<Self> {
        if Command::new("nats-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            // CI installs it (.ci/run): there, a missing server is a failure.
            assert!(
                std::env::var_os("CI").is_none(),
                "nats-server is not installed, and CI must run the backplane tests"
            );
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: nats-server is not installed (apt-get install nats-server; .ci/run installs it)"
            );
            return None;
        }
        // A port found free may be taken before the server binds it: then
        // try another.
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free loopback port")
                .port();
            match Self::try_start_on(port) {
                Ok(server) => return Some(server),
                Err(failure) => failures.push(failure),
            }
        }
        panic!("nats-server did not start: {failures:?}");
    }

    fn try_start_on(port: u16) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!(
            "storm-backplane-nats-{}-{port}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut child = Command::new("nats-server")
            .args(["--addr", "127.0.0.1", "--port", &port.to_string()])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server starts");
        let log = child.stderr.take().expect("piped stderr");
        let (ready, is_ready) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready);
            // Read to the end, so the server never blocks on a full pipe.
            for line in BufReader::new(log).lines().map_while(Result::ok) {
                if line.contains("Server is ready") {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
            }
        });
        if is_ready.recv_timeout(READY_TIMEOUT).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "nats-server on port {port} did not get ready within {READY_TIMEOUT:?}"
            ));
        }
        Ok(Self { child, port, dir })
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (by its pid): what its clients see when NATS goes down.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new server on the same port (after [`kill`](Self::kill)).
    pub(crate) fn start_again(&mut self) {
        self.kill();
        let fresh = Self::try_start_on(self.port).unwrap_or_else(|failure| panic!("{failure}"));
        let old = std::mem::replace(self, fresh);
        drop(old); // already stopped; removes the old directory
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
