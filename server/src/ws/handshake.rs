//! The WebSocket handshake, in one place: which endpoint a request asks
//! for, the RFC 6455 checks and accept key, permessage-deflate
//! negotiation, the token on the upgrade, and the 101 (or the refusal,
//! answered and closed).

use std::rc::Rc;

use crate::auth;
use crate::deflate::Negotiated;
use crate::http::{Request, Response};
use crate::net::{answer_and_close, write_within, Socket};
use crate::routes;
use crate::shared::Shared;

/// Which WebSocket endpoint a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/ws`: the chat protocol.
    Chat,
    /// `/echo`: echoes every message (only with `--echo-endpoint`).
    Echo,
}

/// The endpoint an upgrade request asks for, if it is one.
pub fn endpoint(req: &Request, echo_enabled: bool) -> Option<Endpoint> {
    let upgrade = req
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    match req.path.as_str() {
        "/ws" if upgrade => Some(Endpoint::Chat),
        "/echo" if upgrade && echo_enabled => Some(Endpoint::Echo),
        _ => None,
    }
}

/// Checks an upgrade request; the `Sec-WebSocket-Accept` value, or the
/// response refusing it.
pub fn accept_key(req: &Request) -> Result<String, Response> {
    let bad = |m: &str| Err(Response::error(400, "bad_upgrade", m));
    if req.method != "GET" {
        return bad("a WebSocket upgrade must be a GET");
    }
    if req.version < 1 {
        return bad("a WebSocket upgrade needs HTTP/1.1");
    }
    let has_token = |h: Option<&str>, t: &str| {
        h.is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(t)))
    };
    if !has_token(req.header("connection"), "upgrade") {
        return bad("Connection: upgrade is missing");
    }
    if req.header("sec-websocket-version") != Some("13") {
        let mut r = Response::error(426, "bad_upgrade", "only WebSocket version 13 is spoken");
        r.headers
            .push(("sec-websocket-version".into(), "13".into()));
        return Err(r);
    }
    // RFC 6455 §4.1: the key is 16 random bytes, base64-encoded.
    use base64::Engine as _;
    let key_ok = |k: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(k)
            .is_ok_and(|bytes| bytes.len() == 16)
    };
    match req.header("sec-websocket-key") {
        Some(k) if key_ok(k) => Ok(tungstenite::handshake::derive_accept_key(k.as_bytes())),
        Some(_) => bad("Sec-WebSocket-Key must be 16 bytes in base64"),
        None => bad("Sec-WebSocket-Key is missing"),
    }
}

/// The 101 response, with the accepted extension if any.
pub fn switching(accept: String, extension: Option<String>) -> Response {
    let mut headers = vec![
        ("upgrade".into(), "websocket".into()),
        ("connection".into(), "Upgrade".into()),
        ("sec-websocket-accept".into(), accept),
    ];
    if let Some(e) = extension {
        headers.push(("sec-websocket-extensions".into(), e));
    }
    Response {
        status: 101,
        headers,
        ..Response::default()
    }
}

/// An accepted upgrade: what `run` serves.
pub struct Accepted {
    pub conn: Socket,
    /// Bytes the client sent after its upgrade request.
    pub leftover: Vec<u8>,
    /// What a token on the upgrade proved.
    pub proof: Option<auth::Proof>,
    pub endpoint: Endpoint,
    /// permessage-deflate, when agreed.
    pub deflate: Option<Negotiated>,
}

/// An upgrade request, taken off the HTTP connection.
/// An upgrade request the HTTP connection hands over.
pub(crate) struct Upgrade {
    pub conn: Socket,
    pub req: Request,
    /// Bytes the client sent after the request (its first frames).
    pub leftover: Vec<u8>,
    pub endpoint: Endpoint,
}

/// Answers an upgrade request: 101 and the connection to serve, or the
/// refusal (bad upgrade 400/426, bad token 401) and close.
pub(crate) async fn handshake(up: Box<Upgrade>, shared: Rc<Shared>) -> Option<Box<Accepted>> {
    let Upgrade {
        mut conn,
        req,
        leftover,
        endpoint,
    } = *up;
    let mut out = Vec::new();
    let route = routes::route_name(&req);
    let accept = match accept_key(&req) {
        Ok(a) => a,
        Err(resp) => {
            if let Some(h) = shared.my_http() {
                h.answered(route, resp.status, resp.error_code);
            }
            answer_and_close(&shared, conn, out, resp).await;
            return None;
        }
    };
    // A browser page of another origin may not open a WebSocket here
    // unless --allowed-origins lets it (clients that send no Origin are
    // not browsers).
    if let Some(origin) = req.header("origin") {
        if !crate::app::origin_allowed(&shared, origin, req.header("host")) {
            let resp = Response::error(403, "forbidden_origin", "this origin may not connect");
            if let Some(h) = shared.my_http() {
                h.answered(route, resp.status, resp.error_code);
            }
            answer_and_close(&shared, conn, out, resp).await;
            return None;
        }
    }
    let deflate = (!shared.cfg.no_deflate)
        .then(|| crate::deflate::negotiate(req.header("sec-websocket-extensions")))
        .flatten();
    // A token on the upgrade authenticates now; without one the client
    // sends an `auth` frame first.
    let proof = match auth::bearer(&req) {
        _ if endpoint == Endpoint::Echo => None,
        None => None,
        Some(token) => {
            let accounts = crate::accounts::Accounts::of(&shared);
            match auth::identify(&accounts, &shared.cfg, token).await {
                Ok(auth::Identity::User(p)) => Some(p),
                Ok(auth::Identity::Refused(why)) => {
                    let resp = Response::error(401, "unauthorized", &why);
                    if let Some(h) = shared.my_http() {
                        h.answered(route, resp.status, resp.error_code);
                    }
                    answer_and_close(&shared, conn, out, resp).await;
                    return None;
                }
                Err(e) => {
                    // An internal fault is logged by `response`.
                    e.response().encode(true, &mut out);
                    let _ = write_within(&shared, &mut conn, &out).await;
                    return None;
                }
            }
        }
    };
    if let Some(h) = shared.my_http() {
        h.answered(route, 101, None);
    }
    let (negotiated, extension) = deflate.unzip();
    switching(accept, extension).encode(false, &mut out);
    if !write_within(&shared, &mut conn, &out).await {
        return None;
    }
    Some(Box::new(Accepted {
        conn,
        leftover,
        proof,
        endpoint,
        deflate: negotiated,
    }))
}
