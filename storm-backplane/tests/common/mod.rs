//! Real servers for the tests, `redis-server` and `nats-server`: each
//! started on a free loopback port in a temporary directory of its own
//! (Redis with no persistence; core NATS writes nothing), and stopped by its
//! pid. A missing server is said on a line of its own, and is a failure
//! under CI (`.ci/run` installs both).

#![allow(dead_code, reason = "each test file uses the server it needs")]

use std::io::{BufRead, BufReader, Read, Write};
use std::marker::PhantomData;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a server may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// What differs between the servers: how to start one and how it says it
/// is ready.
pub(crate) trait Kind {
    /// The program, as on `PATH` and in messages.
    const PROGRAM: &'static str;
    /// The URL scheme its clients take.
    const SCHEME: &'static str;
    /// The log line that says it accepts connections.
    const READY: &'static str;
    /// Whether it logs on stderr (else on stdout).
    const LOGS_ON_STDERR: bool;
    /// Its arguments to listen on 127.0.0.1:`port`, working in `dir`.
    fn configure(command: &mut Command, port: u16, dir: &Path);
}

/// `redis-server`: no persistence, the log on stdout.
pub(crate) struct Redis;

impl Kind for Redis {
    const PROGRAM: &'static str = "redis-server";
    const SCHEME: &'static str = "redis";
    const READY: &'static str = "Ready to accept connections";
    const LOGS_ON_STDERR: bool = false;
    fn configure(command: &mut Command, port: u16, dir: &Path) {
        command
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir"])
            .arg(dir)
            .args(["--logfile", ""]);
    }
}

/// `nats-server`: core NATS (no JetStream), the log on stderr.
pub(crate) struct Nats;

impl Kind for Nats {
    const PROGRAM: &'static str = "nats-server";
    const SCHEME: &'static str = "nats";
    const READY: &'static str = "Server is ready";
    const LOGS_ON_STDERR: bool = true;
    fn configure(command: &mut Command, port: u16, dir: &Path) {
        command
            .args(["--addr", "127.0.0.1", "--port", &port.to_string()])
            .current_dir(dir);
    }
}

/// One running `redis-server`.
pub(crate) type RedisServer = TestServer<Redis>;
/// One running `nats-server`.
pub(crate) type NatsServer = TestServer<Nats>;

/// One running server of kind `K`; killed (by its pid) when dropped.
pub(crate) struct TestServer<K: Kind> {
    child: Child,
    port: u16,
    dir: PathBuf,
    kind: PhantomData<K>,
}

impl<K: Kind> TestServer<K> {
    /// Starts a server on a free loopback port, or `None` (after saying so
    /// on a line of its own) when the program is not installed.
    pub(crate) fn start() -> Option<Self> {
        let program = K::PROGRAM;
        if Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            // CI installs it (.ci/run): there, a missing server is a failure.
            assert!(
                std::env::var_os("CI").is_none(),
                "{program} is not installed, and CI must run the backplane tests"
            );
            // Straight to the process's stderr: the test harness captures
            // `eprintln!` of passing tests, and this must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {program} is not installed (apt-get install {program}; .ci/run installs it)"
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
        panic!("{program} did not start: {failures:?}");
    }

    fn try_start_on(port: u16) -> Result<Self, String> {
        let program = K::PROGRAM;
        let dir = std::env::temp_dir().join(format!(
            "storm-backplane-{}-{}-{port}-{}",
            K::SCHEME,
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut command = Command::new(program);
        K::configure(&mut command, port, &dir);
        let (stdout, stderr) = if K::LOGS_ON_STDERR {
            (Stdio::null(), Stdio::piped())
        } else {
            (Stdio::piped(), Stdio::null())
        };
        let mut child = command
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("{program} starts: {e}"));
        let log: Box<dyn Read + Send> = if K::LOGS_ON_STDERR {
            Box::new(child.stderr.take().expect("piped stderr"))
        } else {
            Box::new(child.stdout.take().expect("piped stdout"))
        };
        let (ready, is_ready) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready);
            // Read to the end, so the server never blocks on a full pipe.
            for line in BufReader::new(log).lines().map_while(Result::ok) {
                if line.contains(K::READY) {
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
                "{program} on port {port} did not get ready within {READY_TIMEOUT:?}"
            ));
        }
        Ok(Self {
            child,
            port,
            dir,
            kind: PhantomData,
        })
    }

    /// Its temporary directory (removed with it).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", K::SCHEME, self.port)
    }

    /// Kills it (by its pid): what its clients see when the server goes
    /// down.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new server on the same port (after [`kill`](Self::kill)):
    /// for Redis, an empty one, what a restart without persistence looks
    /// like to its clients.
    pub(crate) fn start_again(&mut self) {
        self.kill();
        let fresh = Self::try_start_on(self.port).unwrap_or_else(|failure| panic!("{failure}"));
        let old = std::mem::replace(self, fresh);
        drop(old); // already stopped; removes the old directory
    }
}

impl<K: Kind> Drop for TestServer<K> {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
