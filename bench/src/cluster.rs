//! `rookery-bench compare --scenario cluster`: the same load (`k6-1000`
//! unless `--stages`/`--users` say otherwise) against one Rookery node,
//! then against three nodes and a three-server NATS cluster with JetStream
//! on this machine (room `k` created through, and so owned by, node
//! `k mod 3`, each room's members spread over the three; each node with
//! one shard, as the three share this machine's cores). Reports deliveries/s, send→deliver
//! p50/p99 (and, for the cluster, apart for local and cross-node
//! deliveries), what was lost, the CPU of every process per delivery, and
//! NATS messages per post (from each NATS server's `/varz`).
//!
//! Needs `nats-server` on PATH (tools/test.sh puts a pinned one there).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::compare::{built, machine, start_rookery, CompareArgs, Running};
use crate::load::{self, Plan, Report};

/// The flags that lift the server's abuse limits (the load sets the rates).
const UNLIMITED: [&str; 5] = [
    "--connections-per-ip-max",
    "--sends-per-user-per-s",
    "--sends-per-user-burst",
    "--registrations-per-ip-per-min",
    "--rooms-per-user-per-min",
];

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Three nats-servers with JetStream in one NATS cluster, with their
/// monitoring ports.
struct Nats {
    servers: Vec<Running>,
    clients: Vec<u16>,
    monitors: Vec<u16>,
}

impl Nats {
    fn start() -> Result<Nats> {
        let store = tempfile::tempdir()?;
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        let routes: Vec<String> = ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{}", p.1))
            .collect();
        let mut servers = Vec::new();
        for (i, (client, _, monitor)) in ports.iter().enumerate() {
            // Three servers share two cores with the three nodes: one Go
            // thread running Go code each (GOMAXPROCS), as a server on
            // its own small machine would size it, so that idle Go
            // threads do not spin against the nodes' reactors.
            let child = Command::new("nats-server")
                .env("GOMAXPROCS", "1")
                .args([
                    "-a",
                    "127.0.0.1",
                    "-n",
                    &format!("n{i}"),
                    "-p",
                    &client.to_string(),
                ])
                .args(["-m", &monitor.to_string(), "-js"])
                .args(["-sd", &store.path().join(format!("n{i}")).to_string_lossy()])
                .args(["--cluster_name", "rk-bench", "--cluster", &routes[i]])
                .args(["--routes", &routes.join(",")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context(
                    "starting nats-server (tools/test.sh installs it under target/nats-venv)",
                )?;
            servers.push(Running::new(child, None));
        }
        if let Some(first) = servers.first_mut() {
            first.keep(store);
        }
        let nats = Nats {
            servers,
            clients: ports.iter().map(|p| p.0).collect(),
            monitors: ports.iter().map(|p| p.2).collect(),
        };
        for port in &nats.monitors {
            let deadline = Instant::now() + Duration::from_secs(20);
            while monitor(*port, "/varz").is_err() {
                if Instant::now() > deadline {
                    bail!("nats-server on monitor port {port} did not start");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(nats)
    }

    fn urls(&self) -> String {
        self.clients
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Messages (and bytes) the servers received from their clients,
    /// summed: what each received in all less what came over routes from
    /// the other servers (counted once already, where it entered).
    fn in_msgs(&self) -> Result<(u64, u64)> {
        let mut total = (0i64, 0i64);
        let n = |v: &Value, k: &str| v[k].as_i64().unwrap_or(0);
        for port in &self.monitors {
            let v = monitor(*port, "/varz")?;
            total.0 += n(&v, "in_msgs");
            total.1 += n(&v, "in_bytes");
            let routes = monitor(*port, "/routez")?;
            for r in routes["routes"].as_array().into_iter().flatten() {
                total.0 -= n(r, "in_msgs");
                total.1 -= n(r, "in_bytes");
            }
        }
        Ok((total.0.max(0) as u64, total.1.max(0) as u64))
    }

    fn pids(&self) -> Vec<u32> {
        self.servers.iter().map(|s| s.child.id()).collect()
    }
}

/// A NATS server's monitoring page (`/varz`, `/routez`). Asked in
/// HTTP/1.0, so that the answer is not chunked (it is, past 4 KiB, in
/// HTTP/1.1) and ends with the connection.
fn monitor(port: u16, path: &str) -> Result<Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no body")?;
    anyhow::ensure!(head.contains(" 200 "), "{path} answered {head:?}");
    serde_json::from_str(body).with_context(|| format!("{path} is not JSON"))
}

/// CPU seconds (user + system) of processes, from /proc.
fn cpu_s(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / hz
}

/// One run of the load; its report, with the CPU of `pids` during it.
fn measure(load: &load::Args, pids: &[u32]) -> Result<(Report, f64)> {
    let plan = Plan::from_args(load)?;
    let before = cpu_s(pids);
    let report = load::execute(&plan)?;
    Ok((report, cpu_s(pids) - before))
}

pub fn run(args: &CompareArgs) -> Result<()> {
    let bin = built(&args.rookery_bin, "rookery-server", "rookery")?;
    let secret = args.load.jwt_secret.clone();
    let mut load = args.load.clone();
    if load.stages.is_none() && load.users.is_none() {
        load.scenario = Some("k6-1000".into());
    } else {
        load.scenario = None;
    }
    load.server_pid = None;
    let unlimited: Vec<&str> = UNLIMITED.iter().flat_map(|f| [*f, "1000000"]).collect();

    eprintln!("== one node");
    let (one, port) = start_rookery(&bin, &load.durability, &secret, &unlimited)?;
    load.url = format!("ws://127.0.0.1:{port}");
    load.name = "rookery, 1 node".into();
    let (single, single_cpu) = measure(&load, &[one.child.id()])?;
    println!("{}\n{}", load.name, single.table());
    drop(one);

    eprintln!("== three nodes and three NATS servers");
    let nats = Nats::start()?;
    let urls = nats.urls();
    let mut nodes = Vec::new();
    let mut ports = Vec::new();
    for id in 1..=3 {
        let node_id = id.to_string();
        let mut extra = unlimited.clone();
        // Three nodes on one machine share its cores: one shard each, so
        // that the three have the reactors one node has on two cores.
        extra.extend([
            "--shards",
            "1",
            "--nats",
            &urls,
            "--node-id",
            &node_id,
            "--cluster-nodes",
            "1,2,3",
            "--cluster-name",
            "bench",
        ]);
        let (node, port) = start_rookery(&bin, &load.durability, &secret, &extra)?;
        nodes.push(node);
        ports.push(port);
    }
    load.url = ports
        .iter()
        .map(|p| format!("ws://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    load.name = "rookery, 3 nodes + NATS".into();
    let mut pids: Vec<u32> = nodes.iter().map(|n| n.child.id()).collect();
    pids.extend(nats.pids());
    let msgs_before = nats.in_msgs()?;
    let (three, three_cpu) = measure(&load, &pids)?;
    let msgs_after = nats.in_msgs()?;
    println!("{}\n{}", load.name, three.table());
    drop(nodes);
    drop(nats);

    let posts = three.acked.max(1) as f64;
    let nats_msgs = (msgs_after.0 - msgs_before.0) as f64;
    let nats_bytes = (msgs_after.1 - msgs_before.1) as f64;
    let per_delivery = |cpu: f64, r: &Report| cpu * 1e6 / (r.delivered.max(1) as f64);
    let row = |r: &Report, cpu: f64| {
        json!({
            "name": r.name,
            "durability": r.durability,
            "delivered_per_sec": r.delivered_per_sec(),
            "deliver_p50_ms": r.deliver_ms.p50,
            "deliver_p99_ms": r.deliver_ms.p99,
            "deliver_local_ms": r.deliver_local_ms.as_ref().map(|p| p.json()),
            "deliver_cross_node_ms": r.deliver_remote_ms.as_ref().map(|p| p.json()),
            "lost": r.lost,
            "duplicated": r.duplicated,
            "connect_errors": r.connect_errors,
            "acked": r.acked,
            "delivered": r.delivered,
            "cpu_s": cpu,
            "cpu_us_per_delivery": per_delivery(cpu, r),
            "report": r.to_json(),
        })
    };
    let out = json!({
        "scenario": "cluster",
        "load": single.scenario,
        "machine": machine(),
        "single": row(&single, single_cpu),
        "cluster": row(&three, three_cpu),
        "nats_messages_per_post": nats_msgs / posts,
        "nats_bytes_per_post": nats_bytes / posts,
    });
    println!("\n{:<34} {:>14} {:>14}", "", "1 node", "3 nodes + NATS");
    let line = |what: &str, a: String, b: String| println!("{what:<34} {a:>14} {b:>14}");
    line(
        "delivered/s",
        format!("{:.0}", single.delivered_per_sec()),
        format!("{:.0}", three.delivered_per_sec()),
    );
    line(
        "send→deliver p50 / p99 ms",
        format!(
            "{:.2} / {:.2}",
            single.deliver_ms.p50, single.deliver_ms.p99
        ),
        format!("{:.2} / {:.2}", three.deliver_ms.p50, three.deliver_ms.p99),
    );
    if let (Some(l), Some(r)) = (&three.deliver_local_ms, &three.deliver_remote_ms) {
        line(
            "  local p50 / p99 ms",
            "-".into(),
            format!("{:.2} / {:.2}", l.p50, l.p99),
        );
        line(
            "  cross-node p50 / p99 ms",
            "-".into(),
            format!("{:.2} / {:.2}", r.p50, r.p99),
        );
    }
    line(
        "lost / duplicated",
        format!("{} / {}", single.lost, single.duplicated),
        format!("{} / {}", three.lost, three.duplicated),
    );
    line(
        "CPU µs per delivery (all procs)",
        format!("{:.1}", per_delivery(single_cpu, &single)),
        format!("{:.1}", per_delivery(three_cpu, &three)),
    );
    line(
        "NATS messages / bytes per post",
        "-".into(),
        format!("{:.2} / {:.0}", nats_msgs / posts, nats_bytes / posts),
    );
    if let Some(path) = &args.load.json {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    if single.lost > 0 || three.lost > 0 {
        bail!("messages were lost");
    }
    Ok(())
}
