//! Price alerting: rules (a scope, a condition, a cooldown, channels), the events they open, and the cooldown
//! record that lets one event open per rule and subject within it.
//!
//! - this file: the types, their checks, and how rows decode into them.
//! - `rules.rs`: rules created, read, changed, deleted (webhook secrets sealed).
//! - `events.rs`: breaches recorded (one event per rule and subject within the cooldown), events read and
//!   moved through their states.
//! - `deliveries.rs`: the webhook outbox: deliveries queued with the event, claimed, retried, logged.

mod deliveries;
mod events;
mod rules;

pub use deliveries::{Delivery, DueDelivery};

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
    /// Whether the scope names nothing: every price of the organization.
    pub fn is_everything(&self) -> bool {
        self.material_id.is_none() && self.category.is_none() && self.supplier_id.is_none()
    }

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
    /// An ingested price more than `k` standard deviations from the mean of the material's last `window`
    /// observations of the same price type before it (within `lookback_days`); judged once at least
    /// `min_points` of them exist. The standard deviation is the sample one (n − 1), floored at 0.1% of the
    /// mean.
    Zscore {
        #[serde(default = "two")]
        k: f64,
        #[serde(default = "five")]
        window: u32,
        #[serde(default = "five")]
        min_points: u32,
        #[serde(default = "ninety")]
        lookback_days: u32,
    },
    /// A sourcing event (`rfq.opened`, `rfq.closed`, `rfq.cancelled`, `quote.received`, `rfq.awarded`; the
    /// ones named): its body goes to the rule's webhooks as it is (every event is on `/ws/notifications`
    /// anyway). Opens no alert event.
    Sourcing { events: Vec<String> },
    /// The active version of `model` drifts: one of `features` (any feature, when none are named) judged
    /// drift in each of the last `windows` (1 to 24) windows of the monitor's `window` (its first, when none
    /// is named), after a window in which it did not. Judged as each window ends; the platform
    /// organization's rules only.
    FeatureDrift {
        model: String,
        #[serde(default)]
        features: Option<Vec<String>>,
        #[serde(default = "one")]
        windows: u32,
        #[serde(default)]
        window: Option<String>,
    },
    /// The realized accuracy of the active version of `model` (a price model) over each of the last
    /// `windows` windows, after one that was within bounds: MAPE above `max_mape`, or the coverage of an
    /// interval level below `min_coverage` (fractions; at least one of them). Labels known when the window
    /// ends count; the platform organization's rules only.
    Accuracy {
        model: String,
        #[serde(default)]
        max_mape: Option<f64>,
        #[serde(default)]
        min_coverage: Option<f64>,
        #[serde(default = "one")]
        windows: u32,
        #[serde(default)]
        window: Option<String>,
    },
}

/// The events a `sourcing` rule can name.
pub const SOURCING_EVENTS: &[&str] = &[
    "rfq.opened",
    "rfq.closed",
    "rfq.cancelled",
    "quote.received",
    "rfq.awarded",
];

fn one() -> u32 {
    1
}

fn two() -> f64 {
    2.0
}

fn five() -> u32 {
    5
}

fn ninety() -> u32 {
    90
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
            Condition::Zscore {
                k,
                window,
                min_points,
                lookback_days,
            } => {
                if !(k.is_finite() && *k > 0.0 && *k <= 100.0) {
                    e.add(
                        "condition.k",
                        "a number of standard deviations above 0, at most 100",
                    );
                }
                if !(2..=1000).contains(window) {
                    e.add("condition.window", "2 to 1000 observations");
                }
                if !(2..=*window.max(&2)).contains(min_points) {
                    e.add("condition.min_points", "2 to the window's size");
                }
                if !(1..=366).contains(lookback_days) {
                    e.add("condition.lookback_days", "1 to 366 days");
                }
            }
            Condition::Sourcing { events } => {
                if events.is_empty() {
                    e.add("condition.events", "name at least one event");
                }
                for event in events {
                    if !SOURCING_EVENTS.contains(&event.as_str()) {
                        e.add(
                            "condition.events",
                            format!("`{event}`: the events are {}", SOURCING_EVENTS.join(", ")),
                        );
                    }
                }
            }
            Condition::FeatureDrift {
                model,
                features,
                windows,
                ..
            } => {
                check_model(e, model, *windows);
                if let Some(features) = features {
                    if features.is_empty() || features.len() > 200 {
                        e.add(
                            "condition.features",
                            "1 to 200 feature names, or none for any",
                        );
                    }
                    if features.iter().any(|f| f.is_empty() || f.len() > 200) {
                        e.add(
                            "condition.features",
                            "a feature name is 1 to 200 characters",
                        );
                    }
                }
            }
            Condition::Accuracy {
                model,
                max_mape,
                min_coverage,
                windows,
                ..
            } => {
                check_model(e, model, *windows);
                if max_mape.is_none() && min_coverage.is_none() {
                    e.add("condition", "give max_mape, min_coverage or both");
                }
                if max_mape.is_some_and(|m| !(m.is_finite() && m > 0.0 && m <= 100.0)) {
                    e.add(
                        "condition.max_mape",
                        "a fraction above 0 (0.05 is 5%), at most 100",
                    );
                }
                if min_coverage.is_some_and(|c| !(c.is_finite() && c > 0.0 && c < 1.0)) {
                    e.add("condition.min_coverage", "a fraction between 0 and 1");
                }
            }
        }
    }

    /// Whether the condition watches a model rather than prices.
    pub fn watches_model(&self) -> Option<&str> {
        match self {
            Condition::FeatureDrift { model, .. } | Condition::Accuracy { model, .. } => {
                Some(model)
            }
            _ => None,
        }
    }
}

fn check_model(e: &mut FieldErrors, model: &str, windows: u32) {
    if model.is_empty() || model.len() > 64 {
        e.add("condition.model", "a model's name, 1 to 64 characters");
    }
    if !(1..=24).contains(&windows) {
        e.add("condition.windows", "must be 1 to 24");
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

    /// As stored: the secret included, as `seal` writes it.
    fn stored(&self, seal: &impl Fn(&str) -> String) -> serde_json::Value {
        match self {
            Channel::Websocket => serde_json::json!("websocket"),
            Channel::Webhook(w) => {
                serde_json::json!({"webhook": {"url": w.url, "secret": seal(&w.secret)}})
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
    #[cfg_attr(feature = "openapi", schema(maximum = 315_360_000))]
    pub cooldown_seconds: u64,
    pub enabled: bool,
    pub channels: Vec<Channel>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The longest cooldown a rule may have: ten years.
pub const MAX_COOLDOWN_SECONDS: u64 = 315_360_000;

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
    /// Default: 3600. At most ten years.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 315_360_000))]
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
    #[cfg_attr(feature = "openapi", schema(maximum = 315_360_000))]
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

fn values(rule: &AlertRule, seal: impl Fn(&str) -> String) -> RuleValues {
    let (scope_kind, scope_value) = rule.scope.columns();
    RuleValues {
        scope_kind,
        scope_value,
        condition: serde_json::to_string(&rule.condition).unwrap_or_default(),
        channels: serde_json::Value::Array(rule.channels.iter().map(|c| c.stored(&seal)).collect())
            .to_string(),
    }
}
