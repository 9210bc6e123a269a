//! The interactive API reference at `/docs`: Swagger UI reading `/openapi.json`, every file it needs
//! built into the binary (vendored from the npm registry's `swagger-ui-dist`, see
//! `server/assets/swagger-ui/README.md`), so the page works on a machine without the internet. The
//! vendored files live under a path naming their version and are cached for a year; the page and its
//! start script are revalidated on every load.

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::AppState;

/// The vendored Swagger UI's version: part of its files' paths, so a new version is a new URL.
const VERSION: &str = "5.36.0";

const PAGE: &str = r#"<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
    <title>Mercator API</title>
    <link rel="icon" type="image/png" href="/docs/assets/VERSION/favicon-32x32.png" />
    <link rel="stylesheet" href="/docs/assets/VERSION/swagger-ui.css" />
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/docs/assets/VERSION/swagger-ui-bundle.js"></script>
    <script src="/docs/start.js"></script>
  </body>
</html>
"#;

/// Swagger UI on the server's own document; no validator badge (it would call validator.swagger.io).
const START: &str = r##"window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  persistAuthorization: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
"##;

/// (file name, content type, bytes)
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js"),
    ),
    (
        "swagger-ui.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/swagger-ui/swagger-ui.css"),
    ),
    (
        "favicon-32x32.png",
        "image/png",
        include_bytes!("../../assets/swagger-ui/favicon-32x32.png"),
    ),
];

const REVALIDATE: &str = "no-cache";
/// No other page may frame it. (The server's default for JSON, `default-src 'none'`, would stop the page's
/// scripts; a stricter policy for Swagger UI is untested in a browser here, so it is not set.)
const PAGE_POLICY: &str = "frame-ancestors 'none'";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `/docs`, its start script and the vendored files (no key needed: they describe the API).
pub fn router() -> Router<AppState> {
    let mut router = Router::new()
        .route(
            "/docs",
            get(|| async {
                (
                    [
                        (CONTENT_TYPE, "text/html; charset=utf-8"),
                        (CACHE_CONTROL, REVALIDATE),
                        (CONTENT_SECURITY_POLICY, PAGE_POLICY),
                    ],
                    PAGE.replace("VERSION", VERSION),
                )
            }),
        )
        .route(
            "/docs/start.js",
            get(|| async {
                (
                    [
                        (CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        (CACHE_CONTROL, REVALIDATE),
                    ],
                    START,
                )
            }),
        );
    for &(name, kind, bytes) in ASSETS {
        router = router.route(
            &format!("/docs/assets/{VERSION}/{name}"),
            get(move || async move {
                ([(CONTENT_TYPE, kind), (CACHE_CONTROL, IMMUTABLE)], bytes).into_response()
            }),
        );
    }
    router
}
