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
    let actor_type = match who.session {
        Some(_) => "user",
        None => "key",
    };
    record_as(
        app,
        &who.organization_id,
        (actor_type, &who.actor()),
        action,
        target,
        before,
        after,
    )
    .await
}

/// Records a change by an actor that is not the request's verified caller: a user signing in, a stolen
/// refresh token replayed, the server itself. `actor`: (type, id).
pub async fn record_as(
    app: &AppState,
    org: &str,
    actor: (&str, &str),
    action: &str,
    target: (&str, &str),
    before: Option<impl Serialize>,
    after: Option<impl Serialize>,
) {
    let origin = crate::limits::ORIGIN.try_with(Clone::clone).ok();
    write(app, org, actor, origin, action, target, before, after).await
}

/// Writes one event; `origin` None: not made by a request (a summary, the server itself).
#[allow(clippy::too_many_arguments)]
async fn write(
    app: &AppState,
    org: &str,
    actor: (&str, &str),
    origin: Option<crate::limits::Origin>,
    action: &str,
    target: (&str, &str),
    before: Option<impl Serialize>,
    after: Option<impl Serialize>,
) {
    let text =
        |v: Option<&axum::http::HeaderValue>| v.and_then(|v| v.to_str().ok()).map(str::to_string);
    let event = NewAuditEvent {
        actor_key_id: actor.1,
        actor_type: actor.0,
        ip: origin.as_ref().map(|o| o.ip.to_string()),
        user_agent: text(origin.as_ref().and_then(|o| o.user_agent.as_ref())),
        request_id: text(origin.as_ref().and_then(|o| o.request_id.as_ref())),
        action,
        target_type: target.0,
        target_id: target.1,
        before: before.and_then(|b| serde_json::to_value(b).ok()),
        after: after.and_then(|a| serde_json::to_value(a).ok()),
    };
    if let Err(e) = app.store.record_audit(org, event).await {
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
    /// `json` (default: a page) or `csv`: every matching event from `offset`, at most 100,000, as a CSV
    /// file (`limit` ignored).
    pub format: Option<ExportFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Json,
    Csv,
}

/// The most events one CSV export holds (page on with `offset`).
pub const MAX_EXPORT_ROWS: u32 = 100_000;

/// The organization's changes: who (a key, a user), from where (address, user agent, request id), what,
/// when, before and after (admin). `format=csv` exports them.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditListQuery),
    security(("api_key" = [])),
    responses((status = 200,
        description = "A page of events; with format=csv, a CSV file: at, id, actor_type, actor, action, target_type, target_id, ip, user_agent, request_id, before, after",
        content((Page<AuditEvent> = "application/json"), (String = "text/csv"))),
        (status = "4XX", body = ErrorEnvelope)))]
async fn list_audit(
    State(app): State<AppState>,
    caller: Auth<Admin>,
    ApiQuery(q): ApiQuery<AuditListQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    // Failed authentications not yet summarised are written first, so the log is current.
    app.failed_auth.flush(&app).await;
    let csv = q.format == Some(ExportFormat::Csv);
    let query = AuditQuery {
        action: q.action,
        target_type: q.target_type,
        target_id: q.target_id,
    };
    let page = match csv {
        false => page(&app, q.limit, q.offset, q.sort, true)?,
        true => mercator_store::ListParams {
            limit: MAX_EXPORT_ROWS,
            ..page(&app, None, q.offset, q.sort, false)?
        },
    };
    let listed = app
        .store
        .list_audit(&caller.organization_id, &query, &page)
        .await?;
    if !csv {
        return Ok(Json(Page::from(listed)).into_response());
    }
    let body = to_csv(&listed.items).map_err(|e| ApiError::Internal {
        what: "writing the audit export",
        detail: e.to_string(),
    })?;
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                axum::http::header::CONTENT_DISPOSITION,
                "attachment; filename=\"audit.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}

fn to_csv(events: &[AuditEvent]) -> Result<Vec<u8>, csv::Error> {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record([
        "at",
        "id",
        "actor_type",
        "actor",
        "action",
        "target_type",
        "target_id",
        "ip",
        "user_agent",
        "request_id",
        "before",
        "after",
    ])?;
    let json =
        |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_default();
    for e in events {
        out.write_record([
            e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .as_str(),
            &e.id,
            e.actor_type.as_deref().unwrap_or_default(),
            &e.actor_key_id,
            &e.action,
            &e.target_type,
            &e.target_id,
            e.ip.as_deref().unwrap_or_default(),
            e.user_agent.as_deref().unwrap_or_default(),
            e.request_id.as_deref().unwrap_or_default(),
            &json(&e.before),
            &json(&e.after),
        ])?;
    }
    out.into_inner().map_err(|e| e.into_error().into())
}

/// Deletes events older than `keep` every hour (on one replica of a fleet), until the process ends.
pub async fn retain(store: mercator_store::Store, keep: std::time::Duration) {
    let Ok(keep) = chrono::Duration::from_std(keep) else {
        return;
    };
    let every = std::time::Duration::from_secs(3600);
    mercator_services::fleet::each_period(store.clone(), "audit_retention", every, || async {
        match store.purge_audit_before(chrono::Utc::now() - keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "audit events past retention deleted"),
            Err(e) => tracing::warn!(error = %e, "deleting audit events past retention failed"),
        }
    })
    .await
}

/// Failed authentications, counted per (credential prefix, client address) and written to the platform
/// organization's audit log once a minute as one `auth.failed` entry each, with its count: a flood of
/// guesses is a few rows, not one per attempt.
#[derive(Default)]
pub struct Failures {
    counts: std::sync::Mutex<std::collections::HashMap<(String, std::net::IpAddr), u64>>,
}

/// Past this many (prefix, address) pairs in a minute, further failures count under `*`.
const MAX_FAILURE_KEYS: usize = 10_000;

impl Failures {
    /// Counts a failure of `presented` from `ip`: keys by their public prefix, tokens as `token`.
    pub fn note(&self, presented: &str, ip: std::net::IpAddr) {
        let prefix = if presented.starts_with("eyJ") {
            "token".to_string()
        } else {
            presented.chars().take(16).collect()
        };
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let key = if counts.len() >= MAX_FAILURE_KEYS && !counts.contains_key(&(prefix.clone(), ip))
        {
            ("*".to_string(), std::net::IpAddr::from([0, 0, 0, 0]))
        } else {
            (prefix, ip)
        };
        *counts.entry(key).or_default() += 1;
    }

    /// Writes the counts since the last time; answers how many entries.
    pub async fn flush(&self, app: &AppState) -> usize {
        let counts = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|e| e.into_inner()));
        if counts.is_empty() {
            return 0;
        }
        let platform = match app.store.list_organizations().await {
            Ok(orgs) => match orgs.into_iter().find(|o| o.platform) {
                Some(org) => org.id,
                None => return 0,
            },
            Err(e) => {
                tracing::warn!(error = %e, "failed authentications could not be recorded");
                return 0;
            }
        };
        let n = counts.len();
        for ((prefix, ip), count) in counts {
            let actor = format!("ip:{ip}");
            write(
                app,
                &platform,
                ("anonymous", &actor),
                None,
                "auth.failed",
                ("credential", &prefix),
                None::<()>,
                Some(serde_json::json!({ "count": count, "ip": ip.to_string() })),
            )
            .await;
        }
        n
    }

    /// Flushes every `every`, until the process ends.
    pub async fn flush_every(app: AppState, every: std::time::Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            app.failed_auth.flush(&app).await;
        }
    }
}
