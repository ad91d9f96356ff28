//! GraphiQL, served with no outside network: the page on `GET /graphql` and its scripts and
//! styles under `/graphiql/`, compiled into the binary from `gateway/assets/graphiql/`.
//!
//! The vendored files are React 18's and GraphiQL 4's production UMD builds, unchanged from
//! their npm tarballs (`scripts/vendor-graphiql.sh` fetches them; the assets' README says
//! which versions), and two files of ours: `init.js`, which starts GraphiQL, and `page.css`.
//! The page has no inline script or style, so its Content-Security-Policy lets scripts,
//! styles and connections come from this origin only (`connect-src 'self'` covers `ws:` and
//! `wss:` to the same host under CSP Level 3, which every current browser implements). The
//! one exception is a per-response nonce for the `<style>` elements that GraphiQL's dialogs
//! add at run time.

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The path under which [`routes`] serves the assets.
pub const ASSETS_PATH: &str = "/graphiql";

/// The policy of the page, `{nonce}` standing for the response's nonce: nothing from
/// elsewhere, no inline script, no inline style but the nonce's, no framing. Fonts and a few
/// icons are `data:` URLs inside GraphiQL's stylesheet.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'nonce-{nonce}'; connect-src 'self'; img-src 'self' data:; \
     font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The policy when no nonce could be drawn: GraphiQL's dialogs then lose their scroll lock.
const CONTENT_SECURITY_POLICY_WITHOUT_NONCE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; font-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How long a browser may keep an asset without asking again.
const ASSET_CACHE_CONTROL: &str = "public, max-age=86400";

const PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="robots" content="noindex">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>Platform GraphQL</title>
    <link rel="icon" href="data:,">
    <link rel="stylesheet" href="/graphiql/graphiql.min.css">
    <link rel="stylesheet" href="/graphiql/page.css">
  </head>
  <body>
    <div id="graphiql">Loading GraphiQL…</div>
    <script src="/graphiql/react.production.min.js"></script>
    <script src="/graphiql/react-dom.production.min.js"></script>
    <script src="/graphiql/graphiql.min.js"></script>
    <script src="/graphiql/init.js" data-style-nonce="{nonce}"></script>
  </body>
</html>
"#;

/// A file served under [`ASSETS_PATH`].
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static ASSETS: [Asset; 6] = [
    Asset {
        name: "react.production.min.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("../assets/graphiql/react.production.min.js"),
    },
    Asset {
        name: "react-dom.production.min.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("../assets/graphiql/react-dom.production.min.js"),
    },
    Asset {
        name: "graphiql.min.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("../assets/graphiql/graphiql.min.js"),
    },
    Asset {
        name: "graphiql.min.css",
        content_type: CSS,
        bytes: include_bytes!("../assets/graphiql/graphiql.min.css"),
    },
    Asset {
        name: "init.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("../assets/graphiql/init.js"),
    },
    Asset {
        name: "page.css",
        content_type: CSS,
        bytes: include_bytes!("../assets/graphiql/page.css"),
    },
];

/// Each asset's strong ETag: the first 128 bits of its SHA-256, hex, quoted. Computed once.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.bytes);
            let tag = format!("\"{}\"", hex::encode(&digest[..16]));
            // Quoted hex is always a valid header value; the fallback is never used.
            HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
        })
        .collect()
});

/// The GraphiQL page, for `GET /graphql` from a browser: GraphiQL against `/graphql` on the
/// page's own origin, subscriptions over `ws(s)://` to the same path, and a hint in the
/// Headers tab of how to send an access token. Never cached, since its nonce is new each time.
pub fn page() -> Response {
    let mut bytes = [0_u8; 16];
    let (policy, body) = match getrandom::fill(&mut bytes) {
        Ok(()) => {
            let nonce = base64::engine::general_purpose::STANDARD.encode(bytes);
            (
                CONTENT_SECURITY_POLICY.replace("{nonce}", &nonce),
                PAGE.replace("{nonce}", &nonce),
            )
        }
        Err(err) => {
            tracing::warn!("no nonce for the GraphiQL page's styles: {err}");
            (
                CONTENT_SECURITY_POLICY_WITHOUT_NONCE.to_owned(),
                PAGE.replace("{nonce}", ""),
            )
        }
    };
    let Ok(policy) = HeaderValue::from_str(&policy) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, policy),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

/// The routes of GraphiQL's assets, `/graphiql/<file>`, to merge into the router when
/// GraphiQL is on. Each answers with its content type, a day's public caching and a strong
/// ETag, and `304 Not Modified` to a matching `If-None-Match`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS
        .iter()
        .enumerate()
        .fold(Router::new(), |router, (index, asset)| {
            router.route(
                &format!("{ASSETS_PATH}/{}", asset.name),
                get(move |headers: HeaderMap| async move { serve(index, &headers) }),
            )
        })
}

fn serve(index: usize, request: &HeaderMap) -> Response {
    let (Some(asset), Some(etag)) = (ASSETS.get(index), ETAGS.get(index)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let cached = [
        (header::ETAG, etag.clone()),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static(ASSET_CACHE_CONTROL),
        ),
    ];
    if matches_etag(request, etag) {
        return (StatusCode::NOT_MODIFIED, cached).into_response();
    }
    (
        cached,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        asset.bytes,
    )
        .into_response()
}

/// Whether `If-None-Match` names `etag` (or is `*`). Weak comparison, as RFC 9110 asks for
/// this header: a `W/` prefix on the client's tag is ignored.
fn matches_etag(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(ours) = etag.to_str() else {
        return false;
    };
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == ours)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn fetch(path: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::get(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        routes::<()>()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[test]
    fn the_page_loads_every_asset_from_this_origin_and_nothing_else() {
        for asset in &ASSETS {
            let reference = format!("\"{ASSETS_PATH}/{}\"", asset.name);
            assert!(PAGE.contains(&reference), "{reference} is not on the page");
        }
        assert!(!PAGE.contains("//"), "the page names another origin");
        assert!(!PAGE.contains("<script>"), "the page has an inline script");
        assert!(!PAGE.contains("<style"), "the page has an inline style");
    }

    #[test]
    fn the_page_forbids_inline_scripts_and_other_origins_and_draws_a_new_style_nonce_each_time() {
        let nonce = |response: &Response| {
            let policy = response.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(policy.contains("default-src 'none';"), "{policy}");
            assert!(policy.contains("script-src 'self';"), "{policy}");
            assert!(policy.contains("connect-src 'self';"), "{policy}");
            assert!(!policy.contains("unsafe"), "{policy}");
            let (_, rest) = policy.split_once("style-src 'self' 'nonce-").unwrap();
            rest.split_once('\'').unwrap().0.to_owned()
        };
        let (first, second) = (page(), page());
        assert_eq!(first.headers()[header::CACHE_CONTROL], "no-store");
        let (a, b) = (nonce(&first), nonce(&second));
        assert_eq!(a.len(), 24, "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn the_bundle_speaks_graphql_transport_ws() {
        let bundle = ASSETS.iter().find(|a| a.name == "graphiql.min.js").unwrap();
        let needle = b"graphql-transport-ws";
        assert!(bundle.bytes.windows(needle.len()).any(|w| w == needle));
    }

    #[tokio::test]
    async fn an_asset_is_served_with_its_type_caching_and_etag() {
        let response = fetch("/graphiql/graphiql.min.css", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], CSS);
        assert_eq!(headers[header::CACHE_CONTROL], ASSET_CACHE_CONTROL);
        let etag = headers[header::ETAG].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() == 34);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body.len(), ASSETS[3].bytes.len());

        let again = fetch("/graphiql/graphiql.min.css", Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let weak = fetch("/graphiql/graphiql.min.css", Some(&format!("W/{etag}"))).await;
        assert_eq!(weak.status(), StatusCode::NOT_MODIFIED);
        let other = fetch("/graphiql/graphiql.min.css", Some("\"other\"")).await;
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn an_unknown_asset_is_not_found() {
        let response = fetch("/graphiql/../Cargo.toml", None).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let response = fetch("/graphiql/react.development.js", None).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}
