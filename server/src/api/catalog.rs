//! Materials and suppliers: read by any key of the organization, written by its admins.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use mercator_store::{
    Material, MaterialFilter, MaterialPatch, NewMaterial, NewSupplier, Supplier, SupplierFilter,
    SupplierPatch,
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit;
use super::extract::{ApiJson, ApiQuery};
use super::{page, ErrorEnvelope, Page};
use crate::auth::{Admin, Auth, Viewer};
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_materials, create_material))
        .routes(routes!(get_material, update_material, delete_material))
        .routes(routes!(list_suppliers, create_supplier))
        .routes(routes!(get_supplier, update_supplier, delete_supplier))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MaterialQuery {
    pub category: Option<String>,
    /// active | inactive | discontinued
    pub status: Option<String>,
    /// A case-insensitive substring of the code or the name.
    pub q: Option<String>,
    /// 1 to --max-page-size (default 50).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
    /// code, name, category, list_price, created_at, updated_at; `-` first for descending. Default: code.
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
    let page = page(&app, q.limit, q.offset, q.sort, true)?;
    let filter = MaterialFilter {
        category: q.category,
        status: q.status,
        search: q.q,
    };
    let listed = app
        .store
        .list_materials(&caller.organization_id, &filter, &page)
        .await
        .map_err(ApiError::store("material"))?;
    Ok(Json(listed.into()))
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
    let material = app
        .store
        .create_material(&caller.organization_id, new)
        .await
        .map_err(ApiError::store("material"))?;
    let target = ("material", material.id.as_str());
    audit::record(
        &app,
        &caller,
        "material.create",
        target,
        None::<()>,
        Some(&material),
    )
    .await;
    Ok((StatusCode::CREATED, Json(material)))
}

#[utoipa::path(get, path = "/api/v1/materials/{id}", tag = "materials", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Material), (status = "4XX", body = ErrorEnvelope)))]
async fn get_material(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
) -> Result<Json<Material>, ApiError> {
    let material = app
        .store
        .material(&caller.organization_id, &id)
        .await
        .map_err(ApiError::store("material"))?;
    Ok(Json(material))
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
    let store = &app.store;
    let org = &caller.organization_id;
    let before = store
        .material(org, &id)
        .await
        .map_err(ApiError::store("material"))?;
    let material = store
        .update_material(org, &id, patch)
        .await
        .map_err(ApiError::store("material"))?;
    app.predictor.forget_material(&id);
    let target = ("material", id.as_str());
    audit::record(
        &app,
        &caller,
        "material.update",
        target,
        Some(before),
        Some(&material),
    )
    .await;
    Ok(Json(material))
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
    let store = &app.store;
    let org = &caller.organization_id;
    let before = store
        .material(org, &id)
        .await
        .map_err(ApiError::store("material"))?;
    store
        .delete_material(org, &id)
        .await
        .map_err(ApiError::store("material"))?;
    app.predictor.forget_material(&id);
    let target = ("material", id.as_str());
    audit::record(
        &app,
        &caller,
        "material.delete",
        target,
        Some(before),
        None::<()>,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SupplierQuery {
    /// ISO 3166-1 alpha-2.
    pub country: Option<String>,
    /// active | inactive
    pub status: Option<String>,
    /// A case-insensitive substring of the code or the name.
    pub q: Option<String>,
    pub limit: Option<u32>,
    pub offset: Option<u64>,
    /// code, name, country, reliability, created_at, updated_at; `-` first for descending.
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
    let page = page(&app, q.limit, q.offset, q.sort, true)?;
    let filter = SupplierFilter {
        country: q.country,
        status: q.status,
        search: q.q,
    };
    let listed = app
        .store
        .list_suppliers(&caller.organization_id, &filter, &page)
        .await
        .map_err(ApiError::store("supplier"))?;
    Ok(Json(listed.into()))
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
    let supplier = app
        .store
        .create_supplier(&caller.organization_id, new)
        .await
        .map_err(ApiError::store("supplier"))?;
    let target = ("supplier", supplier.id.as_str());
    audit::record(
        &app,
        &caller,
        "supplier.create",
        target,
        None::<()>,
        Some(&supplier),
    )
    .await;
    Ok((StatusCode::CREATED, Json(supplier)))
}

#[utoipa::path(get, path = "/api/v1/suppliers/{id}", tag = "suppliers", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Supplier), (status = "4XX", body = ErrorEnvelope)))]
async fn get_supplier(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
) -> Result<Json<Supplier>, ApiError> {
    let supplier = app
        .store
        .supplier(&caller.organization_id, &id)
        .await
        .map_err(ApiError::store("supplier"))?;
    Ok(Json(supplier))
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
    let store = &app.store;
    let org = &caller.organization_id;
    let before = store
        .supplier(org, &id)
        .await
        .map_err(ApiError::store("supplier"))?;
    let supplier = store
        .update_supplier(org, &id, patch)
        .await
        .map_err(ApiError::store("supplier"))?;
    app.predictor.forget_supplier(&id);
    let target = ("supplier", id.as_str());
    audit::record(
        &app,
        &caller,
        "supplier.update",
        target,
        Some(before),
        Some(&supplier),
    )
    .await;
    Ok(Json(supplier))
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
    let store = &app.store;
    let org = &caller.organization_id;
    let before = store
        .supplier(org, &id)
        .await
        .map_err(ApiError::store("supplier"))?;
    store
        .delete_supplier(org, &id)
        .await
        .map_err(ApiError::store("supplier"))?;
    app.predictor.forget_supplier(&id);
    let target = ("supplier", id.as_str());
    audit::record(
        &app,
        &caller,
        "supplier.delete",
        target,
        Some(before),
        None::<()>,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
