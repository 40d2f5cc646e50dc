//! The web client (`/`) and the dashboard (`/dashboard`): plain HTML,
//! CSS and JavaScript modules from `server/web/`, embedded in the binary at
//! build time (no CDN, no second process, no build step).
//!
//! Each file is answered with its content type, a strong `ETag` (a hash of
//! its bytes, so a new build is never served from a stale cache; 304 when
//! `If-None-Match` has it), `Cache-Control: no-cache` and a
//! Content-Security-Policy that allows only this origin's scripts,
//! styles and sockets.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::http::{Request, Response};

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../web/", $file)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("/", "index.html", HTML),
    asset!("/app.js", "app.js", JS),
    asset!("/vlist.js", "vlist.js", JS),
    asset!("/markdown.js", "markdown.js", JS),
    asset!("/client.js", "client.js", JS),
    asset!("/style.css", "style.css", CSS),
    asset!("/dashboard", "dashboard.html", HTML),
    asset!("/dashboard.js", "dashboard.js", JS),
    asset!("/favicon.svg", "favicon.svg", "image/svg+xml"),
];

/// `img-src blob:`: the client shows uploaded images from blob URLs (it
/// reads them with its token; an `<img>` cannot send one).
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; \
                   style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; \
                   frame-ancestors 'none'";

/// The route name of an embedded file (for metrics), if `path` is one.
pub fn route(path: &str) -> Option<&'static str> {
    ASSETS.iter().find(|a| a.path == path).map(|a| a.path)
}

fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                format!("\"{}\"", crate::auth::hex(&digest[..12]))
            })
            .collect()
    })
}

/// The answer to `GET path` if it names an embedded file.
pub fn serve(req: &Request) -> Option<Response> {
    let i = ASSETS.iter().position(|a| a.path == req.path)?;
    let (asset, etag) = (&ASSETS[i], &etags()[i]);
    let fresh = req.none_match(etag);
    let mut resp = Response {
        status: if fresh { 304 } else { 200 },
        body: if fresh {
            Vec::new()
        } else {
            asset.body.to_vec()
        },
        ..Response::default()
    };
    for (name, value) in [
        ("content-type", asset.content_type),
        ("etag", etag.as_str()),
        ("cache-control", "no-cache"),
        ("x-content-type-options", "nosniff"),
        ("content-security-policy", CSP),
        ("referrer-policy", "no-referrer"),
    ] {
        resp.headers.push((name.into(), value.into()));
    }
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, if_none_match: Option<&str>) -> Request {
        let mut raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
        if let Some(tag) = if_none_match {
            raw.push_str(&format!("If-None-Match: {tag}\r\n"));
        }
        raw.push_str("\r\n");
        let limits = crate::http::Limits {
            head_bytes_max: 16 << 10,
            headers_max: 64,
            body_bytes_max: 1 << 20,
        };
        crate::http::parse(raw.as_bytes(), &limits)
            .unwrap()
            .unwrap()
            .0
    }

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn every_asset_is_served_with_its_type_and_a_validator() {
        for a in ASSETS {
            let r = serve(&get(a.path, None)).unwrap();
            assert_eq!(r.status, 200, "{}", a.path);
            assert!(!r.body.is_empty(), "{}", a.path);
            assert_eq!(header(&r, "content-type"), Some(a.content_type));
            assert!(header(&r, "etag").unwrap().starts_with('"'));
            assert!(header(&r, "content-security-policy").is_some());
        }
        let types: Vec<_> = [HTML, JS, CSS]
            .iter()
            .map(|t| ASSETS.iter().filter(|a| a.content_type == *t).count())
            .collect();
        assert!(types.iter().all(|&n| n > 0), "{types:?}");
    }

    #[test]
    fn a_matching_etag_is_304_without_a_body() {
        let first = serve(&get("/app.js", None)).unwrap();
        let tag = header(&first, "etag").unwrap().to_string();
        let again = serve(&get("/app.js", Some(&format!("\"x\", {tag}")))).unwrap();
        assert_eq!(again.status, 304);
        assert!(again.body.is_empty());
        let stale = serve(&get("/app.js", Some("\"stale\""))).unwrap();
        assert_eq!(stale.status, 200);
    }

    #[test]
    fn other_paths_are_not_assets() {
        for path in ["/api/rooms", "/app.js/", "/../Cargo.toml", "/web/app.js"] {
            assert!(serve(&get(path, None)).is_none(), "{path}");
            assert!(route(path).is_none());
        }
    }
}
