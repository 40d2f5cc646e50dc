//! The server's one typed configuration: every setting is a flag with a
//! `ROOKERY_*` environment twin and a documented default, checked before
//! anything starts (a bad value is one line naming the flag).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use rookery_engine::storage::Durability;
use rookery_engine::EngineConfig;

use crate::http::Limits;

/// Rookery: a self-hosted chat server in one binary.
#[derive(Debug, Clone, Parser)]
#[command(name = "rookery", version, about)]
pub struct Config {
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
    /// Shared secret of HS256 JWTs minted by an application backend (`sub`:
    /// the user's name, `exp` required); empty: JWTs are refused.
    #[arg(
        long,
        env = "ROOKERY_JWT_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    pub jwt_secret: String,
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
    /// Seconds a login session lasts.
    #[arg(long, env = "ROOKERY_SESSION_TTL_S", default_value_t = 30 * 24 * 3600)]
    pub session_ttl_s: u64,
    /// Milliseconds graceful shutdown may take before the process exits
    /// anyway.
    #[arg(long, env = "ROOKERY_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,
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
        self.durability()?;
        positive(self.http_head_bytes_max as u64, "http-head-bytes-max")?;
        if self.http_head_bytes_max < 256 {
            return Err("--http-head-bytes-max must be >= 256".into());
        }
        positive(self.http_headers_max as u64, "http-headers-max")?;
        positive(self.http_request_timeout_ms, "http-request-timeout-ms")?;
        positive(self.http_idle_timeout_ms, "http-idle-timeout-ms")?;
        positive(self.shutdown_timeout_ms, "shutdown-timeout-ms")?;
        positive(self.session_ttl_s, "session-ttl-s")?;
        positive(self.connections_per_ip_max as u64, "connections-per-ip-max")?;
        positive(self.ws_heartbeat_ms, "ws-heartbeat-ms")?;
        if self.ws_frame_bytes_max < 128 {
            return Err("--ws-frame-bytes-max must be >= 128".into());
        }
        positive(self.history_page_len_max as u64, "history-page-len-max")?;
        self.engine_config()
            .validate()
            .map_err(|e| format!("engine settings: {e}"))
    }

    fn durability(&self) -> Result<Durability, String> {
        Durability::parse(&self.durability).map_err(|e| format!("--durability: {e}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("rookery").chain(args.iter().copied())).unwrap()
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
        ] {
            let err = parse(args).validate().unwrap_err();
            assert!(err.contains(flag), "{err}");
        }
    }
}
