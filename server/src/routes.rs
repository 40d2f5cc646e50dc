//! HTTP routes: the one place where requests become responses (and errors
//! become the typed JSON error body of DESIGN.md).

use crate::http::{Request, Response};
use crate::serve::Shared;

/// Answers one request.
pub async fn handle(req: &Request, shared: &Shared) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/healthz") => Response::json(200, &serde_json::json!({"status": "ok"})),
        ("GET", "/readyz") => readyz(shared),
        (_, "/healthz" | "/readyz") => Response::error(
            405,
            "method_not_allowed",
            &format!("{} is not allowed on {}", req.method, req.path),
        ),
        _ => Response::error(404, "not_found", &format!("no route for {}", req.path)),
    }
}

/// Ready once the engine runs and this shard serves; 503 while stopping.
fn readyz(shared: &Shared) -> Response {
    if shared.stopping.load(std::sync::atomic::Ordering::Relaxed) {
        return Response::error(503, "stopping", "the server is shutting down");
    }
    Response::json(
        200,
        &serde_json::json!({
            "status": "ready",
            "shard": shared.shard,
            "shards": shared.engine.shards(),
        }),
    )
}
