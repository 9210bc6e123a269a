//! The audit log: every administrative change, who made it, when, and the state before and after.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::{
    from_ms, json, new_id, now_ms, order_by, ListParams, Listed, Result, Sql, Store, Value,
};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEvent {
    pub id: String,
    /// Who acted: an API key's id, `user:<id>` for a signed-in user, `system` for the server itself.
    pub actor_key_id: String,
    /// `key`, `user` or `system` (null on rows older than this column).
    pub actor_type: Option<String>,
    /// The client's address, as `--trusted-proxy-hops` reads it.
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The request's `x-request-id`: it finds the request's log lines.
    pub request_id: Option<String>,
    /// `<target>.<verb>`: organization.create, api_key.create, api_key.delete, material.update, model.load...
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub before: Option<serde_json::Value>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub after: Option<serde_json::Value>,
    pub at: DateTime<Utc>,
}

/// An event to record.
#[derive(Debug, Clone)]
pub struct NewAuditEvent<'a> {
    pub actor_key_id: &'a str,
    pub actor_type: &'a str,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: &'a str,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

impl<'r> FromRow<'r, AnyRow> for AuditEvent {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        let state = |column: &str| -> sqlx::Result<Option<serde_json::Value>> {
            Ok(row
                .try_get::<Option<String>, _>(column)?
                .map(|text| json(&text)))
        };
        Ok(AuditEvent {
            id: row.try_get("id")?,
            actor_key_id: row.try_get("actor_key_id")?,
            actor_type: row.try_get("actor_type")?,
            ip: row.try_get("ip")?,
            user_agent: row.try_get("user_agent")?,
            request_id: row.try_get("request_id")?,
            action: row.try_get("action")?,
            target_type: row.try_get("target_type")?,
            target_id: row.try_get("target_id")?,
            before: state("before_state")?,
            after: state("after_state")?,
            at: from_ms(row.try_get("at")?),
        })
    }
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub action: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
}

const COLUMNS: &str =
    "id, actor_key_id, actor_type, ip, user_agent, request_id, action, target_type, \
     target_id, before_state, after_state, at";

impl Store {
    pub async fn record_audit(&self, org: &str, event: NewAuditEvent<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_events (id, organization_id, actor_key_id, action, target_type, target_id, \
             before_state, after_state, at, actor_type, ip, user_agent, request_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(new_id())
        .bind(org)
        .bind(event.actor_key_id)
        .bind(event.action)
        .bind(event.target_type)
        .bind(event.target_id)
        .bind(event.before.map(|v| v.to_string()))
        .bind(event.after.map(|v| v.to_string()))
        .bind(now_ms())
        .bind(event.actor_type)
        .bind(event.ip)
        .bind(event.user_agent.map(|ua| ua.chars().take(512).collect::<String>()))
        .bind(event.request_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes every organization's events recorded before `cutoff`; answers how many.
    pub async fn purge_audit_before(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM audit_events WHERE at < $1")
            .bind(cutoff.timestamp_millis())
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// The organization's events, newest first.
    pub async fn list_audit(
        &self,
        org: &str,
        query: &AuditQuery,
        page: &ListParams,
    ) -> Result<Listed<AuditEvent>> {
        let mut wher = Sql::new(" WHERE organization_id = ");
        wher.bind(Value::Text(Some(org.into())));
        for (column, value) in [
            ("action", &query.action),
            ("target_type", &query.target_type),
            ("target_id", &query.target_id),
        ] {
            if let Some(v) = value {
                wher.push(&format!(" AND {column} = "))
                    .bind(Value::Text(Some(v.clone())));
            }
        }
        let order = order_by(page.sort.as_deref(), &[("at", "at")], "at DESC, id DESC")?;
        self.list("audit_events", COLUMNS, wher, &order, page).await
    }
}
