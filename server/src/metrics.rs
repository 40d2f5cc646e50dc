//! `/metrics`: the engine's per-shard counters, gauges and latency
//! histograms (summed or merged at scrape time), the server's HTTP
//! counters and the process's memory, encoded by `prometheus-client` in
//! the OpenMetrics text format.
//!
//! The HTTP counters are per shard: each shard counts into its own slot
//! (uncontended), and a scrape on any shard reads every slot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use rookery_engine::{micros_histogram, Metrics};

/// HTTP counters of one shard.
#[derive(Default)]
pub struct ShardHttp {
    /// Open connections.
    pub connections: AtomicI64,
    /// Requests answered, by (route, status).
    requests: Mutex<HashMap<(&'static str, u16), u64>>,
    /// Errors sent to clients (HTTP error bodies and WebSocket `error`
    /// frames), by code.
    errors: Mutex<HashMap<&'static str, u64>>,
    /// HTTP request handling time by route, µs.
    durations: Mutex<HashMap<&'static str, hdrhistogram::Histogram<u64>>>,
    /// Close frames the server sent, by close code.
    closes: Mutex<HashMap<u16, u64>>,
    /// Server API calls, by (API key name, status).
    backend_calls: Mutex<HashMap<(std::sync::Arc<str>, u16), u64>>,
    /// Post (the message's timestamp) to its frame queued for a WebSocket
    /// subscriber, µs (millisecond resolution: the timestamp's).
    delivery: Mutex<Option<hdrhistogram::Histogram<u64>>>,
    /// Joins refused at --ws-rooms-per-connection-max.
    pub rooms_refused: AtomicU64,
    /// WebSocket connections closed for not authenticating in time.
    pub auth_timeouts: AtomicU64,
    /// Connections closed because their socket took nothing of what they
    /// were owed for --conn-write-timeout-ms.
    pub write_timeouts: AtomicU64,
    /// WebSocket connections opened (upgrades taken): their rate is the
    /// dashboard's reconnect churn.
    pub ws_opened: AtomicU64,
    /// WebSocket connections that moved here, to the shard that owns
    /// their first room (`ws/moving.rs`).
    pub ws_moves: AtomicU64,
    /// WebSocket connections on their way here (sent by another shard, not
    /// yet taken): counted as this shard's when a move is weighed.
    pub ws_moving_in: AtomicI64,
    /// The shard's WebSocket output (written by its flusher).
    pub flush: std::sync::Arc<crate::out::FlushStats>,
}

impl ShardHttp {
    /// Counts one answered request (and its error code, if any).
    pub fn answered(&self, route: &'static str, status: u16, error: Option<&'static str>) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((route, status)).or_default() += 1;
        }
        if let Some(code) = error {
            self.error_sent(code);
        }
    }

    /// Records how long one request took to handle.
    pub fn handled(&self, route: &'static str, took: std::time::Duration) {
        if let Ok(mut d) = self.durations.lock() {
            let h = d.entry(route).or_insert_with(micros_histogram);
            let _ = h.record(took.as_micros().max(1) as u64);
        }
    }

    /// Adds this shard's close frames sent, by code, into `into`.
    pub(crate) fn add_closes_into(&self, into: &mut HashMap<u16, u64>) {
        if let Ok(c) = self.closes.lock() {
            for (code, n) in c.iter() {
                *into.entry(*code).or_default() += n;
            }
        }
    }

    /// Requests answered so far, and those answered with a 5xx status.
    pub(crate) fn answered_and_5xx(&self) -> (u64, u64) {
        self.requests.lock().map_or((0, 0), |r| {
            r.iter().fold((0, 0), |(all, bad), (&(_, status), &n)| {
                (all + n, bad + if status >= 500 { n } else { 0 })
            })
        })
    }

    /// Counts one close frame sent.
    pub fn closed(&self, code: u16) {
        if let Ok(mut c) = self.closes.lock() {
            *c.entry(code).or_default() += 1;
        }
    }

    /// Counts one server API call made with the key named `key`.
    pub fn backend_call(&self, key: &std::sync::Arc<str>, status: u16) {
        if let Ok(mut c) = self.backend_calls.lock() {
            *c.entry((key.clone(), status)).or_default() += 1;
        }
    }

    /// Records one message's post → queued-for-the-socket latency.
    pub fn delivered_after(&self, micros: u64) {
        if let Ok(mut d) = self.delivery.lock() {
            let _ = d.get_or_insert_with(micros_histogram).record(micros.max(1));
        }
    }

    /// Adds this shard's error counts into `into`.
    pub(crate) fn add_errors_into(&self, into: &mut HashMap<&'static str, u64>) {
        if let Ok(e) = self.errors.lock() {
            for (code, n) in e.iter() {
                *into.entry(code).or_default() += n;
            }
        }
    }

    /// Adds this shard's delivery latencies into `into`.
    pub(crate) fn add_delivery_into(&self, into: &mut hdrhistogram::Histogram<u64>) {
        if let Ok(Some(h)) = self.delivery.lock().as_deref() {
            let _ = into.add(h);
        }
    }

    /// Counts one error sent to a client.
    pub fn error_sent(&self, code: &'static str) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(code).or_default() += 1;
        }
    }
}

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS_S: [f64; 15] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// An hdrhistogram of µs, exposed as a Prometheus histogram of seconds.
#[derive(Debug)]
struct MicrosHistogram(hdrhistogram::Histogram<u64>);

impl EncodeMetric for MicrosHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        let mut buckets = Vec::with_capacity(BUCKETS_S.len() + 1);
        let mut below = 0u64;
        for bound in BUCKETS_S {
            let upto = h.count_between(0, (bound * 1e6) as u64);
            buckets.push((bound, upto.saturating_sub(below)));
            below = upto;
        }
        buckets.push((f64::MAX, h.len().saturating_sub(below)));
        let sum = h.mean() * h.len() as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, h.len(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Histograms encoded as one family with one label (`route` for HTTP
/// routes, `webhook` for webhooks).
#[derive(Debug)]
struct ByLabel(&'static str, Vec<(String, hdrhistogram::Histogram<u64>)>);

impl EncodeMetric for ByLabel {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (value, h) in &self.1 {
            let labels: Labels = vec![(self.0.into(), value.clone())];
            MicrosHistogram(h.clone()).encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The storage's fsync batch size buckets, as a Prometheus histogram of
/// records per `fdatasync`.
#[derive(Debug)]
struct SyncBatchHistogram(rookery_engine::ShardStats);

impl EncodeMetric for SyncBatchHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        use rookery_engine::SYNC_BATCH_BOUNDS;
        let counts = &self.0.sync_batch_records;
        let mut buckets: Vec<(f64, u64)> = SYNC_BATCH_BOUNDS
            .iter()
            .zip(counts)
            .map(|(&b, &n)| (b as f64, n))
            .collect();
        buckets.push((f64::MAX, counts[SYNC_BATCH_BOUNDS.len()]));
        let (sum, syncs) = (self.0.synced_records() as f64, self.0.record_syncs());
        encoder.encode_histogram::<NoLabelSet>(sum, syncs, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

/// The resident set size of this process, from `/proc/self/statm`.
pub(crate) fn resident_bytes() -> i64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
        .unwrap_or(0);
    pages * 4096
}

type Labels = Vec<(String, String)>;

/// One labelled counter family from every shard's map of counts.
fn labelled_counters<K>(
    http: &[ShardHttp],
    counts: impl Fn(&ShardHttp) -> &Mutex<HashMap<K, u64>>,
    labels: impl Fn(&K) -> Labels,
) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    for shard in http {
        let Ok(counts) = counts(shard).lock() else {
            continue;
        };
        for (key, n) in counts.iter() {
            family.get_or_create(&labels(key)).inc_by(*n);
        }
    }
    family
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition, for
/// scrapers that do not ask for OpenMetrics (`promtool check metrics`
/// reads this one): a counter family's HELP and TYPE name its `_total`
/// samples, and the `# UNIT` and `# EOF` lines go.
pub fn text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Renders one scrape.
pub fn render(m: &Metrics, shared: &crate::shared::Shared) -> Result<String, std::fmt::Error> {
    let (http, limits, sends) = (&shared.http[..], &*shared.limits, &*shared.sends);
    let (logins, rates) = (&*shared.logins, &*shared.rates);
    let password_checks = shared.hashing.done.load(Ordering::Relaxed);
    let cluster = shared.cluster.as_deref();
    let mut r = <Registry>::with_prefix("rookery");
    let c = &m.counters;
    // Closed by the engine, or by this node's relay of a room owned
    // elsewhere.
    let relayed = |count: fn(&crate::cluster::Counters) -> &std::sync::atomic::AtomicU64| {
        cluster.map_or(0, |n| count(&n.counters).load(Ordering::Relaxed))
    };
    let slow_closed = c.slow_closed + relayed(|c| &c.relay_slow_closed);
    let lagged = c.lagged + relayed(|c| &c.relay_lagged);
    for (name, help, v) in [
        ("posts", "Messages posted (new, durable)", c.posts),
        (
            "duplicate_posts",
            "Idempotent retries answered with the original seq",
            c.duplicates,
        ),
        (
            "reactions",
            "Reactions put on or taken off (stored)",
            c.reactions,
        ),
        ("delivered", "Events handed to subscribers", c.delivered),
        (
            "forwarded",
            "Events sent to another shard (once per shard)",
            c.forwarded,
        ),
        (
            "mesh_sends",
            "Cross-shard messages (each carries many events)",
            c.mesh_sends,
        ),
        (
            "cache_hits",
            "Catch-up pages served from the tail cache",
            c.cache_hits,
        ),
        (
            "cache_misses",
            "Catch-up pages served from storage",
            c.cache_misses,
        ),
        ("lagged", "Times a subscription became lagging", lagged),
        (
            "volatile_dropped",
            "Typing/presence events dropped for full consumers",
            c.volatile_dropped,
        ),
        (
            "slow_consumer_disconnects",
            "Consumers closed as stuck (4008)",
            slow_closed,
        ),
        (
            "tail_cache_evictions",
            "Rooms whose tail cache was dropped to stay within the shard's tail cache budget",
            c.tail_evictions,
        ),
        (
            "receipts_refused",
            "Read receipts refused: writer queue full",
            c.receipts_refused,
        ),
        (
            "commands_refused",
            "Engine calls refused: a shard's command queue was full",
            m.commands_refused,
        ),
        (
            "receipts_written",
            "Read receipts written",
            m.receipts_written,
        ),
        (
            "receipt_batches",
            "Read-receipt transactions committed",
            m.receipt_batches,
        ),
        (
            "commit_batches",
            "Group commits written to the log",
            m.storage.batches,
        ),
        (
            "log_fsyncs",
            "fdatasync calls on the message log",
            m.storage.syncs,
        ),
        (
            "log_bytes",
            "Bytes written to the message log",
            m.storage.bytes,
        ),
    ] {
        counter(&mut r, name, help, v);
    }
    let g = &m.gauges;
    let connections = Family::<Vec<(String, String)>, Gauge>::default();
    for (shard, h) in http.iter().enumerate() {
        connections
            .get_or_create(&vec![("shard".to_string(), shard.to_string())])
            .set(h.connections.load(Ordering::Relaxed));
    }
    r.register(
        "http_connections",
        "Open connections (HTTP and WebSocket), by shard",
        connections,
    );
    for (name, help, v) in [
        ("subscribers", "Subscriptions open", g.subscribers as i64),
        (
            "lagging_subscribers",
            "Subscriptions catching up",
            g.lagging as i64,
        ),
        (
            "queued_bytes",
            "Bytes queued for consumers",
            g.queued_bytes as i64,
        ),
        (
            "outbox_messages",
            "Cross-shard messages waiting to be sent",
            g.outbox_messages as i64,
        ),
        (
            "rooms_loaded",
            "Rooms loaded on their owners",
            g.rooms_loaded as i64,
        ),
        (
            "tail_cache_events",
            "Events held in the rooms' tail caches",
            g.tail_cache_events as i64,
        ),
        (
            "tail_cache_bytes",
            "Bytes of the events in the rooms' tail caches",
            g.tail_cache_bytes as i64,
        ),
        (
            "receipt_queue_len",
            "Read receipts waiting for the writer",
            m.receipt_queue_len as i64,
        ),
        (
            "process_resident_memory_bytes",
            "Resident memory of the process",
            resident_bytes(),
        ),
    ] {
        gauge(&mut r, name, help, v);
    }
    if let Some(node) = cluster {
        gauge(
            &mut r,
            "cluster_nats_connected",
            "1 while this node's link to NATS is up",
            i64::from(node.connected()),
        );
        counter(
            &mut r,
            "cluster_nats_dropped",
            "NATS messages dropped because their reader on this node was behind",
            node.link.dropped()
                + node
                    .wire_counters
                    .dropped
                    .load(std::sync::atomic::Ordering::Relaxed),
        );
        let c = &node.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        for (name, help, v) in [
            (
                "cluster_forwarded",
                "Requests this node forwarded to the owners of their rooms",
                load(&c.forwarded),
            ),
            (
                "cluster_forward_failed",
                "Forwarded requests that failed (owner down or late, NATS lost)",
                load(&c.forward_failed),
            ),
            (
                "cluster_forward_micros",
                "Time spent in forwarded requests, in microseconds (divide by cluster_forwarded for the mean)",
                load(&c.forward_micros),
            ),
            (
                "cluster_answered",
                "Requests and operations other nodes asked of this one",
                load(&c.answered),
            ),
            (
                "cluster_unsent",
                "Publishes this node dropped (room events, answers, requests): its NATS queue full, its shard's wire disconnected or full, or over max_payload",
                node.link.unsent() + load(&node.wire_counters.unsent),
            ),
            (
                "cluster_wire_connects",
                "Connections the shards' own NATS connections (wires) made, first ones and reconnections",
                load(&node.wire_counters.connects),
            ),
            (
                "cluster_replica_failures",
                "Cluster records this node could not apply to its copy of users and sessions",
                node.replica().map_or(0, |r| load(&r.failures)),
            ),
        ] {
            counter(&mut r, name, help, v);
        }
        let fills = Family::<Labels, Counter>::default();
        for (peer, n) in c.gap_fills_by_peer(&node.cfg.nodes) {
            if peer != node.cfg.node_id {
                fills
                    .get_or_create(&vec![("peer".into(), peer.to_string())])
                    .inc_by(n);
            }
        }
        r.register(
            "cluster_gap_fills",
            "Gaps in relayed rooms' messages filled from their owners, by owner",
            fills,
        );
    }
    let l = &m.latencies;
    for (name, help, h) in [
        (
            "commit_latency",
            "Post accepted by the owner to durable",
            &l.commit_us,
        ),
        (
            "hop_latency",
            "Cross-shard hop: queued to handed to the peer's consumers",
            &l.hop_us,
        ),
        (
            "catch_up_page_latency",
            "Catch-up page: request to reply applied",
            &l.page_us,
        ),
    ] {
        r.register_with_unit(name, help, Unit::Seconds, MicrosHistogram(h.clone()));
    }
    let mut delivery = micros_histogram();
    for shard in http {
        shard.add_delivery_into(&mut delivery);
    }
    r.register_with_unit(
        "delivery_latency",
        "Message posted to its frame queued for a WebSocket subscriber",
        Unit::Seconds,
        MicrosHistogram(delivery),
    );
    let mut durations: HashMap<&'static str, hdrhistogram::Histogram<u64>> = HashMap::new();
    for shard in http {
        let Ok(d) = shard.durations.lock() else {
            continue;
        };
        for (route, h) in d.iter() {
            let _ = durations
                .entry(route)
                .or_insert_with(micros_histogram)
                .add(h);
        }
    }
    let mut routes: Vec<_> = durations
        .into_iter()
        .map(|(route, h)| (route.to_string(), h))
        .collect();
    routes.sort_by(|a, b| a.0.cmp(&b.0));
    // One family with a `route` label: a registration per route would
    // repeat the family's HELP and TYPE, which scrapers reject.
    r.register_with_unit(
        "http_request_duration",
        "Time to handle an HTTP request, by route",
        Unit::Seconds,
        ByLabel("route", routes),
    );
    let closes = labelled_counters(
        http,
        |h| &h.closes,
        |code| vec![("code".into(), code.to_string())],
    );
    r.register(
        "ws_closes",
        "WebSocket close frames sent, by close code",
        closes,
    );
    let backend_calls = labelled_counters(
        http,
        |h| &h.backend_calls,
        |(key, status)| {
            vec![
                ("key".into(), key.to_string()),
                ("status".into(), status.to_string()),
            ]
        },
    );
    r.register(
        "backend_calls",
        "Server API calls, by API key and status",
        backend_calls,
    );
    r.register(
        "fsync_batch_records",
        "Messages made durable by one log fdatasync",
        SyncBatchHistogram(m.storage),
    );
    let errors = labelled_counters(
        http,
        |h| &h.errors,
        |code| vec![("code".into(), code.to_string())],
    );
    r.register(
        "errors",
        "Errors sent to clients (HTTP and WebSocket), by code",
        errors,
    );
    let requests = labelled_counters(
        http,
        |h| &h.requests,
        |(route, status)| {
            vec![
                ("route".into(), route.to_string()),
                ("status".into(), status.to_string()),
            ]
        },
    );
    r.register(
        "http_requests",
        "HTTP requests answered, by route and status",
        requests,
    );
    let refusals = Family::<Vec<(String, String)>, Counter>::default();
    for (limit, n) in [
        (
            "connections_per_ip",
            limits.connections_refused.load(Ordering::Relaxed),
        ),
        (
            "registrations_per_ip",
            limits.registrations_refused.load(Ordering::Relaxed),
        ),
        ("sends_per_user", sends.refused.load(Ordering::Relaxed)),
        ("login_failures", logins.refused.load(Ordering::Relaxed)),
        (
            "joins_per_user",
            rates.joins.refused.load(Ordering::Relaxed),
        ),
        (
            "rooms_per_user",
            rates.rooms_created.refused.load(Ordering::Relaxed),
        ),
        (
            "member_adds_per_user",
            rates.member_adds.refused.load(Ordering::Relaxed),
        ),
        (
            "directory_calls_per_user",
            rates.directory.refused.load(Ordering::Relaxed),
        ),
        (
            "rooms_per_connection",
            http.iter()
                .map(|h| h.rooms_refused.load(Ordering::Relaxed))
                .sum(),
        ),
        (
            "ws_auth_timeout",
            http.iter()
                .map(|h| h.auth_timeouts.load(Ordering::Relaxed))
                .sum(),
        ),
    ] {
        refusals
            .get_or_create(&vec![("limit".to_string(), limit.to_string())])
            .inc_by(n);
    }
    r.register(
        "limit_refusals",
        "Requests refused by a limit, by limit",
        refusals,
    );
    counter(
        &mut r,
        "password_checks",
        "Passwords hashed or checked on the hashing threads (decoys for unknown names included)",
        password_checks,
    );
    let flush =
        |f: fn(&crate::out::FlushStats) -> i64| -> i64 { http.iter().map(|h| f(&h.flush)).sum() };
    counter(
        &mut r,
        "write_timeouts",
        "Connections closed because their socket took nothing for --conn-write-timeout-ms",
        http.iter()
            .map(|h| h.write_timeouts.load(Ordering::Relaxed))
            .sum(),
    );
    counter(
        &mut r,
        "ws_opened",
        "WebSocket connections opened (upgrades taken)",
        http.iter()
            .map(|h| h.ws_opened.load(Ordering::Relaxed))
            .sum(),
    );
    counter(
        &mut r,
        "ws_moves",
        "WebSocket connections moved to the shard that owns their first room",
        http.iter()
            .map(|h| h.ws_moves.load(Ordering::Relaxed))
            .sum(),
    );
    counter(
        &mut r,
        "ws_writes",
        "Coalesced socket writes of WebSocket output (one per connection per reactor turn at most)",
        flush(|f| f.writes.load(Ordering::Relaxed) as i64) as u64,
    );
    counter(
        &mut r,
        "ws_written_bytes",
        "Bytes written to WebSocket connections",
        flush(|f| f.bytes.load(Ordering::Relaxed) as i64) as u64,
    );
    gauge(
        &mut r,
        "ws_output_bytes",
        "Bytes WebSocket connections are owed and have not read yet (each bound by --conn-output-bytes-max)",
        flush(|f| f.waiting.load(Ordering::Relaxed)),
    );
    counter(
        &mut r,
        "ws_tls_written_bytes",
        "Bytes of TLS records written to WebSocket connections by their output path (with --tls-cert; their plaintext counts in ws_written_bytes)",
        flush(|f| f.bytes_sealed.load(Ordering::Relaxed) as i64) as u64,
    );
    gauge(
        &mut r,
        "ws_output_pool_bytes",
        "Bytes of drained output buffers kept for reuse",
        flush(|f| f.pooled.load(Ordering::Relaxed) as i64),
    );
    register_webhooks(&mut r, &shared.webhooks.stats());
    register_backups(&mut r, &shared.backups.stats);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r)?;
    Ok(out)
}

/// The online backups' counters.
fn register_backups(r: &mut Registry, b: &crate::backups::BackupStats) {
    let counters = [
        ("backups_done", "Online backups that finished", &b.done),
        (
            "backups_failed",
            "Online backups that failed (the log says why)",
            &b.failed,
        ),
        (
            "backup_copied_bytes",
            "Bytes of log the online backups copied",
            &b.bytes,
        ),
    ];
    for (name, help, v) in counters {
        counter(r, name, help, v.load(Ordering::Relaxed));
    }
    gauge(
        r,
        "backup_last_done_timestamp_seconds",
        "When the last online backup finished, seconds since the Unix epoch (0: none since start)",
        b.last_done_s.load(Ordering::Relaxed) as i64,
    );
}

/// One family of a value per webhook, labelled `webhook`.
fn per_hook<M: Default + Clone>(
    hooks: &[(String, std::sync::Arc<crate::webhooks::HookStats>)],
    read: fn(&crate::webhooks::HookStats) -> u64,
    set: impl Fn(&M, u64),
) -> Family<Labels, M> {
    let family = Family::<Labels, M>::default();
    for (hook, stats) in hooks {
        set(
            &family.get_or_create(&vec![("webhook".into(), hook.clone())]),
            read(stats),
        );
    }
    family
}

/// The webhooks' families, labelled `webhook`.
fn register_webhooks(
    r: &mut Registry,
    hooks: &[(String, std::sync::Arc<crate::webhooks::HookStats>)],
) {
    use crate::webhooks::HookStats;
    type Read = fn(&HookStats) -> u64;
    let counters: [(&str, &str, Read); 6] = [
        (
            "webhook_skipped_segments",
            "Log segments gone before a webhook read them (should stay 0)",
            |s| s.skipped_segments.load(Ordering::Relaxed),
        ),
        (
            "webhook_delivered_events",
            "Events a webhook's receiver answered 2xx for",
            |s| s.delivered.load(Ordering::Relaxed),
        ),
        (
            "webhook_failed_requests",
            "Webhook requests that got no 2xx answer (each is retried)",
            |s| s.failures.load(Ordering::Relaxed),
        ),
        (
            "webhook_skipped_bytes",
            "Log bytes a webhook skipped for falling further behind than its backlog_bytes_max",
            |s| s.skipped_bytes.load(Ordering::Relaxed),
        ),
        (
            "webhook_skipped_member_events",
            "Joins and leaves the bounded membership feed dropped before a webhook read them",
            |s| s.skipped_members.load(Ordering::Relaxed),
        ),
        (
            "webhook_dropped_presence",
            "Presence events dropped for a webhook's full queue",
            |s| s.presence_dropped.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, read) in counters {
        r.register(
            name,
            help,
            per_hook(hooks, read, |c: &Counter, v| {
                c.inc_by(v);
            }),
        );
    }
    let gauges: [(&str, &str, Read); 2] = [
        (
            "webhook_backlog_bytes",
            "Log bytes a webhook has yet to deliver, over all shards (measured each second)",
            |s| s.backlog_bytes.load(Ordering::Relaxed),
        ),
        (
            "webhook_pending_member_events",
            "Joins and leaves a webhook has yet to deliver (measured each second)",
            |s| s.pending_members.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, read) in gauges {
        r.register(
            name,
            help,
            per_hook(hooks, read, |g: &Gauge, v| {
                g.set(v as i64);
            }),
        );
    }
    let lags = hooks
        .iter()
        .map(|(hook, stats)| {
            let h = stats.lag.lock().unwrap_or_else(|p| p.into_inner()).clone();
            (hook.clone(), h)
        })
        .collect();
    r.register_with_unit(
        "webhook_delivery_lag",
        "From an event (its timestamp) to its receiver's 2xx answer, by webhook",
        Unit::Seconds,
        ByLabel("webhook", lags),
    );
}
