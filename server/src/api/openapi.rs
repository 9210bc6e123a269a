//! The OpenAPI 3 document, generated from the handlers' annotations (utoipa): `/openapi.json`, and
//! interactive docs at `/docs` (`docs.rs`). A route is registered and documented in the same `routes!` call, so the
//! two cannot drift.

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
    modifiers(&Keys, &Outside)
)]
struct ApiDoc;

/// The routes served outside `/api/v1`, listed so the document names every endpoint: the Open Inference
/// Protocol's (their bodies are the KServe V2 specification's, with Triton's extensions) and the
/// operational ones. (method, path, summary, key needed)
const OUTSIDE: &[(&str, &str, &str, bool)] = &[
    (
        "get",
        "/v2",
        "V2 server metadata and extensions (viewer)",
        true,
    ),
    ("get", "/v2/health/live", "V2 liveness (viewer)", true),
    ("get", "/v2/health/ready", "V2 readiness (viewer)", true),
    (
        "get",
        "/v2/models/stats",
        "Triton statistics extension, every model (viewer)",
        true,
    ),
    (
        "get",
        "/v2/models/{model}",
        "V2 model metadata, newest version (viewer)",
        true,
    ),
    (
        "get",
        "/v2/models/{model}/versions/{version}",
        "V2 model metadata (viewer)",
        true,
    ),
    (
        "get",
        "/v2/models/{model}/ready",
        "V2 model readiness (viewer)",
        true,
    ),
    (
        "get",
        "/v2/models/{model}/versions/{version}/ready",
        "V2 model readiness (viewer)",
        true,
    ),
    (
        "get",
        "/v2/models/{model}/config",
        "Triton model configuration extension (viewer)",
        true,
    ),
    (
        "get",
        "/v2/models/{model}/versions/{version}/config",
        "Triton model configuration (viewer)",
        true,
    ),
    (
        "get",
        "/v2/models/{model}/stats",
        "Triton statistics extension (viewer)",
        true,
    ),
    (
        "get",
        "/v2/models/{model}/versions/{version}/stats",
        "Triton statistics extension (viewer)",
        true,
    ),
    (
        "post",
        "/v2/models/{model}/infer",
        "V2 inference, JSON or binary tensors (analyst)",
        true,
    ),
    (
        "post",
        "/v2/models/{model}/versions/{version}/infer",
        "V2 inference (analyst)",
        true,
    ),
    (
        "get",
        "/healthz",
        "Liveness: 200 while the process runs",
        false,
    ),
    (
        "get",
        "/readyz",
        "Readiness: 200 once every model is warm, with the store, Redis and the change feed's lag; 503 while draining or stuck behind the feed",
        false,
    ),
    ("get", "/metrics", "Prometheus metrics", false),
];

struct Outside;

impl Modify for Outside {
    fn modify(&self, doc: &mut Document) {
        use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
        use utoipa::openapi::security::SecurityRequirement;
        use utoipa::openapi::{ResponseBuilder, ResponsesBuilder};
        for (method, path, summary, key) in OUTSIDE {
            let mut operation = OperationBuilder::new()
                .summary(Some(*summary))
                .tag(if path.starts_with("/v2") { "open inference protocol (KServe V2)" } else { "operations" })
                .responses(
                    ResponsesBuilder::new()
                        .response("200", ResponseBuilder::new().description("OK"))
                        .response(
                            "4XX",
                            ResponseBuilder::new().description(
                                "An error: `{\"error\": \"<message>\", \"code\": \"<code>\"}` under /v2",
                            ),
                        ),
                );
            for (name, what) in [
                ("model", "The model's name."),
                ("version", "The version's number."),
            ] {
                if path.contains(&format!("{{{name}}}")) {
                    operation = operation.parameter(path_parameter(name, what));
                }
            }
            if *key {
                operation =
                    operation.security(SecurityRequirement::new("api_key", Vec::<String>::new()));
            } else {
                operation = operation.security(SecurityRequirement::default());
            }
            let method = if *method == "post" {
                HttpMethod::Post
            } else {
                HttpMethod::Get
            };
            let item = PathItem::new(method, operation.build());
            match doc.paths.paths.get_mut(*path) {
                Some(existing) => existing.merge_operations(item),
                None => {
                    doc.paths.paths.insert(path.to_string(), item);
                }
            }
        }
    }
}

/// A path parameter of a V2 route: a model's name (a string) or a version's number (a positive integer).
fn path_parameter(name: &str, description: &str) -> utoipa::openapi::path::Parameter {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::Required;
    let schema = if name == "version" {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Int64,
            )))
            .minimum(Some(1))
    } else {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
    };
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

/// The WebSocket routes answer only an upgrade: their handshake headers are declared, so a client (or a
/// schema-driven fuzzer) reading the document knows a plain GET is refused.
struct Upgrades;

const HANDSHAKE: &[(&str, &str, &str)] = &[
    ("Connection", "^[Uu]pgrade$", "`Upgrade`"),
    ("Upgrade", "^websocket$", "`websocket`"),
    ("Sec-WebSocket-Version", "^13$", "`13`"),
    (
        "Sec-WebSocket-Key",
        "^[A-Za-z0-9+/]{21}[AQgw]==$",
        "16 random bytes in base64 (RFC 6455)",
    ),
];

impl Modify for Upgrades {
    fn modify(&self, doc: &mut Document) {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::Required;
        for (path, item) in doc.paths.paths.iter_mut() {
            let Some(get) = item.get.as_mut().filter(|_| path.starts_with("/ws/")) else {
                continue;
            };
            let parameters = get.parameters.get_or_insert_with(Vec::new);
            for (name, pattern, what) in HANDSHAKE {
                parameters.push(
                    ParameterBuilder::new()
                        .name(*name)
                        .parameter_in(ParameterIn::Header)
                        .required(Required::True)
                        .description(Some(format!("The WebSocket handshake: {what}.")))
                        .schema(Some(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .pattern(Some(*pattern)),
                        ))
                        .build(),
                );
            }
        }
    }
}

/// The least a caller must be for each operation (`x-minimum-role`): `none` (no credential), `viewer`,
/// `analyst`, `admin`, or `owner` (an admin of the platform organization). A key or a user below it gets
/// 403 `forbidden`; the role matrix test (tests/roles.rs) checks every row against the server, and a unit
/// test that every documented operation has one.
pub const MINIMUM_ROLES: &[(&str, &str, &str)] = &[
    ("get", "/.well-known/jwks.json", "none"),
    ("get", "/api/v1/alerts", "analyst"),
    ("post", "/api/v1/alerts", "analyst"),
    ("get", "/api/v1/alerts/events", "analyst"),
    ("get", "/api/v1/alerts/events/{id}", "analyst"),
    ("post", "/api/v1/alerts/events/{id}/acknowledge", "analyst"),
    ("get", "/api/v1/alerts/events/{id}/deliveries", "analyst"),
    ("post", "/api/v1/alerts/events/{id}/resolve", "analyst"),
    ("delete", "/api/v1/alerts/{id}", "analyst"),
    ("get", "/api/v1/alerts/{id}", "analyst"),
    ("patch", "/api/v1/alerts/{id}", "analyst"),
    ("post", "/api/v1/analytics/anomalies", "analyst"),
    ("post", "/api/v1/analytics/forecast", "analyst"),
    ("post", "/api/v1/analytics/demand-forecast", "analyst"),
    ("post", "/api/v1/analytics/trends", "analyst"),
    ("get", "/api/v1/api-keys", "admin"),
    ("post", "/api/v1/api-keys", "admin"),
    ("delete", "/api/v1/api-keys/{id}", "admin"),
    ("get", "/api/v1/audit", "admin"),
    ("post", "/api/v1/auth/login", "none"),
    ("post", "/api/v1/auth/logout", "viewer"),
    ("post", "/api/v1/auth/refresh", "none"),
    ("get", "/api/v1/materials", "viewer"),
    ("post", "/api/v1/materials", "admin"),
    ("delete", "/api/v1/materials/{id}", "admin"),
    ("get", "/api/v1/materials/{id}", "viewer"),
    ("patch", "/api/v1/materials/{id}", "admin"),
    ("get", "/api/v1/models", "admin"),
    ("get", "/api/v1/models/{name}", "admin"),
    ("get", "/api/v1/models/{name}/monitoring", "owner"),
    ("post", "/api/v1/models/{name}/rollback", "owner"),
    ("put", "/api/v1/models/{name}/traffic", "owner"),
    ("post", "/api/v1/models/{name}/versions", "owner"),
    (
        "delete",
        "/api/v1/models/{name}/versions/{version}",
        "owner",
    ),
    ("get", "/api/v1/models/{name}/versions/{version}", "admin"),
    (
        "get",
        "/api/v1/models/{name}/versions/{version}/monitoring",
        "owner",
    ),
    (
        "post",
        "/api/v1/models/{name}/versions/{version}/activate",
        "owner",
    ),
    (
        "post",
        "/api/v1/models/{name}/versions/{version}/load",
        "owner",
    ),
    (
        "post",
        "/api/v1/models/{name}/versions/{version}/unload",
        "owner",
    ),
    ("get", "/api/v1/organizations", "owner"),
    ("post", "/api/v1/organizations", "owner"),
    ("get", "/api/v1/predictions/batch", "viewer"),
    ("post", "/api/v1/predictions/batch", "analyst"),
    ("delete", "/api/v1/predictions/batch/{id}", "analyst"),
    ("get", "/api/v1/predictions/batch/{id}", "viewer"),
    ("post", "/api/v1/predictions/batch/{id}/cancel", "analyst"),
    ("get", "/api/v1/predictions/batch/{id}/errors", "viewer"),
    ("get", "/api/v1/predictions/batch/{id}/results", "viewer"),
    ("post", "/api/v1/predictions/price", "analyst"),
    ("get", "/api/v1/prices", "viewer"),
    ("get", "/api/v1/rfqs", "viewer"),
    ("post", "/api/v1/rfqs", "analyst"),
    ("get", "/api/v1/rfqs/{id}", "viewer"),
    ("patch", "/api/v1/rfqs/{id}", "analyst"),
    ("delete", "/api/v1/rfqs/{id}", "analyst"),
    ("post", "/api/v1/rfqs/{id}/open", "analyst"),
    ("post", "/api/v1/rfqs/{id}/close", "analyst"),
    ("post", "/api/v1/rfqs/{id}/reopen", "analyst"),
    ("post", "/api/v1/rfqs/{id}/cancel", "analyst"),
    ("post", "/api/v1/rfqs/{id}/award", "analyst"),
    ("get", "/api/v1/rfqs/{id}/quotes", "viewer"),
    ("post", "/api/v1/rfqs/{id}/quotes", "analyst"),
    ("get", "/api/v1/rfqs/{id}/quotes/{quote_id}", "viewer"),
    ("get", "/api/v1/rfqs/{id}/comparison", "viewer"),
    ("get", "/api/v1/benchmarks/materials/{id}", "viewer"),
    ("post", "/api/v1/inventory/policy", "analyst"),
    ("get", "/api/v1/orders", "viewer"),
    ("post", "/api/v1/orders", "analyst"),
    ("get", "/api/v1/orders/{id}", "viewer"),
    ("post", "/api/v1/orders/{id}/cancel", "analyst"),
    ("get", "/api/v1/orders/{id}/deliveries", "viewer"),
    ("post", "/api/v1/orders/{id}/deliveries", "analyst"),
    ("post", "/api/v1/orders/bulk", "analyst"),
    ("get", "/api/v1/suppliers/{id}/risk", "viewer"),
    ("post", "/api/v1/deliveries/bulk", "analyst"),
    ("post", "/api/v1/rfqs/{id}/orders", "analyst"),
    ("get", "/api/v1/suppliers/{id}/scorecard", "viewer"),
    ("post", "/api/v1/prices", "analyst"),
    ("post", "/api/v1/prices/bulk", "analyst"),
    ("delete", "/api/v1/prices/{id}", "analyst"),
    ("get", "/api/v1/prices/{id}", "viewer"),
    ("patch", "/api/v1/prices/{id}", "analyst"),
    ("get", "/api/v1/suppliers", "viewer"),
    ("post", "/api/v1/suppliers", "admin"),
    ("delete", "/api/v1/suppliers/{id}", "admin"),
    ("get", "/api/v1/suppliers/{id}", "viewer"),
    ("patch", "/api/v1/suppliers/{id}", "admin"),
    ("get", "/api/v1/users", "admin"),
    ("post", "/api/v1/users", "admin"),
    ("get", "/api/v1/users/me", "viewer"),
    ("delete", "/api/v1/users/{id}", "admin"),
    ("get", "/api/v1/users/{id}", "admin"),
    ("patch", "/api/v1/users/{id}", "admin"),
    ("get", "/healthz", "none"),
    ("get", "/metrics", "none"),
    ("get", "/readyz", "none"),
    ("get", "/v2", "viewer"),
    ("get", "/v2/health/live", "viewer"),
    ("get", "/v2/health/ready", "viewer"),
    ("get", "/v2/models/stats", "viewer"),
    ("get", "/v2/models/{model}", "viewer"),
    ("get", "/v2/models/{model}/config", "viewer"),
    ("post", "/v2/models/{model}/infer", "analyst"),
    ("get", "/v2/models/{model}/ready", "viewer"),
    ("get", "/v2/models/{model}/stats", "viewer"),
    ("get", "/v2/models/{model}/versions/{version}", "viewer"),
    (
        "get",
        "/v2/models/{model}/versions/{version}/config",
        "viewer",
    ),
    (
        "post",
        "/v2/models/{model}/versions/{version}/infer",
        "analyst",
    ),
    (
        "get",
        "/v2/models/{model}/versions/{version}/ready",
        "viewer",
    ),
    (
        "get",
        "/v2/models/{model}/versions/{version}/stats",
        "viewer",
    ),
    ("get", "/ws/notifications", "viewer"),
    ("get", "/ws/predictions/{batch_id}", "viewer"),
    ("get", "/ws/prices", "viewer"),
];

struct Roles;

impl Modify for Roles {
    fn modify(&self, doc: &mut Document) {
        each_operation(doc, |method, path, operation| {
            if let Some((_, _, role)) = MINIMUM_ROLES
                .iter()
                .find(|(m, p, _)| *m == method.as_str().to_lowercase() && *p == path)
            {
                extend(operation, "x-minimum-role", role);
            }
        });
    }
}

/// Every operation of the document, with its method and path.
fn each_operation(
    doc: &mut Document,
    mut f: impl FnMut(&axum::http::Method, &str, &mut utoipa::openapi::path::Operation),
) {
    use axum::http::Method;
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, operation) in [
            (Method::GET, item.get.as_mut()),
            (Method::POST, item.post.as_mut()),
            (Method::PUT, item.put.as_mut()),
            (Method::PATCH, item.patch.as_mut()),
            (Method::DELETE, item.delete.as_mut()),
        ] {
            if let Some(operation) = operation {
                f(&method, path, operation);
            }
        }
    }
}

/// Adds an `x-` extension to an operation.
fn extend(operation: &mut utoipa::openapi::path::Operation, name: &str, value: &str) {
    use utoipa::openapi::extensions::ExtensionsBuilder;
    let extensions = operation.extensions.get_or_insert_with(Default::default);
    extensions.merge(ExtensionsBuilder::new().add(name, value).build());
}

/// Every counted route's class (`x-rate-limit-class`) and its 429, with the headers every counted answer
/// carries.
struct Limits;

impl Modify for Limits {
    fn modify(&self, doc: &mut Document) {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::ResponseBuilder;
        let header = |what: &str| {
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some(what))
                .build()
        };
        let refused = ResponseBuilder::new()
            .description(
                "A rate limit reached (`rate_limited`): wait `Retry-After` seconds. Limits count per API key \
                 (its own `rate_limits`, else the server's default for keys), per signed-in user, or, for a \
                 key or token that is not valid, per client address, by the route's class.",
            )
            .header("Retry-After", header("Seconds until the request would be admitted."))
            .header("RateLimit", header("`\"<rule>\";r=<remaining>;t=<seconds until the quota is back>`, per rule."))
            .header("RateLimit-Policy", header("`\"<rule>\";q=<quota>;w=<window seconds>`, per rule."))
            .build();
        each_operation(doc, |method, path, operation| {
            let Some(class) = crate::limits::class_of(method, path) else {
                return;
            };
            operation
                .responses
                .responses
                .entry("429".into())
                .or_insert_with(|| refused.clone().into());
            extend(operation, "x-rate-limit-class", class.as_str());
        });
    }
}

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

/// The documented routes, `/openapi.json` serving their document, and `/docs` showing it.
pub fn router() -> Router<AppState> {
    let (router, mut doc) = utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(super::routes())
        .split_for_parts();
    // After the routes are merged: they read them.
    Upgrades.modify(&mut doc);
    Limits.modify(&mut doc);
    Roles.modify(&mut doc);
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
        .merge(super::docs::router())
}

/// The whole document, for tests and tools.
pub fn document() -> Document {
    let mut doc = utoipa_axum::router::OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .merge(super::routes())
        .into_openapi();
    Upgrades.modify(&mut doc);
    Limits.modify(&mut doc);
    Roles.modify(&mut doc);
    doc
}

#[cfg(test)]
mod tests {
    /// Every documented operation states its minimum role, and every stated role is an operation.
    #[test]
    fn every_operation_states_its_minimum_role() {
        let doc = super::document();
        let mut operations = Vec::new();
        for (path, item) in &doc.paths.paths {
            for (method, present) in [
                ("get", item.get.is_some()),
                ("post", item.post.is_some()),
                ("put", item.put.is_some()),
                ("patch", item.patch.is_some()),
                ("delete", item.delete.is_some()),
            ] {
                if present {
                    operations.push((method.to_string(), path.clone()));
                }
            }
        }
        for (method, path) in &operations {
            assert!(
                super::MINIMUM_ROLES
                    .iter()
                    .any(|(m, p, _)| m == method && p == path),
                "{method} {path} has no row in MINIMUM_ROLES"
            );
        }
        for (method, path, role) in super::MINIMUM_ROLES {
            assert!(
                operations.iter().any(|(m, p)| m == method && p == path),
                "{method} {path} is in MINIMUM_ROLES but not documented"
            );
            assert!(
                ["none", "viewer", "analyst", "admin", "owner"].contains(role),
                "{role}"
            );
        }
    }
}
