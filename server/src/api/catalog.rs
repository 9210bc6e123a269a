//! Materials and suppliers: read by any key of the organization, written by its admins. One generic for
//! both ([`mercator_services::catalog`]); a route each, for its own documentation.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use mercator_services::catalog::Cataloged;
use mercator_store::{
    Material, MaterialFilter, MaterialPatch, NewMaterial, NewSupplier, Supplier, SupplierFilter,
    SupplierPatch,
};
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit;
use super::extract::{ApiJson, ApiQuery};
use super::{page, ErrorEnvelope, Page};
use crate::auth::{Admin, Auth, Principal, Viewer};
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_materials, create_material))
        .routes(routes!(get_material, update_material, delete_material))
        .routes(routes!(list_suppliers, create_supplier))
        .routes(routes!(get_supplier, update_supplier, delete_supplier))
}

async fn list<E: Cataloged>(
    app: &AppState,
    org: &str,
    filter: E::Filter,
    limit: Option<u32>,
    offset: Option<u64>,
    sort: Option<String>,
) -> Result<Json<Page<E>>, ApiError> {
    let page = page(app, limit, offset, sort, true)?;
    let listed = app.catalog.list::<E>(org, &filter, &page).await?;
    Ok(Json(listed.into()))
}

async fn get<E: Cataloged>(app: &AppState, org: &str, id: &str) -> Result<Json<E>, ApiError> {
    let entry = app.catalog.get(org, id).await?;
    Ok(Json(entry))
}

async fn create<E: Cataloged + Serialize>(
    app: &AppState,
    caller: &Principal,
    new: E::New,
) -> Result<(StatusCode, Json<E>), ApiError> {
    let entry: E = app.catalog.create(&caller.organization_id, new).await?;
    let action = format!("{}.create", E::KIND);
    let target = (E::KIND, entry.id());
    audit::record(app, caller, &action, target, None::<()>, Some(&entry)).await;
    Ok((StatusCode::CREATED, Json(entry)))
}

async fn update<E: Cataloged + Serialize>(
    app: &AppState,
    caller: &Principal,
    id: &str,
    patch: E::Patch,
) -> Result<Json<E>, ApiError> {
    let (before, after) = app
        .catalog
        .update::<E>(&caller.organization_id, id, patch)
        .await?;
    let action = format!("{}.update", E::KIND);
    audit::record(
        app,
        caller,
        &action,
        (E::KIND, id),
        Some(before),
        Some(&after),
    )
    .await;
    Ok(Json(after))
}

async fn delete<E: Cataloged + Serialize>(
    app: &AppState,
    caller: &Principal,
    id: &str,
) -> Result<StatusCode, ApiError> {
    let before = app.catalog.delete::<E>(&caller.organization_id, id).await?;
    let action = format!("{}.delete", E::KIND);
    audit::record(
        app,
        caller,
        &action,
        (E::KIND, id),
        Some(before),
        None::<()>,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MaterialQuery {
    pub category: Option<String>,
    /// active | inactive | discontinued
    pub status: Option<String>,
    /// A case-insensitive substring of the code or the name.
    pub q: Option<String>,
    /// 1 to --max-page-size (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(maximum = 1_000_000_000)]
    pub offset: Option<u64>,
    /// code, name, category, list_price, created_at, updated_at; `-` first for descending. Default: code.
    #[param(pattern = "^-?(code|name|category|list_price|created_at|updated_at)$")]
    pub sort: Option<String>,
}

/// List the organization's materials.
#[utoipa::path(get, path = "/api/v1/materials", tag = "materials", params(MaterialQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Page<Material>), (status = "4XX", body = ErrorEnvelope)))]
async fn list_materials(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    ApiQuery(q): ApiQuery<MaterialQuery>,
) -> Result<Json<Page<Material>>, ApiError> {
    let filter = MaterialFilter {
        category: q.category,
        status: q.status,
        search: q.q,
    };
    list(
        &app,
        &caller.organization_id,
        filter,
        q.limit,
        q.offset,
        q.sort,
    )
    .await
}

/// Create a material (admin); its code is unique in the organization (409 otherwise).
#[utoipa::path(post, path = "/api/v1/materials", tag = "materials", request_body = NewMaterial,
    security(("api_key" = [])),
    responses((status = 201, body = Material), (status = "4XX", body = ErrorEnvelope)))]
async fn create_material(
    State(app): State<AppState>,
    caller: Auth<Admin>,
    ApiJson(new): ApiJson<NewMaterial>,
) -> Result<(StatusCode, Json<Material>), ApiError> {
    create::<Material>(&app, &caller, new).await
}

#[utoipa::path(get, path = "/api/v1/materials/{id}", tag = "materials", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Material), (status = "4XX", body = ErrorEnvelope)))]
async fn get_material(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
) -> Result<Json<Material>, ApiError> {
    get(&app, &caller.organization_id, &id).await
}

/// Change some fields of a material (admin).
#[utoipa::path(patch, path = "/api/v1/materials/{id}", tag = "materials", params(("id" = String, Path)),
    request_body = MaterialPatch, security(("api_key" = [])),
    responses((status = 200, body = Material), (status = "4XX", body = ErrorEnvelope)))]
async fn update_material(
    State(app): State<AppState>,
    caller: Auth<Admin>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<MaterialPatch>,
) -> Result<Json<Material>, ApiError> {
    update::<Material>(&app, &caller, &id, patch).await
}

/// Delete a material with no price observations (admin; 409 if it has some).
#[utoipa::path(delete, path = "/api/v1/materials/{id}", tag = "materials", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 204), (status = "4XX", body = ErrorEnvelope)))]
async fn delete_material(
    State(app): State<AppState>,
    caller: Auth<Admin>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete::<Material>(&app, &caller, &id).await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SupplierQuery {
    /// ISO 3166-1 alpha-2.
    pub country: Option<String>,
    /// active | inactive
    pub status: Option<String>,
    /// A case-insensitive substring of the code or the name.
    pub q: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(maximum = 1_000_000_000)]
    pub offset: Option<u64>,
    /// code, name, country, reliability, created_at, updated_at; `-` first for descending.
    #[param(pattern = "^-?(code|name|country|reliability|created_at|updated_at)$")]
    pub sort: Option<String>,
}

/// List the organization's suppliers.
#[utoipa::path(get, path = "/api/v1/suppliers", tag = "suppliers", params(SupplierQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Page<Supplier>), (status = "4XX", body = ErrorEnvelope)))]
async fn list_suppliers(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    ApiQuery(q): ApiQuery<SupplierQuery>,
) -> Result<Json<Page<Supplier>>, ApiError> {
    let filter = SupplierFilter {
        country: q.country,
        status: q.status,
        search: q.q,
    };
    list(
        &app,
        &caller.organization_id,
        filter,
        q.limit,
        q.offset,
        q.sort,
    )
    .await
}

/// Create a supplier (admin).
#[utoipa::path(post, path = "/api/v1/suppliers", tag = "suppliers", request_body = NewSupplier,
    security(("api_key" = [])),
    responses((status = 201, body = Supplier), (status = "4XX", body = ErrorEnvelope)))]
async fn create_supplier(
    State(app): State<AppState>,
    caller: Auth<Admin>,
    ApiJson(new): ApiJson<NewSupplier>,
) -> Result<(StatusCode, Json<Supplier>), ApiError> {
    create::<Supplier>(&app, &caller, new).await
}

#[utoipa::path(get, path = "/api/v1/suppliers/{id}", tag = "suppliers", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Supplier), (status = "4XX", body = ErrorEnvelope)))]
async fn get_supplier(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
) -> Result<Json<Supplier>, ApiError> {
    get(&app, &caller.organization_id, &id).await
}

/// Change some fields of a supplier (admin).
#[utoipa::path(patch, path = "/api/v1/suppliers/{id}", tag = "suppliers", params(("id" = String, Path)),
    request_body = SupplierPatch, security(("api_key" = [])),
    responses((status = 200, body = Supplier), (status = "4XX", body = ErrorEnvelope)))]
async fn update_supplier(
    State(app): State<AppState>,
    caller: Auth<Admin>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<SupplierPatch>,
) -> Result<Json<Supplier>, ApiError> {
    update::<Supplier>(&app, &caller, &id, patch).await
}

/// Delete a supplier with no price observations (admin; 409 if it has some).
#[utoipa::path(delete, path = "/api/v1/suppliers/{id}", tag = "suppliers", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 204), (status = "4XX", body = ErrorEnvelope)))]
async fn delete_supplier(
    State(app): State<AppState>,
    caller: Auth<Admin>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete::<Supplier>(&app, &caller, &id).await
}
