//! The server's one typed configuration: every setting is a flag with a
//! `ROOKERY_*` environment twin and a documented default, and may also be
//! set in a TOML file (`--config`); checked before anything starts (a bad
//! value is one line naming the flag). Precedence: flag, then environment,
//! then file, then default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use rookery_engine::Durability;
use rookery_engine::EngineConfig;

use crate::http::Limits;

/// Rookery: a self-hosted chat server in one binary.
#[derive(Debug, Clone, Parser)]
#[command(name = "rookery", version, about)]
pub struct Config {
    /// A TOML file of settings, keyed by flag name (`listen =
    /// "0.0.0.0:8080"`, `ws-heartbeat-ms = 15000`); flags and environment
    /// variables override it.
    #[arg(long, env = "ROOKERY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve HTTP and WebSocket on (every shard binds it, with
    /// SO_REUSEPORT).
    #[arg(long, env = "ROOKERY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Data directory (created on first start).
    #[arg(long, env = "ROOKERY_DATA_DIR", default_value = "./rookery-data")]
    pub data_dir: PathBuf,
    /// Shards (one pinned executor each); 0 = one per available core. A data
    /// directory keeps the count it was created with.
    #[arg(long, env = "ROOKERY_SHARDS", default_value_t = 0)]
    pub shards: u32,
    /// `sync` (ack after fdatasync), `batch[:MS]` (ack after write, fsync
    /// every MS ms) or `none` (benchmarks of the network path only).
    #[arg(long, env = "ROOKERY_DURABILITY", default_value = "sync")]
    pub durability: String,
    /// Microseconds an idle shard spins (polling its rings) before it
    /// parks in the kernel. Parking and being woken cost a shard tens of
    /// µs of CPU on a VM (a `membarrier`, timer re-arms, context
    /// switches); spinning costs the spin. At most 10,000.
    #[arg(long, env = "ROOKERY_SPIN_BEFORE_PARK_US", default_value_t = 0)]
    pub spin_before_park_us: u64,
    /// Milliseconds between two compaction steps of each shard (old sealed
    /// log segments rewritten in room order, deleted text and superseded
    /// edits dropped; docs/storage.md); 0 turns background compaction off.
    #[arg(long, env = "ROOKERY_COMPACTION_INTERVAL_MS", default_value_t = 60_000)]
    pub compaction_interval_ms: u64,
    /// Bytes of one log segment file (1 MiB..=1 GiB): the unit in which
    /// compaction rewrites, retention deletes and a webhook's backlog is
    /// bounded.
    #[arg(long, env = "ROOKERY_SEGMENT_BYTES_MAX", default_value_t = 64 << 20)]
    pub segment_bytes_max: u32,
    /// The text of a deleted message is gone from every file of the data
    /// directory within this many milliseconds (plus one compaction
    /// interval and the rewrite).
    #[arg(long, env = "ROOKERY_DELETED_TEXT_DELAY_MS", default_value_t = 600_000)]
    pub deleted_text_delay_ms: u64,
    /// A message is found by `GET /api/search` within about this many
    /// milliseconds of its acknowledgement: the search index commits (and
    /// fsyncs) this often while messages arrive.
    #[arg(
        long,
        env = "ROOKERY_SEARCH_COMMIT_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub search_commit_interval_ms: u64,
    /// Bytes of an HTTP request line and headers.
    #[arg(long, env = "ROOKERY_HTTP_HEAD_BYTES_MAX", default_value_t = 16 << 10)]
    pub http_head_bytes_max: usize,
    /// Headers in one HTTP request.
    #[arg(long, env = "ROOKERY_HTTP_HEADERS_MAX", default_value_t = 64)]
    pub http_headers_max: usize,
    /// Bytes of an HTTP request body.
    #[arg(long, env = "ROOKERY_HTTP_BODY_BYTES_MAX", default_value_t = 1 << 20)]
    pub http_body_bytes_max: usize,
    /// Milliseconds a client has to send a whole request once it started
    /// one (slow or half-open clients are answered 408 and closed).
    #[arg(
        long,
        env = "ROOKERY_HTTP_REQUEST_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub http_request_timeout_ms: u64,
    /// Milliseconds an idle keep-alive connection is kept.
    #[arg(long, env = "ROOKERY_HTTP_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub http_idle_timeout_ms: u64,
    /// Messages in one history page at most (`limit`).
    #[arg(long, env = "ROOKERY_HISTORY_PAGE_LEN_MAX", default_value_t = 200)]
    pub history_page_len_max: usize,
    /// Bytes each shard keeps of its rooms' newest events for replays and
    /// catch-up (the least recently used rooms' are dropped past it; those
    /// replays then read the log).
    #[arg(long, env = "ROOKERY_TAIL_CACHE_BYTES_MAX", default_value_t = 4 << 20)]
    pub tail_cache_bytes_max: usize,
    /// Bytes of message bodies in one history page at most: a page stops
    /// early, its `next` cursor continuing it (at least one message is
    /// always returned). Bounds one reply, over HTTP and WebSocket.
    #[arg(long, env = "ROOKERY_HISTORY_PAGE_BYTES_MAX", default_value_t = 1 << 20)]
    pub history_page_bytes_max: usize,
    /// Shared secret of HS256 JWTs minted by an application backend (`sub`:
    /// the user, `exp` required); empty: JWTs are refused. JWT subjects
    /// are users of their own: `sub: "ceo"` is never the registered `ceo`.
    #[arg(
        long,
        env = "ROOKERY_JWT_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    pub jwt_secret: String,
    /// A TOML file of API keys for the server API (`/api/backend/...`,
    /// docs/operations.md), read at start and again on SIGHUP; without it
    /// the server API refuses every call. Every node of a cluster reads
    /// the same file.
    #[arg(long, env = "ROOKERY_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// A TOML file of webhooks (receivers of messages, edits, deletes,
    /// joins, leaves and presence, docs/operations.md), read at start and
    /// again on SIGHUP. Each node of a cluster delivers the events of the
    /// rooms it owns.
    #[arg(long, env = "ROOKERY_WEBHOOKS_FILE")]
    pub webhooks_file: Option<PathBuf>,
    /// The directory online backups are written under
    /// (`POST /api/backend/backup`, each backup a directory in it named by
    /// the request; docs/operations.md). Created if missing; must not hold
    /// or lie in `--data-dir`. Without it the backup route answers 409.
    #[arg(long, env = "ROOKERY_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Bytes of log a backup copies per second at most (at least 1 MiB/s):
    /// what keeps a backup's reads and writes from crowding the log's
    /// durable writes on the disk (docs/benchmarks.md, "Online backup").
    #[arg(long, env = "ROOKERY_BACKUP_BYTES_PER_S_MAX", default_value_t = 16 << 20)]
    pub backup_bytes_per_s_max: u64,
    /// A PEM file of the certificate chain (the server's own first) to
    /// serve HTTPS and WSS with on `--listen`, instead of plain HTTP; with
    /// `--tls-key`. Both are re-read on SIGHUP.
    #[arg(long, env = "ROOKERY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM file of `--tls-cert`'s private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "ROOKERY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// An address to answer plain HTTP on with `308` to the same URL over
    /// HTTPS (on `--listen`'s port), for clients that type `http://`.
    #[arg(long, env = "ROOKERY_TLS_REDIRECT_FROM", requires = "tls_cert")]
    pub tls_redirect_from: Option<SocketAddr>,
    /// Seconds of clock skew allowed when a JWT's `exp` and `nbf` are
    /// checked.
    #[arg(long, env = "ROOKERY_JWT_LEEWAY_S", default_value_t = 5)]
    pub jwt_leeway_s: u64,
    /// Whether anyone may register an account with a password (`open`), or
    /// nobody (`closed`: users come only from a backend's JWTs; existing
    /// accounts still sign in).
    #[arg(long, env = "ROOKERY_REGISTRATION", value_enum, default_value_t = Registration::Open)]
    pub registration: Registration,
    /// Bytes of one WebSocket message (and frame) a client may send; more
    /// closes the connection with 1009.
    #[arg(long, env = "ROOKERY_WS_FRAME_BYTES_MAX", default_value_t = 64 << 10)]
    pub ws_frame_bytes_max: usize,
    /// Milliseconds between server pings on an idle WebSocket; a client
    /// silent for two of them is closed (1001).
    #[arg(long, env = "ROOKERY_WS_HEARTBEAT_MS", default_value_t = 30_000)]
    pub ws_heartbeat_ms: u64,
    /// Open connections (HTTP and WebSocket) from one IP address; more are
    /// answered 429 and closed.
    #[arg(long, env = "ROOKERY_CONNECTIONS_PER_IP_MAX", default_value_t = 1000)]
    pub connections_per_ip_max: u32,
    /// Registrations from one IP address per minute; more get 429.
    #[arg(
        long,
        env = "ROOKERY_REGISTRATIONS_PER_IP_PER_MIN",
        default_value_t = 30
    )]
    pub registrations_per_ip_per_min: u32,
    /// Joins, leaves and other changes of standing (WebSocket `join`/`leave`
    /// frames, the HTTP join/leave routes, answering invitations, and an
    /// admin's removals, bans, unbans, role changes and withdrawals) per
    /// user per second, a token bucket with a burst of twice this: each can
    /// announce the user's presence to every member of the room, or write
    /// the metadata. More get `rate_limited` with a retry delay.
    #[arg(long, env = "ROOKERY_JOINS_PER_USER_PER_S", default_value_t = 10)]
    pub joins_per_user_per_s: u32,
    /// Rooms one user may create per minute (a token bucket with a burst
    /// of as many); more get 429 `rate_limited` with `Retry-After`.
    #[arg(long, env = "ROOKERY_ROOMS_PER_USER_PER_MIN", default_value_t = 10)]
    pub rooms_per_user_per_min: u32,
    /// Directory calls one user may make per minute: user and message
    /// searches and profile changes (a token bucket with a burst of as
    /// many); more get 429 `rate_limited` with `Retry-After`.
    #[arg(
        long,
        env = "ROOKERY_DIRECTORY_CALLS_PER_USER_PER_MIN",
        default_value_t = 120
    )]
    pub directory_calls_per_user_per_min: u32,
    /// Invitations one user (a room admin or owner) may send per minute
    /// over all rooms (a token bucket with a burst of as many); more get
    /// 429 `rate_limited` with `Retry-After`.
    #[arg(
        long,
        env = "ROOKERY_MEMBER_ADDS_PER_USER_PER_MIN",
        default_value_t = 60
    )]
    pub member_adds_per_user_per_min: u32,
    /// Items in one page of the room and member lists at most (`limit`;
    /// 100 when absent).
    #[arg(long, env = "ROOKERY_LIST_PAGE_LEN_MAX", default_value_t = 500)]
    pub list_page_len_max: usize,
    /// Reverse proxies whose `X-Forwarded-For`/`Forwarded` header names
    /// the client (comma-separated addresses or CIDRs). A connection from
    /// one of them is not held to `--connections-per-ip-max` (every client
    /// behind it shares its address), and its requests' client address,
    /// for the per-address limits and the logs, is the last forwarded
    /// address that is not itself a trusted proxy. Default: none (the
    /// headers are ignored).
    #[arg(
        long,
        env = "ROOKERY_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_net
    )]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Web origins (`https://app.example.com`, comma-separated, or `*`)
    /// allowed to call the HTTP API from a browser (CORS, with preflight
    /// answers) and to open WebSockets. Default: none, same-origin only (a
    /// WebSocket whose `Origin` is not the server's own is refused 403;
    /// clients that send no `Origin`, non-browsers, are not affected).
    #[arg(long, env = "ROOKERY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Failed logins from one IP address per minute (a token bucket);
    /// past it every login from there gets 429 with `Retry-After`, before
    /// any password is checked.
    #[arg(
        long,
        env = "ROOKERY_LOGIN_FAILURES_PER_IP_PER_MIN",
        default_value_t = 30
    )]
    pub login_failures_per_ip_per_min: u32,
    /// Failed logins for one account name per minute, from anywhere; past
    /// it logins to that account get 429 with `Retry-After`.
    #[arg(
        long,
        env = "ROOKERY_LOGIN_FAILURES_PER_ACCOUNT_PER_MIN",
        default_value_t = 10
    )]
    pub login_failures_per_account_per_min: u32,
    /// Who may read the dashboard's stats feed (`/api/stats`): `open`, or
    /// `key` for holders of a server API key with the `stats` scope
    /// (needs `--api-keys-file`). `/metrics` is not affected.
    #[arg(long, env = "ROOKERY_DASHBOARD_ACCESS", value_enum, default_value_t = DashboardAccess::Open)]
    pub dashboard_access: DashboardAccess,
    /// Characters (Unicode scalar values) a new password has at least, at
    /// registration and on a change; a shorter one gets 400 `bad_request`
    /// saying so. Logins are not checked: an older, shorter password still
    /// signs in. 1..=1024.
    #[arg(long, env = "ROOKERY_PASSWORD_LEN_MIN", default_value_t = 8)]
    pub password_len_min: usize,
    /// Threads that hash and check passwords (argon2id), apart from the
    /// shards and their blocking pools, unpinned; 0: one per core.
    #[arg(long, env = "ROOKERY_PASSWORD_HASH_THREADS", default_value_t = 0)]
    pub password_hash_threads: usize,
    /// Password checks waiting for a hashing thread; past it a login or
    /// registration gets 503 `unavailable` at once.
    #[arg(long, env = "ROOKERY_PASSWORD_HASH_QUEUE_MAX", default_value_t = 64)]
    pub password_hash_queue_max: usize,
    /// Rooms one WebSocket connection may join at once; more get an
    /// `error` frame with code `too_many_rooms`.
    #[arg(
        long,
        env = "ROOKERY_WS_ROOMS_PER_CONNECTION_MAX",
        default_value_t = 128
    )]
    pub ws_rooms_per_connection_max: usize,
    /// Messages one user may send per second, over all connections and the
    /// HTTP API (a token bucket; see --sends-per-user-burst); more get code
    /// `rate_limited` (HTTP 429) with a retry hint.
    #[arg(long, env = "ROOKERY_SENDS_PER_USER_PER_S", default_value_t = 20)]
    pub sends_per_user_per_s: u32,
    /// Messages one user may send in a burst before the per-second rate
    /// applies.
    #[arg(long, env = "ROOKERY_SENDS_PER_USER_BURST", default_value_t = 40)]
    pub sends_per_user_burst: u32,
    /// Bytes one connection may be owed and not yet have read (events,
    /// acks, replies to pipelined requests, history pages, files): over
    /// it the connection is not read, and a WebSocket's live events lag
    /// (caught up from the room once it drains). One response may take it
    /// over by at most its own size. (Was --ws-outbound-queue-bytes-max.)
    #[arg(
        long,
        alias = "ws-outbound-queue-bytes-max",
        env = "ROOKERY_CONN_OUTPUT_BYTES_MAX",
        default_value_t = 1 << 20
    )]
    pub conn_output_bytes_max: usize,
    /// Bytes of one uploaded file (`POST /api/uploads`); larger is 413
    /// before any byte of it is read.
    #[arg(long, env = "ROOKERY_UPLOAD_BYTES_MAX", default_value_t = 25 << 20)]
    pub upload_bytes_max: u64,
    /// Bytes of all of one user's uploads (files and thumbnails); past it
    /// an upload is 413 `quota_exceeded`.
    #[arg(long, env = "ROOKERY_UPLOAD_QUOTA_BYTES", default_value_t = 1 << 30)]
    pub upload_quota_bytes: u64,
    /// Uploads a shard receives at once; more are 503 with Retry-After
    /// (each holds a buffer of at most 1 MiB while it is written).
    #[arg(long, env = "ROOKERY_UPLOADS_IN_FLIGHT_MAX", default_value_t = 16)]
    pub uploads_in_flight_max: usize,
    /// Seconds an upload no message ever held is kept (uploaded, never
    /// sent); then it is removed, within an hour (or this long, if
    /// shorter).
    #[arg(
        long,
        env = "ROOKERY_UPLOAD_UNSENT_MAX_AGE_SECS",
        default_value_t = 86_400
    )]
    pub upload_unsent_max_age_secs: u64,
    /// Milliseconds a connection's socket may take nothing of what it is
    /// owed; then the connection is closed (counted in
    /// rookery_write_timeouts_total).
    #[arg(long, env = "ROOKERY_CONN_WRITE_TIMEOUT_MS", default_value_t = 30_000)]
    pub conn_write_timeout_ms: u64,
    /// Milliseconds a WebSocket may lag (its live events held back because
    /// it does not read) without draining anything before it is closed as
    /// a slow consumer (4008).
    #[arg(long, env = "ROOKERY_WS_STUCK_TIMEOUT_MS", default_value_t = 30_000)]
    pub ws_stuck_timeout_ms: u64,
    /// Milliseconds a WebSocket connection has to authenticate (token on
    /// the upgrade or an `auth` frame); then it is closed (1008).
    #[arg(long, env = "ROOKERY_WS_AUTH_TIMEOUT_MS", default_value_t = 10_000)]
    pub ws_auth_timeout_ms: u64,
    /// Do not negotiate permessage-deflate (RFC 7692) with clients that
    /// offer it.
    #[arg(long, env = "ROOKERY_NO_DEFLATE")]
    pub no_deflate: bool,
    /// Outbound WebSocket messages of at least this many bytes are
    /// compressed on connections that negotiated permessage-deflate.
    #[arg(long, env = "ROOKERY_WS_DEFLATE_MIN_BYTES", default_value_t = 512)]
    pub ws_deflate_min_bytes: usize,
    /// Keep each WebSocket connection on the shard that accepted it,
    /// instead of moving it, at its first join, to the shard that owns the
    /// room (which then serves the room's traffic for it on one core).
    #[arg(long, env = "ROOKERY_NO_WS_MOVE")]
    pub no_ws_move: bool,
    /// Serve `/echo`: a WebSocket endpoint that echoes every message, for
    /// protocol conformance testing (off by default).
    #[arg(long, env = "ROOKERY_ECHO_ENDPOINT")]
    pub echo_endpoint: bool,
    /// Milliseconds between two samples of the dashboard's stats feed
    /// (`GET /api/stats`).
    #[arg(long, env = "ROOKERY_STATS_INTERVAL_MS", default_value_t = 1_000)]
    pub stats_interval_ms: u64,
    /// Samples the stats feed keeps (the dashboard's window: 300 samples of
    /// 1 s are the last five minutes).
    #[arg(long, env = "ROOKERY_STATS_SAMPLES_MAX", default_value_t = 300)]
    pub stats_samples_max: usize,
    /// Seconds a login session lasts.
    #[arg(long, env = "ROOKERY_SESSION_TTL_S", default_value_t = 30 * 24 * 3600)]
    pub session_ttl_s: u64,
    /// Milliseconds graceful shutdown may take: open connections get the
    /// first half to finish and close (WebSockets get 1001), storage the
    /// rest to flush and checkpoint; then the process exits anyway.
    #[arg(long, env = "ROOKERY_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,
    /// NATS servers of a cluster (`nats://host:port`, comma-separated; any
    /// one will do). Without it this node is a single server with no NATS
    /// code on its path (docs/cluster.md).
    #[arg(long, env = "ROOKERY_NATS")]
    pub nats: Option<String>,
    /// This node's id in the cluster (one of --cluster-nodes).
    #[arg(long, env = "ROOKERY_NODE_ID")]
    pub node_id: Option<u32>,
    /// Every node id of the cluster (`1,2,3`). Rooms are owned by nodes of
    /// this list, whichever are up; a cluster refuses a node started with a
    /// different list.
    #[arg(long, env = "ROOKERY_CLUSTER_NODES")]
    pub cluster_nodes: Option<String>,
    /// The cluster's name: the prefix of its NATS subjects and key-value
    /// bucket, so that two clusters can share one NATS.
    #[arg(long, env = "ROOKERY_CLUSTER_NAME", default_value = "rookery")]
    pub cluster_name: String,
    /// Replicas of the cluster's JetStream key-value bucket (at most the
    /// NATS cluster's JetStream servers).
    #[arg(long, env = "ROOKERY_CLUSTER_KV_REPLICAS", default_value_t = 3)]
    pub cluster_kv_replicas: usize,
    /// Milliseconds a start waits for NATS and its JetStream before it
    /// fails.
    #[arg(
        long,
        env = "ROOKERY_CLUSTER_CONNECT_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub cluster_connect_timeout_ms: u64,
    /// Give each shard its own NATS connection for room events and
    /// operations on rooms (its "wire", docs/cluster.md); `false` sends
    /// everything through the node's one NATS client thread, a thread hop
    /// slower each way (for comparison, or where the wire cannot go).
    #[arg(
        long,
        env = "ROOKERY_CLUSTER_WIRES",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub cluster_wires: bool,
}

/// Upper bounds of the stats feed's settings: an hour between samples, and
/// a window of at most this many samples (each a few hundred bytes, and a
/// request may ask for all of them).
const STATS_INTERVAL_MS_MAX: u64 = 3_600_000;
const STATS_SAMPLES_MAX: usize = 100_000;
/// A leeway of more than five minutes would keep expired JWTs alive.
const JWT_LEEWAY_S_MAX: u64 = 300;
/// The most `--spin-before-park-us` may be: a shard spinning longer than
/// 10 ms would be a busy loop, not a short wait.
const SPIN_BEFORE_PARK_US_MAX: u64 = 10_000;
/// A minimum longer than this would refuse passphrases people use.
const PASSWORD_LEN_MIN_MAX: usize = 1024;

/// Who may see the dashboard's figures (`--dashboard-access`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DashboardAccess {
    /// Anyone who reaches the server.
    Open,
    /// Holders of a server API key with the `stats` scope: `/api/stats`
    /// answers 401 without one (the dashboard asks for it).
    Key,
}

/// Who may register an account (`--registration`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Registration {
    /// Anyone (under the per-address limit).
    Open,
    /// Nobody: `POST /api/register` answers 403.
    Closed,
}

impl Config {
    /// Checks every setting; the error names the flag.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |v: u64, flag: &str| {
            if v == 0 {
                Err(format!("--{flag} must be > 0"))
            } else {
                Ok(())
            }
        };
        if self
            .tls_redirect_from
            .is_some_and(|a| a.port() == self.listen.port())
        {
            return Err("--tls-redirect-from must be another port than --listen's".into());
        }
        self.durability()?;
        self.cluster()?;
        positive(self.http_head_bytes_max as u64, "http-head-bytes-max")?;
        positive(self.joins_per_user_per_s as u64, "joins-per-user-per-s")?;
        positive(self.rooms_per_user_per_min as u64, "rooms-per-user-per-min")?;
        if !(1..=60_000).contains(&self.search_commit_interval_ms) {
            return Err("--search-commit-interval-ms must be 1..=60000".into());
        }
        positive(
            self.directory_calls_per_user_per_min as u64,
            "directory-calls-per-user-per-min",
        )?;
        positive(
            self.member_adds_per_user_per_min as u64,
            "member-adds-per-user-per-min",
        )?;
        positive(self.list_page_len_max as u64, "list-page-len-max")?;
        positive(
            self.login_failures_per_ip_per_min as u64,
            "login-failures-per-ip-per-min",
        )?;
        positive(
            self.login_failures_per_account_per_min as u64,
            "login-failures-per-account-per-min",
        )?;
        positive(
            self.password_hash_queue_max as u64,
            "password-hash-queue-max",
        )?;
        if self.dashboard_access == DashboardAccess::Key && self.api_keys_file.is_none() {
            return Err(
                "--dashboard-access key needs --api-keys-file (a key with the stats scope)".into(),
            );
        }
        if !(1..=PASSWORD_LEN_MIN_MAX).contains(&self.password_len_min) {
            return Err(format!(
                "--password-len-min must be 1..={PASSWORD_LEN_MIN_MAX}"
            ));
        }
        if self.spin_before_park_us > SPIN_BEFORE_PARK_US_MAX {
            return Err(format!(
                "--spin-before-park-us must be <= {SPIN_BEFORE_PARK_US_MAX}"
            ));
        }
        if self.backup_bytes_per_s_max < 1 << 20 {
            return Err("--backup-bytes-per-s-max must be >= 1048576".into());
        }
        if !(1 << 20..=1 << 30).contains(&self.segment_bytes_max) {
            return Err("--segment-bytes-max must be in 1048576..=1073741824".into());
        }
        if self.jwt_leeway_s > JWT_LEEWAY_S_MAX {
            return Err(format!("--jwt-leeway-s must be <= {JWT_LEEWAY_S_MAX}"));
        }
        if self.http_head_bytes_max < 256 {
            return Err("--http-head-bytes-max must be >= 256".into());
        }
        positive(self.http_headers_max as u64, "http-headers-max")?;
        positive(self.http_request_timeout_ms, "http-request-timeout-ms")?;
        positive(self.http_idle_timeout_ms, "http-idle-timeout-ms")?;
        positive(self.shutdown_timeout_ms, "shutdown-timeout-ms")?;
        positive(self.session_ttl_s, "session-ttl-s")?;
        positive(self.stats_interval_ms, "stats-interval-ms")?;
        positive(self.stats_samples_max as u64, "stats-samples-max")?;
        if self.stats_interval_ms > STATS_INTERVAL_MS_MAX {
            return Err(format!(
                "--stats-interval-ms must be at most {STATS_INTERVAL_MS_MAX} (an hour)"
            ));
        }
        if self.stats_samples_max > STATS_SAMPLES_MAX {
            return Err(format!(
                "--stats-samples-max must be at most {STATS_SAMPLES_MAX}"
            ));
        }
        positive(self.connections_per_ip_max as u64, "connections-per-ip-max")?;
        positive(self.ws_heartbeat_ms, "ws-heartbeat-ms")?;
        if self.ws_frame_bytes_max < 128 {
            return Err("--ws-frame-bytes-max must be >= 128".into());
        }
        positive(self.history_page_len_max as u64, "history-page-len-max")?;
        positive(self.history_page_bytes_max as u64, "history-page-bytes-max")?;
        positive(
            self.ws_rooms_per_connection_max as u64,
            "ws-rooms-per-connection-max",
        )?;
        positive(self.sends_per_user_per_s as u64, "sends-per-user-per-s")?;
        positive(self.sends_per_user_burst as u64, "sends-per-user-burst")?;
        positive(self.ws_stuck_timeout_ms, "ws-stuck-timeout-ms")?;
        positive(self.ws_auth_timeout_ms, "ws-auth-timeout-ms")?;
        positive(self.conn_write_timeout_ms, "conn-write-timeout-ms")?;
        positive(self.upload_bytes_max, "upload-bytes-max")?;
        positive(self.uploads_in_flight_max as u64, "uploads-in-flight-max")?;
        positive(
            self.upload_unsent_max_age_secs,
            "upload-unsent-max-age-secs",
        )?;
        if self.upload_quota_bytes < self.upload_bytes_max {
            return Err("--upload-quota-bytes must be >= --upload-bytes-max".into());
        }
        if self.conn_output_bytes_max < self.ws_frame_bytes_max {
            return Err("--conn-output-bytes-max must be >= --ws-frame-bytes-max".into());
        }
        self.engine_config()
            .validate()
            .map_err(|e| format!("engine settings: {e}"))
    }

    /// The cluster this node is part of (`--nats`), checked; `None` for a
    /// single node.
    pub fn cluster(&self) -> Result<Option<rookery_cluster::ClusterConfig>, String> {
        let Some(nats) = &self.nats else {
            if self.node_id.is_some() || self.cluster_nodes.is_some() {
                return Err("--node-id and --cluster-nodes need --nats".into());
            }
            return Ok(None);
        };
        let node_id = self.node_id.ok_or("--nats needs --node-id")?;
        let nodes = self
            .cluster_nodes
            .as_deref()
            .ok_or("--nats needs --cluster-nodes")?;
        let cfg = rookery_cluster::ClusterConfig {
            name: self.cluster_name.clone(),
            node_id,
            nodes: rookery_cluster::ClusterConfig::parse_nodes(nodes).map_err(|e| e.to_string())?,
            nats: rookery_cluster::ClusterConfig::parse_servers(nats),
            kv_replicas: self.cluster_kv_replicas,
            connect_timeout_ms: self.cluster_connect_timeout_ms,
        };
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(Some(cfg))
    }

    fn durability(&self) -> Result<Durability, String> {
        Durability::parse(&self.durability).map_err(|e| format!("--durability: {e}"))
    }

    /// The message search index's settings: in `<data dir>/search`, its
    /// deleted words rewritten away as the log's deleted text is.
    pub fn search_config(&self) -> rookery_engine::SearchConfig {
        let mut cfg = rookery_engine::SearchConfig::new(self.data_dir.join("search"));
        cfg.commit_interval = Duration::from_millis(self.search_commit_interval_ms);
        cfg.expunge_delay = Duration::from_millis(self.deleted_text_delay_ms);
        cfg
    }

    /// The engine's configuration.
    pub fn engine_config(&self) -> EngineConfig {
        let mut cfg = EngineConfig::new(&self.data_dir);
        if self.shards > 0 {
            cfg.storage.shards = self.shards;
        }
        if let Ok(d) = self.durability() {
            cfg.storage.durability = d;
        }
        cfg.storage.compaction_interval_ms = self.compaction_interval_ms;
        cfg.storage.segment_bytes_max = self.segment_bytes_max;
        cfg.spin_before_park = Duration::from_micros(self.spin_before_park_us);
        cfg.storage.deleted_text_delay_ms = self.deleted_text_delay_ms;
        cfg.rooms_must_exist = true;
        if let Ok(Some(cluster)) = self.cluster() {
            // A node hands out only the room and user ids it owns: ids are
            // unique cluster-wide with no shared counter, and a room it
            // creates is its own (docs/cluster.md).
            let (me, nodes) = (cluster.node_id, cluster.nodes);
            cfg.storage.id_filter = Some(rookery_engine::IdFilter::new(move |id| {
                rookery_cluster::owner_of(id, &nodes) == me
            }));
        }
        cfg.history_page_bytes_max = self.history_page_bytes_max;
        cfg.tail_cache_bytes_max = self.tail_cache_bytes_max;
        cfg.outbound_queue_bytes_max = self.conn_output_bytes_max;
        // Typing, presence and receipts get at most a quarter of the queue.
        cfg.volatile_queue_bytes_max = cfg
            .volatile_queue_bytes_max
            .min(self.conn_output_bytes_max / 4);
        cfg.stuck_timeout = Duration::from_millis(self.ws_stuck_timeout_ms);
        cfg.uploads.file_bytes_max = self.upload_bytes_max;
        cfg.uploads.quota_bytes_per_user = self.upload_quota_bytes;
        let unsent = Duration::from_secs(self.upload_unsent_max_age_secs);
        cfg.uploads.unsent_max_age = unsent;
        cfg.uploads.sweep_interval = cfg.uploads.sweep_interval.min(unsent);
        cfg
    }

    /// Limits on one HTTP request.
    pub fn http_limits(&self) -> Limits {
        Limits {
            head_bytes_max: self.http_head_bytes_max,
            headers_max: self.http_headers_max,
            body_bytes_max: self.http_body_bytes_max,
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.http_request_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.http_idle_timeout_ms)
    }

    pub fn session_ttl_ms(&self) -> u64 {
        self.session_ttl_s.saturating_mul(1000)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

/// An address or a CIDR (`10.0.0.1`, `10.0.0.0/8`, `::1`).
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or a CIDR"))
}

/// Reads a settings file: the `(environment variable, value)` pairs it
/// sets, for settings not already in the environment (`present` says which
/// are). Keys are flag names (`ws-heartbeat-ms` or `ws_heartbeat_ms`); an
/// unknown key or a value that is not a string, number or boolean is an
/// error naming it.
pub fn file_settings(
    text: &str,
    present: impl Fn(&str) -> bool,
) -> Result<Vec<(String, String)>, String> {
    use clap::CommandFactory;
    let table: toml::Table = text.parse().map_err(|e| format!("{e}"))?;
    let cmd = Config::command();
    let mut out = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        let env = cmd
            .get_arguments()
            .filter(|a| a.get_id() != "config")
            .find(|a| a.get_long() == Some(flag.as_str()))
            .and_then(|a| a.get_env())
            .ok_or_else(|| format!("unknown setting {key:?}"))?
            .to_string_lossy()
            .into_owned();
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                return Err(format!(
                    "setting {key:?}: expected a string, number or boolean"
                ))
            }
        };
        if !present(&env) {
            out.push((env, value));
        }
    }
    Ok(out)
}

/// Parses the command line, with a `--config` file's settings under flags
/// and environment variables; a bad file is one line naming it.
pub fn load() -> Result<Config, String> {
    let cfg = Config::parse();
    let Some(path) = cfg.config.clone() else {
        return Ok(cfg);
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let settings = file_settings(&text, |env| std::env::var_os(env).is_some())
        .map_err(|e| format!("--config {}: {e}", path.display()))?;
    for (env, value) in settings {
        // Single-threaded still: nothing else reads the environment yet.
        std::env::set_var(env, value);
    }
    Ok(Config::parse())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("rookery").chain(args.iter().copied())).unwrap()
    }

    /// docs/security.md is the reference of every setting: each flag is
    /// named there (in backquotes), with its default.
    #[test]
    fn security_doc_names_every_flag() {
        use clap::CommandFactory;
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md"))
                .expect("docs/security.md");
        let missing: Vec<String> = Config::command()
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|long| !doc.contains(&format!("`--{long}")))
            .map(|long| format!("--{long}"))
            .collect();
        assert!(missing.is_empty(), "not in docs/security.md: {missing:?}");
    }

    #[test]
    fn defaults_are_valid_and_documented() {
        let cfg = parse(&[]);
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(cfg.data_dir, PathBuf::from("./rookery-data"));
        cfg.validate().unwrap();
    }

    #[test]
    fn a_bad_setting_names_its_flag() {
        for (args, flag) in [
            (&["--durability", "often"][..], "--durability"),
            (
                &["--http-request-timeout-ms", "0"][..],
                "--http-request-timeout-ms",
            ),
            (
                &["--http-head-bytes-max", "10"][..],
                "--http-head-bytes-max",
            ),
            (
                &["--sends-per-user-per-s", "0"][..],
                "--sends-per-user-per-s",
            ),
            (
                &["--conn-output-bytes-max", "1000"][..],
                "--conn-output-bytes-max",
            ),
            // The old name of the same setting.
            (
                &["--ws-outbound-queue-bytes-max", "1000"][..],
                "--conn-output-bytes-max",
            ),
            (
                &["--conn-write-timeout-ms", "0"][..],
                "--conn-write-timeout-ms",
            ),
            (&["--jwt-leeway-s", "3600"][..], "--jwt-leeway-s"),
            (&["--segment-bytes-max", "65536"][..], "--segment-bytes-max"),
            (
                &["--backup-bytes-per-s-max", "1000"][..],
                "--backup-bytes-per-s-max",
            ),
            (
                &["--segment-bytes-max", "2147483648"][..],
                "--segment-bytes-max",
            ),
            (
                &["--spin-before-park-us", "10001"][..],
                "--spin-before-park-us",
            ),
            (
                &["--directory-calls-per-user-per-min", "0"][..],
                "--directory-calls-per-user-per-min",
            ),
            (
                &["--rooms-per-user-per-min", "0"][..],
                "--rooms-per-user-per-min",
            ),
            (&["--list-page-len-max", "0"][..], "--list-page-len-max"),
            (&["--password-len-min", "0"][..], "--password-len-min"),
            (&["--dashboard-access", "key"][..], "--dashboard-access"),
            (&["--password-len-min", "1025"][..], "--password-len-min"),
            (&["--node-id", "1"][..], "--nats"),
            (&["--nats", "nats://127.0.0.1:4222"][..], "--node-id"),
            (
                &["--nats", "nats://a:1", "--node-id", "1"][..],
                "--cluster-nodes",
            ),
            (
                &[
                    "--nats",
                    "nats://a:1",
                    "--node-id",
                    "4",
                    "--cluster-nodes",
                    "1,2,3",
                ][..],
                "--node-id 4",
            ),
            (
                &["--nats", "n", "--node-id", "1", "--cluster-nodes", "1,1"][..],
                "listed twice",
            ),
            (
                &[
                    "--nats",
                    "n",
                    "--node-id",
                    "1",
                    "--cluster-nodes",
                    "1",
                    "--cluster-name",
                    "a b",
                ][..],
                "--cluster-name",
            ),
            (
                &[
                    "--tls-cert",
                    "c.pem",
                    "--tls-key",
                    "k.pem",
                    "--tls-redirect-from",
                    "0.0.0.0:8080",
                ][..],
                "--tls-redirect-from",
            ),
        ] {
            let err = parse(args).validate().unwrap_err();
            assert!(err.contains(flag), "{err}");
        }
    }

    #[test]
    fn a_cluster_is_read_from_its_flags() {
        assert_eq!(parse(&[]).cluster().unwrap(), None);
        let cfg = parse(&[
            "--nats",
            "nats://127.0.0.1:4222, nats://127.0.0.1:4223",
            "--node-id",
            "2",
            "--cluster-nodes",
            "3,1,2",
            "--cluster-name",
            "chat",
        ]);
        let c = cfg.cluster().unwrap().unwrap();
        assert_eq!((c.node_id, c.nodes_text()), (2, "1,2,3".to_string()));
        assert_eq!(c.nats.len(), 2);
        assert_eq!(c.bucket(), "rookery-chat");
        assert!(cfg.cluster_wires, "wires by default");
        assert!(!parse(&["--cluster-wires", "false"]).cluster_wires);
    }

    #[test]
    fn a_settings_file_maps_to_environment_twins() {
        let text = "listen = \"0.0.0.0:9000\"\nws_heartbeat_ms = 15000\necho-endpoint = true\n";
        let got = file_settings(text, |env| env == "ROOKERY_WS_HEARTBEAT_MS").unwrap();
        assert_eq!(
            got,
            [
                ("ROOKERY_ECHO_ENDPOINT".to_string(), "true".to_string()),
                ("ROOKERY_LISTEN".to_string(), "0.0.0.0:9000".to_string()),
            ],
            "the environment wins over the file"
        );
        let err = file_settings("listne = 1", |_| false).unwrap_err();
        assert!(err.contains("listne"), "{err}");
        let err = file_settings("listen = [1]", |_| false).unwrap_err();
        assert!(err.contains("listen"), "{err}");
        let err = file_settings("config = \"x\"", |_| false).unwrap_err();
        assert!(err.contains("config"), "{err}");
        assert!(file_settings("listen = ", |_| false).is_err());
    }
}
