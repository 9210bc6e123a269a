//! Price alerting: rules (a scope, a condition, a cooldown, channels), the events they open, and the cooldown
//! record that lets one event open per rule and subject within it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::{
    from_ms, json, new_id, now_ms, FieldErrors, ListParams, Listed, Result, Severity, Sql, Store,
    StoreError, Value,
};

/// What a rule watches: one material, a category, a supplier, or (empty) everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub material_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supplier_id: Option<String>,
}

impl Scope {
    /// (kind, value) as stored.
    fn columns(&self) -> (&'static str, Option<String>) {
        match (&self.material_id, &self.category, &self.supplier_id) {
            (Some(m), _, _) => ("material", Some(m.clone())),
            (_, Some(c), _) => ("category", Some(c.clone())),
            (_, _, Some(s)) => ("supplier", Some(s.clone())),
            _ => ("all", None),
        }
    }

    fn from_columns(kind: &str, value: Option<String>) -> Scope {
        match kind {
            "material" => Scope {
                material_id: value,
                ..Scope::default()
            },
            "category" => Scope {
                category: value,
                ..Scope::default()
            },
            "supplier" => Scope {
                supplier_id: value,
                ..Scope::default()
            },
            _ => Scope::default(),
        }
    }

    fn check(&self, e: &mut FieldErrors) {
        let named = [&self.material_id, &self.category, &self.supplier_id]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if named > 1 {
            e.add(
                "scope",
                "name one of material_id, category or supplier_id (or none, for everything)",
            );
        }
        if let Some(c) = &self.category {
            e.text("scope.category", c, 64);
        }
    }
}

/// When a rule breaches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// An ingested price above `threshold`.
    PriceAbove { threshold: f64 },
    /// An ingested price below `threshold`.
    PriceBelow { threshold: f64 },
    /// An ingested price more than `threshold` percent away (either way) from the material's mean price over
    /// the `window_days` (1 to 90) before its day.
    PctChange { threshold: f64, window_days: u32 },
    /// An ingested price the anomaly model flags at `level` (low, medium, high) or above.
    Anomaly { level: Severity },
    /// The material's forecast `horizon_days` ahead differs from today's forecast by more than `threshold`
    /// percent; checked on a schedule.
    ForecastChange { threshold: f64, horizon_days: u32 },
    /// An ingested quote (with a quantity) above the upper bound of the price model's 80% interval for it by
    /// more than `threshold` percent.
    QuoteAbovePrediction { threshold: f64 },
}

impl Condition {
    fn check(&self, e: &mut FieldErrors) {
        let positive = |e: &mut FieldErrors, v: f64| {
            if !(v.is_finite() && v > 0.0) {
                e.add("condition.threshold", "must be a positive number");
            }
        };
        match self {
            Condition::PriceAbove { threshold } | Condition::PriceBelow { threshold } => {
                positive(e, *threshold)
            }
            Condition::PctChange {
                threshold,
                window_days,
            } => {
                positive(e, *threshold);
                if !(1..=90).contains(window_days) {
                    e.add("condition.window_days", "must be 1 to 90");
                }
            }
            Condition::Anomaly { .. } => {}
            Condition::ForecastChange {
                threshold,
                horizon_days,
            } => {
                positive(e, *threshold);
                if !(1..=366).contains(horizon_days) {
                    e.add("condition.horizon_days", "must be 1 to 366");
                }
            }
            Condition::QuoteAbovePrediction { threshold } => {
                if !(threshold.is_finite() && *threshold >= 0.0) {
                    e.add(
                        "condition.threshold",
                        "must be a number of percent, 0 or more",
                    );
                }
            }
        }
    }
}

/// Where an event is announced: the organization's `/ws/notifications`, or a webhook signed with `secret`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Channel {
    Websocket,
    Webhook(Webhook),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// http or https.
    pub url: String,
    /// Signs every delivery (HMAC-SHA256); never shown again after it is set.
    #[serde(skip_serializing)]
    pub secret: String,
}

impl Channel {
    fn check(&self, e: &mut FieldErrors) {
        if let Channel::Webhook(w) = self {
            match url::Url::parse(&w.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                    if !u.username().is_empty() || u.password().is_some() {
                        e.add("channels.webhook.url", "must not carry credentials");
                    }
                }
                Ok(_) => e.add(
                    "channels.webhook.url",
                    "must be an http or https URL with a host",
                ),
                Err(err) => e.add("channels.webhook.url", format!("is not a URL: {err}")),
            }
            if w.secret.len() < 16 || w.secret.len() > 256 {
                e.add("channels.webhook.secret", "must be 16 to 256 characters");
            }
        }
    }

    /// As stored: the secret included.
    fn stored(&self) -> serde_json::Value {
        match self {
            Channel::Websocket => serde_json::json!("websocket"),
            Channel::Webhook(w) => {
                serde_json::json!({"webhook": {"url": w.url, "secret": w.secret}})
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertRule {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub condition: Condition,
    /// The severity of the events it opens (an anomaly rule's events take the observation's).
    pub severity: Severity,
    /// After an event opens for a subject, further breaches of that subject fold into it for this long.
    pub cooldown_seconds: u64,
    pub enabled: bool,
    pub channels: Vec<Channel>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A rule as stored, with its organization (for the server's index of every rule).
#[derive(Debug, Clone)]
pub struct OwnedRule {
    pub organization_id: String,
    pub rule: AlertRule,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewAlertRule {
    pub name: String,
    /// Default: everything.
    #[serde(default)]
    pub scope: Scope,
    pub condition: Condition,
    /// Default: medium.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// Default: 3600.
    #[serde(default)]
    pub cooldown_seconds: Option<u64>,
    /// Default: true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Default: ["websocket"].
    #[serde(default)]
    pub channels: Option<Vec<Channel>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AlertRulePatch {
    pub name: Option<String>,
    pub scope: Option<Scope>,
    pub condition: Option<Condition>,
    pub severity: Option<Severity>,
    pub cooldown_seconds: Option<u64>,
    pub enabled: Option<bool>,
    pub channels: Option<Vec<Channel>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    Open,
    Acknowledged,
    Resolved,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Open => "open",
            EventStatus::Acknowledged => "acknowledged",
            EventStatus::Resolved => "resolved",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertEvent {
    pub id: String,
    pub rule_id: String,
    pub material_id: Option<String>,
    pub supplier_id: Option<String>,
    /// The observation that opened it; none for a forecast rule.
    pub price_id: Option<String>,
    /// The value compared (a price, a percent, a score).
    pub value: f64,
    pub threshold: f64,
    pub message: String,
    pub severity: Severity,
    pub status: EventStatus,
    /// Breaches folded in: the one that opened it and those inside the cooldown after.
    pub breach_count: u64,
    pub last_value: f64,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// A breach to record.
#[derive(Debug, Clone)]
pub struct Breach {
    pub rule_id: String,
    pub material_id: Option<String>,
    pub supplier_id: Option<String>,
    pub price_id: Option<String>,
    pub value: f64,
    pub threshold: f64,
    pub message: String,
    pub severity: Severity,
    /// Further breaches of the same rule and subject in the same batch, folded in.
    pub count: u64,
}

impl Breach {
    fn subject(&self) -> String {
        format!(
            "{}|{}",
            self.material_id.as_deref().unwrap_or(""),
            self.supplier_id.as_deref().unwrap_or("")
        )
    }
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub status: Option<EventStatus>,
    pub rule_id: Option<String>,
    pub material_id: Option<String>,
    pub supplier_id: Option<String>,
    /// Opened at or after.
    pub from: Option<DateTime<Utc>>,
    /// Opened before.
    pub to: Option<DateTime<Utc>>,
}

const RULE_COLUMNS: &str =
    "id, organization_id, name, scope_kind, scope_value, condition, channels, \
                            severity, cooldown_seconds, enabled, created_at, updated_at";
const EVENT_COLUMNS: &str =
    "id, rule_id, material_id, supplier_id, price_id, value, threshold, message, \
                             severity, status, breach_count, last_value, opened_at, updated_at, \
                             acknowledged_at, resolved_at";

fn decode<T: for<'de> Deserialize<'de>>(text: &str, what: &str) -> sqlx::Result<T> {
    serde_json::from_value(json(text))
        .map_err(|e| sqlx::Error::Decode(format!("stored {what}: {e}").into()))
}

fn severity(text: &str) -> sqlx::Result<Severity> {
    Severity::parse(text)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown severity {text}").into()))
}

impl<'r> FromRow<'r, AnyRow> for OwnedRule {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        let kind: String = row.try_get("scope_kind")?;
        Ok(OwnedRule {
            organization_id: row.try_get("organization_id")?,
            rule: AlertRule {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                scope: Scope::from_columns(&kind, row.try_get("scope_value")?),
                condition: decode(&row.try_get::<String, _>("condition")?, "condition")?,
                channels: decode(&row.try_get::<String, _>("channels")?, "channels")?,
                severity: severity(&row.try_get::<String, _>("severity")?)?,
                cooldown_seconds: row.try_get::<i64, _>("cooldown_seconds")? as u64,
                enabled: row.try_get::<i64, _>("enabled")? != 0,
                created_at: from_ms(row.try_get("created_at")?),
                updated_at: from_ms(row.try_get("updated_at")?),
            },
        })
    }
}

impl<'r> FromRow<'r, AnyRow> for AlertEvent {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        let status: String = row.try_get("status")?;
        Ok(AlertEvent {
            id: row.try_get("id")?,
            rule_id: row.try_get("rule_id")?,
            material_id: row.try_get("material_id")?,
            supplier_id: row.try_get("supplier_id")?,
            price_id: row.try_get("price_id")?,
            value: row.try_get("value")?,
            threshold: row.try_get("threshold")?,
            message: row.try_get("message")?,
            severity: severity(&row.try_get::<String, _>("severity")?)?,
            status: match status.as_str() {
                "open" => EventStatus::Open,
                "acknowledged" => EventStatus::Acknowledged,
                "resolved" => EventStatus::Resolved,
                s => return Err(sqlx::Error::Decode(format!("unknown status {s}").into())),
            },
            breach_count: row.try_get::<i64, _>("breach_count")? as u64,
            last_value: row.try_get("last_value")?,
            opened_at: from_ms(row.try_get("opened_at")?),
            updated_at: from_ms(row.try_get("updated_at")?),
            acknowledged_at: row
                .try_get::<Option<i64>, _>("acknowledged_at")?
                .map(from_ms),
            resolved_at: row.try_get::<Option<i64>, _>("resolved_at")?.map(from_ms),
        })
    }
}

/// Rows of the rule as stored (condition and channels as JSON).
struct RuleValues {
    scope_kind: &'static str,
    scope_value: Option<String>,
    condition: String,
    channels: String,
}

fn values(rule: &AlertRule) -> RuleValues {
    let (scope_kind, scope_value) = rule.scope.columns();
    RuleValues {
        scope_kind,
        scope_value,
        condition: serde_json::to_string(&rule.condition).unwrap_or_default(),
        channels: serde_json::Value::Array(rule.channels.iter().map(Channel::stored).collect())
            .to_string(),
    }
}

impl Store {
    /// The rule's values and references: material and supplier scopes must be the organization's.
    async fn check_rule(&self, org: &str, rule: &AlertRule) -> Result<()> {
        let mut e = FieldErrors::default();
        e.text("name", &rule.name, 200);
        rule.scope.check(&mut e);
        rule.condition.check(&mut e);
        for c in &rule.channels {
            c.check(&mut e);
        }
        if let Condition::ForecastChange { .. } = rule.condition {
            if rule.scope.supplier_id.is_some() {
                e.add(
                    "scope",
                    "a forecast rule watches materials: scope it to a material, a category or all",
                );
            }
        }
        e.into_result()?;
        for (table, field, id) in [
            ("materials", "scope.material_id", &rule.scope.material_id),
            ("suppliers", "scope.supplier_id", &rule.scope.supplier_id),
        ] {
            if let Some(id) = id {
                let found: Option<String> = sqlx::query_scalar(&format!(
                    "SELECT id FROM {table} WHERE organization_id = $1 AND id = $2"
                ))
                .bind(org)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                if found.is_none() {
                    return Err(StoreError::Invalid(FieldErrors::one(
                        field,
                        format!("no such {} in the organization", &table[..table.len() - 1]),
                    )));
                }
            }
        }
        Ok(())
    }

    pub async fn create_alert_rule(&self, org: &str, new: NewAlertRule) -> Result<AlertRule> {
        let now = from_ms(now_ms());
        let rule = AlertRule {
            id: new_id(),
            name: new.name,
            scope: new.scope,
            condition: new.condition,
            severity: new.severity.unwrap_or(Severity::Medium),
            cooldown_seconds: new.cooldown_seconds.unwrap_or(3600),
            enabled: new.enabled.unwrap_or(true),
            channels: new.channels.unwrap_or_else(|| vec![Channel::Websocket]),
            created_at: now,
            updated_at: now,
        };
        self.check_rule(org, &rule).await?;
        let v = values(&rule);
        sqlx::query(&format!(
            "INSERT INTO alert_rules ({RULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(&rule.id)
        .bind(org)
        .bind(&rule.name)
        .bind(v.scope_kind)
        .bind(v.scope_value)
        .bind(v.condition)
        .bind(v.channels)
        .bind(rule.severity.as_str())
        .bind(rule.cooldown_seconds.min(i64::MAX as u64) as i64)
        .bind(rule.enabled as i64)
        .bind(now.timestamp_millis())
        .bind(now.timestamp_millis())
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_write(e, "an alert rule of this name exists"))?;
        Ok(rule)
    }

    pub async fn alert_rule(&self, org: &str, id: &str) -> Result<AlertRule> {
        let owned: OwnedRule = sqlx::query_as(&format!(
            "SELECT {RULE_COLUMNS} FROM alert_rules WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        Ok(owned.rule)
    }

    pub async fn alert_rules(&self, org: &str, page: &ListParams) -> Result<Listed<AlertRule>> {
        let mut wher = Sql::new(" WHERE organization_id = ");
        wher.bind(Value::Text(Some(org.into())));
        let listed: Listed<OwnedRule> = self
            .list(
                "alert_rules",
                RULE_COLUMNS,
                wher,
                " ORDER BY created_at, id",
                page,
            )
            .await?;
        Ok(Listed {
            items: listed.items.into_iter().map(|o| o.rule).collect(),
            has_more: listed.has_more,
            total: listed.total,
            limit: listed.limit,
            offset: listed.offset,
        })
    }

    /// Every organization's rules (how the server builds its index at start).
    pub async fn all_alert_rules(&self) -> Result<Vec<OwnedRule>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {RULE_COLUMNS} FROM alert_rules ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn update_alert_rule(
        &self,
        org: &str,
        id: &str,
        patch: AlertRulePatch,
    ) -> Result<AlertRule> {
        let mut rule = self.alert_rule(org, id).await?;
        if let Some(v) = patch.name {
            rule.name = v;
        }
        if let Some(v) = patch.scope {
            rule.scope = v;
        }
        if let Some(v) = patch.condition {
            rule.condition = v;
        }
        if let Some(v) = patch.severity {
            rule.severity = v;
        }
        if let Some(v) = patch.cooldown_seconds {
            rule.cooldown_seconds = v;
        }
        if let Some(v) = patch.enabled {
            rule.enabled = v;
        }
        if let Some(v) = patch.channels {
            rule.channels = v;
        }
        self.check_rule(org, &rule).await?;
        let v = values(&rule);
        self.update(
            "alert_rules",
            org,
            id,
            vec![
                ("name", Value::Text(Some(rule.name.clone()))),
                ("scope_kind", Value::Text(Some(v.scope_kind.into()))),
                ("scope_value", Value::Text(v.scope_value)),
                ("condition", Value::Text(Some(v.condition))),
                ("channels", Value::Text(Some(v.channels))),
                ("severity", Value::Text(Some(rule.severity.as_str().into()))),
                (
                    "cooldown_seconds",
                    Value::Int(rule.cooldown_seconds.min(i64::MAX as u64) as i64),
                ),
                ("enabled", Value::Int(rule.enabled as i64)),
            ],
            "an alert rule of this name exists",
        )
        .await?;
        self.alert_rule(org, id).await
    }

    pub async fn delete_alert_rule(&self, org: &str, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Children first: SQLite enforces the foreign keys but cascades only with its pragma on.
        sqlx::query("DELETE FROM alert_subjects WHERE rule_id IN (SELECT id FROM alert_rules WHERE organization_id = $1 AND id = $2)")
            .bind(org)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM alert_events WHERE organization_id = $1 AND rule_id = $2")
            .bind(org)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM alert_rules WHERE organization_id = $1 AND id = $2")
            .bind(org)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a breach: opens an event when the rule's last event for this subject opened at least
    /// `cooldown_seconds` ago (or never), else folds the breach into that event. Returns the event opened, if
    /// one was. The decision is one conditional upsert, so replicas racing on one subject open one event.
    pub async fn record_breach(
        &self,
        org: &str,
        breach: &Breach,
        cooldown_seconds: u64,
    ) -> Result<Option<AlertEvent>> {
        let now = now_ms();
        let cutoff =
            now.saturating_sub((cooldown_seconds.min(i64::MAX as u64 / 1000) * 1000) as i64);
        let id = new_id();
        let subject = breach.subject();
        let mut tx = self.pool.begin().await?;
        let won: Option<String> = sqlx::query_scalar(
            "INSERT INTO alert_subjects (rule_id, subject, event_id, opened_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (rule_id, subject) DO UPDATE SET event_id = excluded.event_id, opened_at = excluded.opened_at \
             WHERE alert_subjects.opened_at <= $5 RETURNING event_id",
        )
        .bind(&breach.rule_id)
        .bind(&subject)
        .bind(&id)
        .bind(now)
        .bind(cutoff)
        .fetch_optional(&mut *tx)
        .await?;
        if won.is_none() {
            // Inside the cooldown: the breach counts on the event that opened it.
            sqlx::query(
                "UPDATE alert_events SET breach_count = breach_count + $1, last_value = $2, updated_at = $3 \
                 WHERE id = (SELECT event_id FROM alert_subjects WHERE rule_id = $4 AND subject = $5)",
            )
            .bind(breach.count as i64)
            .bind(breach.value)
            .bind(now)
            .bind(&breach.rule_id)
            .bind(&subject)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(None);
        }
        sqlx::query(&format!(
            "INSERT INTO alert_events ({EVENT_COLUMNS}, organization_id, subject) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'open', $10, $11, $12, $12, NULL, NULL, $13, $14)"
        ))
        .bind(&id)
        .bind(&breach.rule_id)
        .bind(&breach.material_id)
        .bind(&breach.supplier_id)
        .bind(&breach.price_id)
        .bind(breach.value)
        .bind(breach.threshold)
        .bind(&breach.message)
        .bind(breach.severity.as_str())
        .bind(breach.count as i64)
        .bind(breach.value)
        .bind(now)
        .bind(org)
        .bind(&subject)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.alert_event(org, &id).await.map(Some)
    }

    pub async fn alert_event(&self, org: &str, id: &str) -> Result<AlertEvent> {
        sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM alert_events WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)
    }

    /// Events newest first, by status, rule, material, supplier and time opened.
    pub async fn alert_events(
        &self,
        org: &str,
        query: &EventQuery,
        page: &ListParams,
    ) -> Result<Listed<AlertEvent>> {
        let mut wher = Sql::new(" WHERE organization_id = ");
        wher.bind(Value::Text(Some(org.into())));
        for (column, value) in [
            ("status", query.status.map(|s| s.as_str().to_string())),
            ("rule_id", query.rule_id.clone()),
            ("material_id", query.material_id.clone()),
            ("supplier_id", query.supplier_id.clone()),
        ] {
            if let Some(v) = value {
                wher.push(&format!(" AND {column} = "))
                    .bind(Value::Text(Some(v)));
            }
        }
        if let Some(t) = query.from {
            wher.push(" AND opened_at >= ")
                .bind(Value::Int(t.timestamp_millis()));
        }
        if let Some(t) = query.to {
            wher.push(" AND opened_at < ")
                .bind(Value::Int(t.timestamp_millis()));
        }
        self.list(
            "alert_events",
            EVENT_COLUMNS,
            wher,
            " ORDER BY opened_at DESC, id DESC",
            page,
        )
        .await
    }

    /// Acknowledges or resolves an event; a resolved event is final (409), and acknowledging an acknowledged
    /// one is a no-op.
    pub async fn set_alert_event_status(
        &self,
        org: &str,
        id: &str,
        status: EventStatus,
    ) -> Result<AlertEvent> {
        let now = now_ms();
        let column = match status {
            EventStatus::Acknowledged => "acknowledged_at",
            EventStatus::Resolved => "resolved_at",
            EventStatus::Open => {
                return Err(StoreError::Conflict("an event cannot be reopened".into()))
            }
        };
        let done = sqlx::query(&format!(
            "UPDATE alert_events SET status = $1, {column} = $2, updated_at = $2 \
             WHERE organization_id = $3 AND id = $4 AND status <> 'resolved'"
        ))
        .bind(status.as_str())
        .bind(now)
        .bind(org)
        .bind(id)
        .execute(&self.pool)
        .await?;
        let event = self.alert_event(org, id).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "the event was resolved at {}",
                event.resolved_at.unwrap_or_default().to_rfc3339()
            )));
        }
        Ok(event)
    }
}

/// A webhook delivery of an event, as the delivery log shows it (never the secret or the body).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Delivery {
    /// Also the `webhook-id` header: the same on every attempt, so a receiver can drop a duplicate.
    pub id: String,
    pub event_id: String,
    pub url: String,
    /// pending (waiting for its next attempt), delivered, failed (its retries ran out).
    pub status: String,
    pub attempts: u64,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The receiver's last HTTP status; none when it could not be reached.
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A delivery claimed for an attempt.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: String,
    pub url: String,
    pub secret: String,
    pub body: String,
    /// This attempt's number, from 1.
    pub attempt: u64,
}

const DELIVERY_COLUMNS: &str = "id, event_id, url, status, attempts, next_attempt_at, \
                                last_status_code, last_error, created_at, delivered_at";

impl<'r> FromRow<'r, AnyRow> for Delivery {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        let status: String = row.try_get("status")?;
        Ok(Delivery {
            id: row.try_get("id")?,
            event_id: row.try_get("event_id")?,
            url: row.try_get("url")?,
            next_attempt_at: (status == "pending")
                .then(|| row.try_get("next_attempt_at").map(from_ms))
                .transpose()?,
            status,
            attempts: row.try_get::<i64, _>("attempts")? as u64,
            last_status_code: row
                .try_get::<Option<i64>, _>("last_status_code")?
                .map(|c| c as u16),
            last_error: row.try_get("last_error")?,
            created_at: from_ms(row.try_get("created_at")?),
            delivered_at: row.try_get::<Option<i64>, _>("delivered_at")?.map(from_ms),
        })
    }
}

impl Store {
    /// Queues an event's body for a webhook, due now.
    pub async fn enqueue_delivery(
        &self,
        org: &str,
        event_id: &str,
        webhook: &Webhook,
        body: &str,
    ) -> Result<String> {
        let (id, now) = (format!("msg_{}", new_id()), now_ms());
        sqlx::query(
            "INSERT INTO alert_deliveries (id, organization_id, event_id, url, secret, body, status, attempts, \
             next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7, $7)",
        )
        .bind(&id)
        .bind(org)
        .bind(event_id)
        .bind(&webhook.url)
        .bind(&webhook.secret)
        .bind(body)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// Claims up to `limit` deliveries due now for an attempt: each is counted and put out of reach for
    /// `lease_ms` (so a dispatcher that dies mid-attempt leaves it to be retried, and two dispatchers never
    /// send it at once).
    pub async fn claim_deliveries(&self, limit: usize, lease_ms: i64) -> Result<Vec<DueDelivery>> {
        let now = now_ms();
        let rows = sqlx::query(
            "UPDATE alert_deliveries SET attempts = attempts + 1, next_attempt_at = $1, updated_at = $2 \
             WHERE id IN (SELECT id FROM alert_deliveries WHERE status = 'pending' AND next_attempt_at <= $2 \
             ORDER BY next_attempt_at LIMIT $3) AND status = 'pending' AND next_attempt_at <= $2 \
             RETURNING id, url, secret, body, attempts",
        )
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DueDelivery {
                    id: row.try_get("id")?,
                    url: row.try_get("url")?,
                    secret: row.try_get("secret")?,
                    body: row.try_get("body")?,
                    attempt: row.try_get::<i64, _>("attempts")? as u64,
                })
            })
            .collect()
    }

    /// Records an attempt's outcome: delivered, or the next attempt's time (None: the retries ran out).
    pub async fn finish_attempt(
        &self,
        id: &str,
        status_code: Option<u16>,
        error: Option<&str>,
        delivered: bool,
        retry_in_ms: Option<i64>,
    ) -> Result<()> {
        let now = now_ms();
        let status = match (delivered, retry_in_ms) {
            (true, _) => "delivered",
            (false, Some(_)) => "pending",
            (false, None) => "failed",
        };
        sqlx::query(
            "UPDATE alert_deliveries SET status = $1, last_status_code = $2, last_error = $3, \
             next_attempt_at = $4, updated_at = $5, delivered_at = $6 WHERE id = $7",
        )
        .bind(status)
        .bind(status_code.map(i64::from))
        .bind(error.map(|e| e.chars().take(500).collect::<String>()))
        .bind(now + retry_in_ms.unwrap_or(0))
        .bind(now)
        .bind(delivered.then_some(now))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The webhook deliveries of an event, oldest first.
    pub async fn deliveries(&self, org: &str, event_id: &str) -> Result<Vec<Delivery>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM alert_deliveries WHERE organization_id = $1 AND event_id = $2 \
             ORDER BY created_at, id"
        ))
        .bind(org)
        .bind(event_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// When the next pending delivery is due, if any is.
    pub async fn next_delivery_due(&self) -> Result<Option<DateTime<Utc>>> {
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM alert_deliveries WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(at.map(from_ms))
    }
}
