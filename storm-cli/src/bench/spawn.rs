//! `storm bench --spawn`: the target service as child `storm` processes on
//! 127.0.0.1:0, stopped when the bench ends.
//!
//! Child processes of this same binary rather than servers inside the
//! bench's own runtime: the bench then measures exactly the program people
//! run (`storm json`, `storm chat`, …, with their defaults), the service
//! does not share the bench's tokio workers, and its CPU time stays its
//! own. The address comes from the banner each service prints first
//! (`… listening on tcp://ADDR` or `ws://ADDR`).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use storm_cli::runtime::Runtime;

use super::{TargetName, runtime_name};

/// How long a service may take to print its banner (and, for the gateway,
/// to connect its backend).
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Running services, killed (and the route file removed) on drop.
pub(crate) struct Spawned {
    /// Where the bench connects.
    pub(crate) addr: SocketAddr,
    children: Vec<Child>,
    route_file: Option<PathBuf>,
}

impl Spawned {
    /// The service's processes.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // The front service first, so that it does not see its backend go.
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(path) = &self.route_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Starts the service `target` drives on `runtime` (its `--runtime`); for
/// the gateway, an echo backend on `route` too, on the same runtime.
pub(crate) fn spawn(target: TargetName, route: &str, runtime: Runtime) -> Result<Spawned, String> {
    let runtime = &runtime_name(runtime);
    let mut spawned = Spawned {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        children: Vec::new(),
        route_file: None,
    };
    let echo = |proto: &'static str| vec!["echo", "--proto", proto];
    let (args, scheme) = match target {
        TargetName::EchoRaw => (echo("raw"), "tcp"),
        TargetName::EchoLp => (echo("lp"), "tcp"),
        TargetName::EchoLine => (echo("line"), "tcp"),
        TargetName::EchoWs => (echo("ws"), "ws"),
        TargetName::Json => (vec!["json"], "tcp"),
        TargetName::Chat => (vec!["chat", "--no-http"], "ws"),
        TargetName::Broker => (vec!["broker"], "tcp"),
        TargetName::Gateway => {
            let (backend, backend_addr) = start(&echo("lp"), runtime, "tcp", None)?;
            spawned.children.push(backend);
            let path = route_file(route, backend_addr)?;
            spawned.route_file = Some(path.clone());
            let config = path.to_string_lossy().into_owned();
            let ready = format!("backend {route} connected");
            let gateway = ["gateway", "--config", &config];
            let (gateway, addr) = start(&gateway, runtime, "ws", Some(&ready))?;
            spawned.children.push(gateway);
            spawned.addr = addr;
            return Ok(spawned);
        }
    };
    let (child, addr) = start(&args, runtime, scheme, None)?;
    spawned.children.push(child);
    spawned.addr = addr;
    Ok(spawned)
}

/// Writes a route file with one TCP route to `backend`.
fn route_file(route: &str, backend: SocketAddr) -> Result<PathBuf, String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = std::env::temp_dir().join(format!("storm-bench-{}-{nanos}.ini", std::process::id()));
    let text = format!(
        "; written by storm bench --spawn\n[{route}]\nname = {route}\nhost = {}\nport = {}\nprotocol = tcp\n",
        backend.ip(),
        backend.port()
    );
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Starts `storm ARGS --addr 127.0.0.1:0 --runtime RUNTIME` and waits for
/// its banner (and, with `ready`, for a stderr line containing it).
fn start(
    args: &[&str],
    runtime: &str,
    scheme: &str,
    ready: Option<&str>,
) -> Result<(Child, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut command = Command::new(exe);
    // Out of the terminal's process group: Ctrl-C ends the bench (which
    // then prints its summary and stops the service), not the service
    // under it.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .args(args)
        .args(["--addr", "127.0.0.1:0", "--runtime", runtime])
        // Kept open: `storm chat` reads its console from stdin.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(if ready.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .map_err(|e| format!("starting storm {}: {e}", args.join(" ")))?;
    let what = format!("storm {} --runtime {runtime}", args.join(" "));
    let deadline = Instant::now() + START_TIMEOUT;
    let result = (|| {
        let stdout = lines(child.stdout.take())?;
        let stderr = match ready {
            Some(_) => Some(lines(child.stderr.take())?),
            None => None,
        };
        let marker = format!("listening on {scheme}://");
        let banner = wait_for(&stdout, deadline, |line| line.contains(&marker))
            .ok_or_else(|| format!("{what} printed no banner"))?;
        let addr = banner
            .rsplit("://")
            .next()
            .and_then(|addr| addr.trim().trim_end_matches('/').parse().ok())
            .ok_or_else(|| format!("{what}: no address in {banner:?}"))?;
        if let (Some(stderr), Some(ready)) = (&stderr, ready) {
            wait_for(stderr, deadline, |line| line.contains(ready))
                .ok_or_else(|| format!("{what}: no {ready:?} within {START_TIMEOUT:?}"))?;
        }
        Ok(addr)
    })();
    match result {
        Ok(addr) => Ok((child, addr)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// The lines of a child's output, read on a thread that goes on draining
/// it (so the child never blocks on a full pipe) until it ends.
fn lines(pipe: Option<impl Read + Send + 'static>) -> Result<mpsc::Receiver<String>, String> {
    let pipe = pipe.ok_or("no pipe to the child")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            // Once nobody listens, keep reading and drop the lines.
            let _ = tx.send(line);
        }
    });
    Ok(rx)
}

/// The first line matching `wanted` before `deadline`.
fn wait_for(
    lines: &mpsc::Receiver<String>,
    deadline: Instant,
    wanted: impl Fn(&str) -> bool,
) -> Option<String> {
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let line = lines.recv_timeout(left).ok()?;
        if wanted(&line) {
            return Some(line);
        }
    }
}
