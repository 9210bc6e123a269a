//! The OpenAPI 3 document, generated from the handlers' annotations (utoipa): `/openapi.json`, and
//! interactive docs at `/docs`. A route is registered and documented in the same `routes!` call, so the
//! two cannot drift.

use axum::response::Html;
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};

use crate::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Mercator",
        description = "Procurement pricing: materials, suppliers, price observations, predictions. \
                       The Open Inference Protocol (KServe V2) is served under /v2 as its specification \
                       describes and is not repeated here."
    ),
    modifiers(&Keys)
)]
struct ApiDoc;

/// A key as a bearer token or in `X-API-Key`.
struct Keys;

impl Modify for Keys {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "x_api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The documented routes, and `/openapi.json` and `/docs` serving their document.
pub fn router() -> Router<AppState> {
    let (router, doc) = utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(super::routes())
        .split_for_parts();
    let json = doc.to_json().expect("the OpenAPI document serializes");
    router
        .route(
            "/openapi.json",
            get(move || {
                let json = json.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        json,
                    )
                }
            }),
        )
        .route("/docs", get(|| async { Html(DOCS) }))
}

/// The whole document, for tests and tools.
pub fn document() -> Document {
    utoipa_axum::router::OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .merge(super::routes())
        .into_openapi()
}

/// Interactive docs: Scalar's API reference reading `/openapi.json` (its script comes from a CDN, so
/// the browser needs the internet; the document itself does not).
const DOCS: &str = r#"<!doctype html>
<html>
  <head>
    <title>Mercator API</title>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
  </head>
  <body>
    <script id="api-reference" data-url="/openapi.json"></script>
    <script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference@1"></script>
  </body>
</html>
"#;
