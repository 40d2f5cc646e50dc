//! `rookery-bench webhooks`: what a webhook costs chat, and how late it is.
//!
//! Runs a normal load (`k6-1000` by default) twice against a fresh
//! `rookery` each time: alone, then with a webhook (every message, edit,
//! delete, join and leave) to a receiver in this process (`sink.rs`), which
//! checks each signature and measures each message's lag from its
//! timestamp. Reports chat's send→deliver p99 of both runs and their ratio
//! (target: within 10%), the webhook's lag (target: p99 ≤ 50 ms), and
//! whether every acknowledged message reached the receiver.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use crate::abuse::normal_load;
use crate::compare::{built, machine, start_rookery};
use crate::load::{self, Report};
use crate::sink::Sink;

#[derive(clap::Args, Debug, Clone)]
pub struct WebhooksArgs {
    #[command(flatten)]
    pub load: load::Args,
    /// The `rookery` binary (default: build the workspace's, release).
    #[arg(long)]
    pub rookery_bin: Option<PathBuf>,
}

const SECRET: &str = "rookery-bench-webhook-secret";

pub fn run(args: WebhooksArgs) -> Result<()> {
    let bin = built(&args.rookery_bin, "rookery-server", "rookery")?;
    let secret = args.load.jwt_secret.clone();
    // As in `abuse`: every client is 127.0.0.1, and the load's setup
    // creates its rooms as one user.
    let base = [
        "--connections-per-ip-max",
        "100000",
        "--rooms-per-user-per-min",
        "1000",
    ];
    let dir = tempfile::tempdir()?;
    let mut runs: Vec<(Report, Option<Value>)> = Vec::new();
    for with_webhook in [false, true] {
        let sink = with_webhook
            .then(|| Sink::start("127.0.0.1:0".parse::<SocketAddr>()?, Some(SECRET.into())))
            .transpose()?;
        let mut extra: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        if let Some(sink) = &sink {
            let file = dir.path().join("webhooks.toml");
            std::fs::write(
                &file,
                format!(
                    "[[webhook]]\nname = \"bench\"\nurl = \"http://{}/hook\"\nsecret = \"{SECRET}\"\n",
                    sink.addr
                ),
            )?;
            extra.extend([
                "--webhooks-file".into(),
                file.to_string_lossy().into_owned(),
            ]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (server, port) = start_rookery(&bin, &args.load.durability, &secret, &extra)?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let name = if with_webhook {
            "with webhook"
        } else {
            "alone"
        };
        let report = normal_load(&args.load, addr, server.child.id(), name)?;
        let webhook = sink.map(|s| {
            s.wait_for(report.acked, Duration::from_secs(10));
            s.report()
        });
        runs.push((report, webhook));
        drop(server);
    }
    print_and_save(&args, &runs)
}

fn print_and_save(args: &WebhooksArgs, runs: &[(Report, Option<Value>)]) -> Result<()> {
    let [(alone, _), (hooked, Some(w))] = runs else {
        anyhow::bail!("two runs expected, the second with a webhook");
    };
    let ratio = hooked.deliver_ms.p99 / alone.deliver_ms.p99.max(1e-3);
    let lag_p99 = w["lag_ms"]["p99"].as_f64().unwrap_or(f64::INFINITY);
    let received = w["messages"].as_u64().unwrap_or(0);
    let bad = w["bad_signatures"].as_u64().unwrap_or(0);
    println!("                     alone      with webhook");
    println!(
        "deliver p99 ms   {:>9.2} {:>12.2}   ({ratio:.2}x; target <= 1.10x)",
        alone.deliver_ms.p99, hooked.deliver_ms.p99
    );
    println!("lost             {:>9} {:>12}", alone.lost, hooked.lost);
    println!(
        "webhook          lag p50 {:.1} ms, p99 {lag_p99:.1} ms (target <= 50), max {:.1} ms; {received} of {} acknowledged messages received; {bad} bad signatures",
        w["lag_ms"]["p50"].as_f64().unwrap_or(0.0),
        w["lag_ms"]["max"].as_f64().unwrap_or(0.0),
        hooked.acked
    );
    let out = json!({
        "machine": machine(),
        "scenario": alone.scenario,
        "durability": args.load.durability,
        "alone": {"deliver_p99_ms": alone.deliver_ms.p99, "deliver_p50_ms": alone.deliver_ms.p50,
                  "lost": alone.lost, "delivered": alone.delivered, "server_cpu_s": alone.server_cpu_s},
        "with_webhook": {"deliver_p99_ms": hooked.deliver_ms.p99, "deliver_p50_ms": hooked.deliver_ms.p50,
                         "lost": hooked.lost, "delivered": hooked.delivered, "acked": hooked.acked,
                         "server_cpu_s": hooked.server_cpu_s, "webhook": w},
        "deliver_p99_ratio": ratio,
        "within_targets": ratio <= 1.10 && lag_p99 <= 50.0 && received >= hooked.acked
            && bad == 0 && alone.lost == 0 && hooked.lost == 0,
    });
    if let Some(path) = &args.load.json {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
