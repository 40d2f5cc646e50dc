//! The server's own routes: `/api/server`, `/api/stats`, `/metrics`,
//! `/readyz`, and the answer to a WebSocket path requested without an
//! upgrade.

use serde_json::{json, Value};

use std::sync::atomic::Ordering;

use super::{query_u64, ApiError, ApiResult};
use crate::http::{Request, Response};
use crate::shared::Shared;

/// `GET /api/stats?after=MS`: the dashboard's feed, every sample that
/// ends after `after` (all kept samples without it), oldest first.
pub(crate) fn stats(req: &Request, shared: &Shared) -> ApiResult {
    if shared.cfg.dashboard_access == crate::config::DashboardAccess::Key {
        super::backend::require_key(req, shared, crate::keys::Scope::Stats)?;
    }
    let after = query_u64(req, "after")?.unwrap_or(0);
    let (samples, started_ms, totals) = {
        let s = shared
            .stats
            .lock()
            .map_err(|_| ApiError::Internal("stats feed poisoned".into()))?;
        (s.since(after), s.started_ms, s.totals)
    };
    let mut feed = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started_ms": started_ms,
        "totals": totals,
        "interval_ms": shared.cfg.stats_interval_ms,
        "samples_max": shared.cfg.stats_samples_max,
        "shards": shared.engine.shards(),
        "samples": samples,
    });
    if let Some(node) = &shared.cluster {
        feed["cluster"] = node.nodes_view();
    }
    Ok(Response::json(200, &feed))
}

/// `GET /api/server`: what this server is and where its endpoints are.
pub(crate) fn index(shared: &Shared) -> Value {
    json!({
        "server": "rookery",
        "version": env!("CARGO_PKG_VERSION"),
        "shards": shared.engine.shards(),
        "endpoints": {
            "web_client": "/",
            "dashboard": "/dashboard",
            "stats": "/api/stats",
            "websocket": "/ws",
            "api": "/api/register, /api/login, /api/rooms, /api/me/unread",
            "health": "/healthz",
            "ready": "/readyz",
            "metrics": "/metrics",
        },
        "history_page_len_max": shared.cfg.history_page_len_max,
        "deflate": !shared.cfg.no_deflate,
        "echo": shared.cfg.echo_endpoint,
        "registration": match shared.cfg.registration {
            crate::config::Registration::Open => "open",
            crate::config::Registration::Closed => "closed",
        },
        "limits": limits(shared),
    })
}

/// What a client must know to never send what the server refuses: a
/// WebSocket message over `ws_frame_bytes_max` closes the connection with
/// 1009, so a client checks its frames (and a message's body) before
/// sending rather than learn it from a close.
fn limits(shared: &Shared) -> Value {
    let cfg = &shared.cfg;
    let storage = rookery_engine::StorageConfig::new("");
    json!({
        "ws_frame_bytes_max": cfg.ws_frame_bytes_max,
        "message_body_bytes_max": storage.body_bytes_max,
        "http_body_bytes_max": cfg.http_body_bytes_max,
        "upload_bytes_max": cfg.upload_bytes_max,
        "files_per_message_max": rookery_engine::FILES_PER_MESSAGE_MAX,
        "name_bytes_max": rookery_engine::NAME_BYTES_MAX,
        "name_pattern": "[A-Za-z0-9_.-]+",
        "password_len_min": cfg.password_len_min,
    })
}

/// A WebSocket endpoint asked for without an upgrade.
pub(crate) fn no_upgrade() -> Response {
    Response::error(
        400,
        "bad_upgrade",
        "this endpoint takes a WebSocket upgrade (Upgrade: websocket)",
    )
}

/// `GET /metrics`: Prometheus (OpenMetrics) text, summed over shards.
pub(crate) async fn metrics(req: &Request, shared: &Shared) -> ApiResult {
    let m = shared.engine.metrics_async().await?;
    let text = crate::metrics::render(&m, shared)
        .map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
    // OpenMetrics for scrapers that ask for it (Prometheus does), the
    // Prometheus text format for everyone else.
    let openmetrics = req
        .header("accept")
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let (content_type, body) = if openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::text_format(&text),
        )
    };
    Ok(Response {
        status: 200,
        headers: vec![("content-type".into(), content_type.into())],
        body: body.into_bytes(),
        error_code: None,
        file: None,
    })
}

/// Ready once the engine runs and this shard serves; 503 while stopping.
pub(crate) fn readyz(shared: &Shared) -> Response {
    if shared.stopping.load(Ordering::Relaxed) {
        return Response::error(503, "stopping", "the server is shutting down");
    }
    let mut ready =
        json!({"status": "ready", "shard": shared.shard, "shards": shared.engine.shards()});
    if let Some(node) = &shared.cluster {
        ready["cluster"] = node.view();
    }
    Response::json(200, &ready)
}
