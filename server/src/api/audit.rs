//! `GET /api/v1/audit`: the organization's administrative changes, newest first; and `record`, which every
//! administrative handler calls once its change is made.

use axum::extract::State;
use axum::Json;
use mercator_store::{AuditEvent, AuditQuery, NewAuditEvent};
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiQuery;
use super::{page, ErrorEnvelope, Page};
use crate::auth::{Admin, Auth, Principal};
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit))
}

/// Records a change made by `who`. The change has happened by now; a failure to record it is logged
/// loudly rather than reported as the change failing.
pub async fn record(
    app: &AppState,
    who: &Principal,
    action: &str,
    target: (&str, &str),
    before: Option<impl Serialize>,
    after: Option<impl Serialize>,
) {
    let event = NewAuditEvent {
        actor_key_id: &who.actor(),
        action,
        target_type: target.0,
        target_id: target.1,
        before: before.and_then(|b| serde_json::to_value(b).ok()),
        after: after.and_then(|a| serde_json::to_value(a).ok()),
    };
    if let Err(e) = app.store.record_audit(&who.organization_id, event).await {
        tracing::error!(error = %e, action, target_id = target.1, "the audit log could not record a change");
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditListQuery {
    /// e.g. material.update, api_key.delete, model.load
    pub action: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(maximum = 1_000_000_000)]
    pub offset: Option<u64>,
    /// at or -at (default).
    #[param(pattern = "^-?at$")]
    pub sort: Option<String>,
}

/// The organization's administrative changes: who (key), what, when, before and after (admin).
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditListQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Page<AuditEvent>), (status = "4XX", body = ErrorEnvelope)))]
async fn list_audit(
    State(app): State<AppState>,
    caller: Auth<Admin>,
    ApiQuery(q): ApiQuery<AuditListQuery>,
) -> Result<Json<Page<AuditEvent>>, ApiError> {
    let page = page(&app, q.limit, q.offset, q.sort, true)?;
    let query = AuditQuery {
        action: q.action,
        target_type: q.target_type,
        target_id: q.target_id,
    };
    let listed = app
        .store
        .list_audit(&caller.organization_id, &query, &page)
        .await?;
    Ok(Json(listed.into()))
}
