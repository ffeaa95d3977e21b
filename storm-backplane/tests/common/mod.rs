//! A real `redis-server` for the tests: started on a free loopback port in
//! a temporary directory, with no persistence, and stopped by its pid.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a `redis-server` may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// One running `redis-server`; killed (by its pid) when dropped.
pub(crate) struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts a server on a free loopback port, or `None` (after saying so
    /// on a line of its own) when `redis-server` is not installed.
    pub(crate) fn start() -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            // CI installs it (.ci/run): there, a missing server is a failure.
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed, and CI must run the backplane tests"
            );
            // Straight to the process's stderr: the test harness captures
            // `eprintln!` of passing tests, and this must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: redis-server is not installed (apt-get install redis-server; .ci/run installs it)"
            );
            return None;
        }
        // A port found free may be taken before the server binds it (by
        // another test's server): then try another.
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
        panic!("redis-server did not start: {failures:?}");
    }

    /// Starts a fresh, empty server on `port`.
    fn start_on(port: u16) -> Self {
        Self::try_start_on(port).unwrap_or_else(|failure| panic!("{failure}"))
    }

    fn try_start_on(port: u16) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!(
            "storm-backplane-redis-{}-{port}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir"])
            .arg(&dir)
            .args(["--logfile", ""])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready, is_ready) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready);
            // Read to the end, so the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("Ready to accept connections") {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
            }
        });
        if is_ready.recv_timeout(READY_TIMEOUT).is_err() {
            // Ended without saying it is ready (its port was taken), or
            // stuck: either way, gone.
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "redis-server on port {port} did not get ready within {READY_TIMEOUT:?}"
            ));
        }
        Ok(Self { child, port, dir })
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (by its pid): what its clients see when Redis goes down.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new, empty server on the same port (after [`kill`](Self::kill)):
    /// what a restart without persistence looks like to its clients.
    pub(crate) fn start_again(&mut self) {
        self.kill();
        let fresh = Self::start_on(self.port);
        let old = std::mem::replace(self, fresh);
        drop(old); // already stopped; removes the old directory
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
