//! `rookery`: the chat server binary.
//!
//! Starts the engine (one shard per core), puts an HTTP listener on every
//! shard, and shuts down gracefully on SIGINT/SIGTERM: stop accepting,
//! close connections (WebSockets with 1001), flush and checkpoint storage,
//! exit 0 within `--shutdown-timeout-ms`; a second signal exits at once.

mod accounts;
mod app;
mod assets;
mod auth;
mod backups;
mod cluster;
mod config;
mod deflate;
mod hashing;
mod http;
mod keys;
mod limits;
mod metrics;
mod net;
mod notices;
mod out;
mod preflight;
mod protocol;
mod rates;
mod redirect;
mod revoked;
mod routes;
mod seen;
mod serve;
mod shared;
mod stats;
mod sweep;
mod tls;
mod webhooks;
mod ws;

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rookery_engine::{Engine, ShardTask};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cfg = match config::load() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("rookery: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = cfg.validate() {
        eprintln!("rookery: {e}");
        std::process::exit(2);
    }
    let keys = match keys::ApiKeys::load(cfg.api_keys_file.as_deref()) {
        Ok(keys) => Arc::new(keys),
        Err(e) => {
            eprintln!("rookery: {e}");
            std::process::exit(2);
        }
    };
    let backups = match backups::Backups::new(
        cfg.backup_dir.as_deref(),
        &cfg.data_dir,
        cfg.backup_bytes_per_s_max,
    ) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            eprintln!("rookery: {e}");
            std::process::exit(2);
        }
    };
    let hooks = match webhooks::Webhooks::load(cfg.webhooks_file.clone()) {
        Ok(hooks) => Arc::new(hooks),
        Err(e) => {
            eprintln!("rookery: {e}");
            std::process::exit(2);
        }
    };
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => match tls::Tls::load(cert, key) {
            Ok(tls) => Some(Arc::new(tls)),
            Err(e) => {
                eprintln!("rookery: {e}");
                std::process::exit(2);
            }
        },
        _ => None,
    };
    let addrs = std::iter::once(("--listen", cfg.listen))
        .chain(cfg.tls_redirect_from.map(|a| ("--tls-redirect-from", a)));
    for (flag, addr) in addrs {
        if let Err(e) = check_port_free(flag, addr) {
            eprintln!("rookery: {e}");
            std::process::exit(2);
        }
    }
    if let Err(e) = preflight::check() {
        eprintln!("rookery: {e}");
        std::process::exit(1);
    }
    init_tracing();
    backups.remove_unfinished();
    if let Err(e) = run(cfg, Reloadable { keys, tls, hooks }, backups) {
        eprintln!("rookery: {e:#}");
        std::process::exit(1);
    }
}

/// A port something already listens on is a start-up error, another
/// Rookery included: the shards bind with SO_REUSEPORT, so a second server
/// would otherwise start and silently take a share of the first one's
/// connections. The probe binds without SO_REUSEPORT (which fails on any
/// listening socket) and lets go before the shards bind.
fn check_port_free(flag: &str, addr: std::net::SocketAddr) -> Result<(), String> {
    if addr.port() == 0 {
        return Ok(());
    }
    // SO_REUSEADDR, so that connections this address closed before a
    // restart (TIME_WAIT) do not count as a server listening there; the
    // shards' listeners (SO_REUSEPORT) bind over them too.
    let refused =
        |e: std::io::Error| format!("{flag} {addr}: {e} (is another server listening there?)");
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(refused)?;
    socket.set_reuse_address(true).map_err(refused)?;
    socket.bind(&addr.into()).map_err(refused)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_tracing() {
    let quiet = rookery_engine::QUIET_LOG_DIRECTIVE
        .parse()
        .expect("valid directive");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info".into())
        .add_directive(quiet);
    // Colours only on a terminal: a journal or a file gets plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// What SIGHUP re-reads while the server runs.
#[derive(Clone)]
struct Reloadable {
    keys: Arc<keys::ApiKeys>,
    tls: Option<Arc<tls::Tls>>,
    hooks: Arc<webhooks::Webhooks>,
}

fn run(cfg: Config, reloadable: Reloadable, backups: Arc<backups::Backups>) -> anyhow::Result<()> {
    // Signals are caught before anything starts, so none is lost.
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    // SIGHUP too, before anything starts: its default would end the process.
    reload_on_sighup(reloadable.clone()).context("installing the SIGHUP handler")?;
    let Reloadable { keys, tls, hooks } = reloadable;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating --data-dir {}", cfg.data_dir.display()))?;
    // A cluster node joins before anything serves: a node list that differs
    // from the cluster's, or no NATS, is a start-up error.
    let node = match cfg.cluster().map_err(anyhow::Error::msg)? {
        None => None,
        Some(cc) => {
            let ttl = Duration::from_millis(cfg.session_ttl_ms());
            let node =
                cluster::Node::join(cc, ttl, cfg.cluster_wires).context("joining the cluster")?;
            tracing::info!(
                cluster = %node.cfg.name,
                node = node.cfg.node_id,
                nodes = %node.cfg.nodes_text(),
                "joined the cluster"
            );
            Some(Arc::new(node))
        }
    };
    let stopping = Arc::new(AtomicBool::new(false));
    // Dropped to tell every shard to stop (after `stopping` is set).
    let (stop_tx, stop_rx) = flume::bounded::<()>(0);
    // Filled once the engine is up (the index reads its logs).
    let search: Arc<std::sync::OnceLock<rookery_engine::Search>> = Arc::default();
    let (bound_tx, bound_rx) = flume::unbounded();
    // Built once: the shards' relays take its queue bounds, the engine the
    // rest.
    let mut engine_cfg = cfg.engine_config();
    // The owner publishes its rooms' events for the other nodes, and
    // queues presence for the webhooks.
    let cluster_tap = node
        .as_ref()
        .map(|node| cluster::events::tap(node.link.clone(), node.cfg.name.clone()));
    if cluster_tap.is_some() || hooks.configured() {
        let tap_hooks = hooks.clone();
        engine_cfg.event_tap = Some(rookery_engine::EventTap::new(move |tapped| {
            if let Some(tap) = &cluster_tap {
                tap.see(tapped);
            }
            tap_hooks.see(tapped);
        }));
    }
    let relay_bounds = cluster::relay::Bounds {
        queue_bytes_max: engine_cfg.outbound_queue_bytes_max,
        volatile_bytes_max: engine_cfg.volatile_queue_bytes_max,
        stuck_timeout: engine_cfg.stuck_timeout,
    };
    let shards = engine_cfg.storage.shards as usize;
    let http: Arc<Vec<metrics::ShardHttp>> =
        Arc::new((0..shards).map(|_| Default::default()).collect());
    let limits =
        limits::IpLimits::new(cfg.connections_per_ip_max, cfg.registrations_per_ip_per_min);
    let sends = limits::SendLimits::new(cfg.sends_per_user_per_s, cfg.sends_per_user_burst);
    let rates = limits::UserRates::new(
        cfg.joins_per_user_per_s,
        cfg.rooms_per_user_per_min,
        cfg.member_adds_per_user_per_min,
        cfg.directory_calls_per_user_per_min,
    );
    let logins = limits::LoginLimits::new(
        cfg.login_failures_per_ip_per_min,
        cfg.login_failures_per_account_per_min,
    );
    let revoked = Arc::new(revoked::Revoked::default());
    let (replica_revoked, replica_node) = (revoked.clone(), node.clone());
    let notices = Arc::new(notices::Notices::default());
    let hashing = hashing::HashPool::start(cfg.password_hash_threads, cfg.password_hash_queue_max)
        .context("starting the password hashing threads")?;
    let (drained_tx, drained_rx) = flume::unbounded();
    // WebSocket connections moving to the shard that owns their room:
    // unbounded, as each open connection moves at most once (ws/moving.rs).
    let (move_txs, move_rxs): (Vec<_>, Vec<_>) = (0..shards).map(|_| flume::unbounded()).unzip();
    let moves = Arc::new(move_txs);
    let sampler = Arc::new(Mutex::new(stats::Sampler::new(cfg.stats_samples_max)));
    let task: ShardTask = {
        let (http, sampler, hooks) = (http.clone(), sampler.clone(), hooks.clone());
        let (cfg, stopping, backups) = (cfg.clone(), stopping.clone(), backups.clone());
        let search = search.clone();
        Arc::new(move |shard, engine: Engine| {
            let local = engine.local().expect("shard tasks run on their shard");
            let working = local.clone();
            let flusher = Rc::new(out::Flusher::new(
                http[shard].flush.clone(),
                Box::new(move || working.note_work()),
            ));
            glommio::spawn_local(flusher.clone().run()).detach();
            let shared = Rc::new(shared::Shared {
                cfg: cfg.clone(),
                engine,
                local,
                flusher,
                moves: moves.clone(),
                moved_in: move_rxs[shard].clone(),
                sweeper: Rc::new(sweep::Sweeper::new(
                    Duration::from_millis(cfg.ws_heartbeat_ms),
                    Duration::from_millis(cfg.ws_auth_timeout_ms),
                    Duration::from_millis(cfg.conn_write_timeout_ms),
                    revoked.clone(),
                    notices.clone(),
                )),
                revoked: revoked.clone(),
                notices: notices.clone(),
                shard,
                stopping: stopping.clone(),
                stop_signal: stop_rx.clone(),
                http: http.clone(),
                limits: limits.clone(),
                sends: sends.clone(),
                logins: logins.clone(),
                rates: rates.clone(),
                hashing: hashing.clone(),
                keys: keys.clone(),
                backups: backups.clone(),
                tls: tls.clone(),
                webhooks: hooks.clone(),
                search: search.clone(),
                stop: Rc::new(glommio::sync::Semaphore::new(0)),
                gate: glommio::sync::Gate::new(),
                stats: sampler.clone(),
                over_limit_reads: Default::default(),
                uploads_in_flight: Default::default(),
                uploads_by_user: Default::default(),
                seen: Default::default(),
                file_streams: Default::default(),
                relay: node
                    .as_ref()
                    .map(|n| cluster::relay::Relay::new(n.clone(), shard, relay_bounds)),
                cluster: node.clone(),
            });
            let (bound, drained) = (bound_tx.clone(), drained_tx.clone());
            Box::pin(serve::run(shared, bound, drained))
        })
    };
    let engine = Engine::start_with_task(engine_cfg, task)
        .with_context(|| format!("starting on --data-dir {}", cfg.data_dir.display()))?;
    // In a cluster the shards bind their listeners once this node has the
    // cluster's users and sessions (serve.rs waits for it).
    if let Some(node) = &replica_node {
        if let Err(e) = node.start_replica(engine.clone(), replica_revoked) {
            let _ = engine.shutdown();
            return Err(e.context("copying the cluster's users and sessions"));
        }
    }
    for _ in 0..engine.shards() {
        let bound = bound_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .map_err(|_| anyhow::anyhow!("a shard did not start its listener"));
        if let Err(e) = bound.and_then(|r| r.map_err(anyhow::Error::msg)) {
            let _ = engine.shutdown();
            return Err(e);
        }
    }
    if let Err(e) = hooks.start(engine.clone()) {
        let _ = engine.shutdown();
        return Err(anyhow::Error::new(e).context("starting the webhooks"));
    }
    // Opens (or rebuilds) on its own thread: searches answer 503 until then.
    match rookery_engine::Search::start(&engine, cfg.search_config()) {
        Ok(s) => {
            let _ = search.set(s);
        }
        Err(e) => {
            hooks.stop();
            let _ = engine.shutdown();
            return Err(anyhow::Error::new(e).context("starting the search index"));
        }
    }
    // The stats thread is not joined: it ends by itself once stopping is
    // set or the engine is gone, and a reading in progress must not hold
    // up the bounded shutdown.
    if let Err(e) = stats::spawn(
        engine.clone(),
        http,
        sampler,
        Duration::from_millis(cfg.stats_interval_ms),
        stopping.clone(),
        cfg.data_dir.clone(),
    ) {
        let _ = engine.shutdown();
        return Err(anyhow::Error::new(e).context("starting the stats thread"));
    }
    tracing::info!(
        listen = %cfg.listen,
        data_dir = %cfg.data_dir.display(),
        shards = engine.shards(),
        "rookery is serving"
    );
    let first = signals.forever().next();
    tracing::info!(signal = ?first, "shutting down (a second signal exits at once)");
    stopping.store(true, Ordering::Relaxed);
    drop(stop_tx);
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            eprintln!("rookery: second signal, exiting now");
            std::process::exit(130);
        }
    });
    shutdown_within(engine, &cfg, drained_rx, hooks, backups, search)
}

/// Re-reads what may change while serving on each SIGHUP (the API keys,
/// the webhooks, the TLS certificate and key); a file that is bad keeps what was served
/// and logs why.
fn reload_on_sighup(r: Reloadable) -> std::io::Result<()> {
    let mut hups = Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new()
        .name("rookery-sighup".into())
        .spawn(move || {
            for _ in hups.forever() {
                match r.keys.reload() {
                    Ok(n) if r.keys.enabled() => tracing::info!(keys = n, "API keys reloaded"),
                    Ok(_) => {}
                    Err(e) => tracing::error!("API keys not reloaded (the old ones stay): {e}"),
                }
                match r.hooks.configured().then(|| r.hooks.reload()) {
                    Some(Ok(n)) => tracing::info!(webhooks = n, "webhooks reloaded"),
                    Some(Err(e)) => {
                        tracing::error!("webhooks not reloaded (the running ones stay): {e}")
                    }
                    None => {}
                }
                match r.tls.as_ref().map(|t| t.reload()) {
                    Some(Ok(())) => tracing::info!("TLS certificate reloaded"),
                    Some(Err(e)) => {
                        tracing::error!("TLS certificate not reloaded (the old one stays): {e}")
                    }
                    None => {}
                }
            }
        })?;
    Ok(())
}

/// The ordered stop, bounded by `--shutdown-timeout-ms` in all: every
/// shard stops accepting and closes its connections (WebSockets get 1001
/// and their in-flight requests finish); then the engine flushes and
/// checkpoints storage.
fn shutdown_within(
    engine: Engine,
    cfg: &Config,
    drained: flume::Receiver<usize>,
    hooks: Arc<webhooks::Webhooks>,
    backups: Arc<backups::Backups>,
    search: Arc<std::sync::OnceLock<rookery_engine::Search>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + cfg.shutdown_timeout();
    // Connections get the first half; storage always gets the rest.
    let drain_deadline = started + cfg.shutdown_timeout() / 2;
    for _ in 0..engine.shards() {
        if drained.recv_deadline(drain_deadline).is_err() {
            tracing::warn!("connections still open at the deadline; stopping anyway");
            break;
        }
    }
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        "connections closed; flushing storage"
    );
    let (done_tx, done_rx) = flume::bounded(1);
    std::thread::spawn(move || {
        // The webhooks save their cursors while the store is open; a
        // running backup is cancelled (it holds the engine).
        // The search index commits what it read, likewise.
        hooks.stop();
        backups.stop();
        if let Some(s) = search.get() {
            s.stop();
        }
        let _ = done_tx.send(engine.shutdown());
    });
    match done_rx.recv_deadline(deadline) {
        Ok(Ok(())) => {
            tracing::info!(ms = started.elapsed().as_millis() as u64, "stopped cleanly");
            Ok(())
        }
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("shutting down")),
        Err(_) => anyhow::bail!(
            "shutdown did not finish within --shutdown-timeout-ms {}",
            cfg.shutdown_timeout_ms
        ),
    }
}
