//! Organizations (the platform owner's) and API keys (each organization's admins).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use mercator_store::{ApiKey, FieldErrors, KeyScope, KeySpec, Organization, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit;
use super::extract::ApiJson;
use super::ErrorEnvelope;
use crate::auth::{Admin, Auth, Owner};
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_organizations, create_organization))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(delete_key))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrganization {
    #[schema(pattern = r"[^\s\u0085]", max_length = 200)]
    pub name: String,
}

/// A new organization and its first admin key, whose secret is shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedOrganization {
    pub organization: Organization,
    pub api_key: CreatedKey,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    #[schema(pattern = r"[^\s\u0085]", max_length = 200)]
    pub name: String,
    pub role: Role,
    /// The scopes it may use (its role's rights narrowed to them): `predict` (predictions, analytics,
    /// batch jobs, V2 inference), `read`, `write` (catalogue, prices, alert rules), `admin` (keys,
    /// organizations, audit), `models` (the registry). Left out: every scope its role allows.
    #[serde(default)]
    #[schema(min_items = 1)]
    pub scopes: Option<Vec<KeyScope>>,
    /// When it stops working (RFC 3339 or a date): at most `--api-key-max-ttl-days` (366) away; left out,
    /// `--api-key-default-ttl-days` (90) from now.
    #[serde(default, deserialize_with = "mercator_store::opt_time")]
    #[schema(value_type = Option<String>, example = "2027-03-01T00:00:00Z")]
    pub expires_at: Option<mercator_store::Time>,
    /// Its own rate limits, replacing the server's default for keys (`--rate-limits-key`): `CLASS=RATE`
    /// pairs, comma-separated. Classes `predict`, `bulk`, `read`, `write`, `admin`, `login`, or `all` for
    /// every class together; rates `N/s`, `N/min`, `N/h`, `N/day` or `N/<count><unit>`. Empty: no limit.
    #[serde(default)]
    #[schema(example = "predict=600/min,all=20000/h", max_length = 500)]
    pub rate_limits: Option<String>,
}

/// A key with its secret: the only time the secret is shown.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// Send it as `Authorization: Bearer <key>` or `X-API-Key`. Stored only as a hash.
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct List<T> {
    pub items: Vec<T>,
    pub total: usize,
}

fn name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(ApiError::Validation {
            message: "name must be 1 to 200 characters".into(),
            details: FieldErrors::one("name", "must be 1 to 200 characters"),
        });
    }
    Ok(())
}

/// Create an organization and its first admin key (platform owner).
#[utoipa::path(post, path = "/api/v1/organizations", tag = "organizations",
    request_body = NewOrganization, security(("api_key" = [])),
    responses((status = 201, body = CreatedOrganization), (status = "4XX", body = ErrorEnvelope)))]
async fn create_organization(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    ApiJson(new): ApiJson<NewOrganization>,
) -> Result<(StatusCode, Json<CreatedOrganization>), ApiError> {
    name(&new.name)?;
    let store = &app.store;
    let organization = store.create_organization(new.name.trim(), false).await?;
    // The organization's first admin key does not expire: it is how the organization gets in.
    let (key, secret) = store
        .create_api_key(
            &organization.id,
            &KeySpec::unrestricted("admin", Role::Admin),
        )
        .await?;
    let target = ("organization", organization.id.as_str());
    audit::record(
        &app,
        &caller,
        "organization.create",
        target,
        None::<()>,
        Some(&organization),
    )
    .await;
    let api_key = CreatedKey { key, secret };
    Ok((
        StatusCode::CREATED,
        Json(CreatedOrganization {
            organization,
            api_key,
        }),
    ))
}

/// Every organization (platform owner).
#[utoipa::path(get, path = "/api/v1/organizations", tag = "organizations", security(("api_key" = [])),
    responses((status = 200, body = List<Organization>), (status = "4XX", body = ErrorEnvelope)))]
async fn list_organizations(
    State(app): State<AppState>,
    _: Auth<Owner>,
) -> Result<Json<List<Organization>>, ApiError> {
    let items = app.store.list_organizations().await?;
    Ok(Json(List {
        total: items.len(),
        items,
    }))
}

/// Create a key in the caller's organization (admin).
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "api keys", request_body = NewKey,
    security(("api_key" = [])),
    responses((status = 201, body = CreatedKey), (status = "4XX", body = ErrorEnvelope)))]
async fn create_key(
    State(app): State<AppState>,
    caller: Auth<Admin>,
    ApiJson(new): ApiJson<NewKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let request = mercator_services::identity::KeyRequest {
        name: new.name,
        role: new.role,
        scopes: new.scopes,
        expires_at: new.expires_at,
        rate_limits: new.rate_limits,
    };
    let (key, secret) = app
        .api_keys
        .create(&caller.organization_id, request)
        .await?;
    audit::record(
        &app,
        &caller,
        "api_key.create",
        ("api_key", &key.id),
        None::<()>,
        Some(&key),
    )
    .await;
    Ok((StatusCode::CREATED, Json(CreatedKey { key, secret })))
}

/// The caller's organization's keys, without secrets (admin).
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "api keys", security(("api_key" = [])),
    responses((status = 200, body = List<ApiKey>), (status = "4XX", body = ErrorEnvelope)))]
async fn list_keys(
    State(app): State<AppState>,
    caller: Auth<Admin>,
) -> Result<Json<List<ApiKey>>, ApiError> {
    // Usage not yet written is written first, so `last_used_at` is current.
    app.keys.flush_usage().await;
    let items = app.store.list_api_keys(&caller.organization_id).await?;
    Ok(Json(List {
        total: items.len(),
        items,
    }))
}

/// Revoke a key of the caller's organization (admin); it stops working at once.
#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "api keys", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = "4XX", body = ErrorEnvelope)))]
async fn delete_key(
    State(app): State<AppState>,
    caller: Auth<Admin>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let store = &app.store;
    let org = &caller.organization_id;
    let before = store
        .list_api_keys(org)
        .await?
        .into_iter()
        .find(|k| k.id == id);
    store.delete_api_key(org, &id).await?;
    app.keys.evict(&id);
    audit::record(
        &app,
        &caller,
        "api_key.delete",
        ("api_key", &id),
        before,
        None::<()>,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
