//! Alert rules changed: checked against the organization's limits and what the server can judge, stored,
//! and the organization's index rebuilt, so a rule judges the prices ingested from then on.

use mercator_store::{
    AlertRule, AlertRulePatch, Channel, Condition, FieldErrors, ListParams, NewAlertRule,
    StoreError,
};

use super::Alerts;

/// How many rules, and channels a rule, an organization may have.
#[derive(Debug, Clone, Copy)]
pub struct RuleLimits {
    /// Rules an organization may have (--max-alert-rules).
    pub max_rules: usize,
    /// Channels one rule may have (--max-alert-channels).
    pub max_channels: usize,
}

/// Why a rule was not changed.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// A value that breaks a rule, by field.
    #[error("{message}")]
    Invalid {
        message: String,
        details: FieldErrors,
    },
    /// The organization has its most rules.
    #[error("{0}")]
    Conflict(String),
    /// The store's answer about the rule (not found, a name in use, invalid values).
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl RuleError {
    fn invalid(field: &str, message: impl Into<String>) -> RuleError {
        let message = message.into();
        RuleError::Invalid {
            details: FieldErrors::one(field, message.clone()),
            message,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            RuleError::Invalid { .. } => "validation_error",
            RuleError::Conflict(_) => "conflict",
            RuleError::Store(e) => e.code(),
        }
    }
}

impl Alerts {
    /// A new rule for `org`: at most --max-alert-rules, each webhook's receiver outside the server's network
    /// (unless --webhook-allow-private), a forecast rule's horizon one the active forecast model covers.
    pub async fn create_rule(&self, org: &str, new: NewAlertRule) -> Result<AlertRule, RuleError> {
        self.check_horizon(Some(&new.condition))?;
        self.check_model_rule(org, Some(&new.condition)).await?;
        self.check_channels(new.channels.as_deref()).await?;
        let page = ListParams {
            limit: 1,
            offset: 0,
            sort: None,
            count: true,
        };
        let rules = self.store.alert_rules(org, &page).await?;
        let max = self.limits.max_rules;
        if rules.total.unwrap_or(0) >= max as i64 {
            return Err(RuleError::Conflict(format!(
                "the organization has {max} alert rules, its limit (--max-alert-rules); delete one first"
            )));
        }
        let rule = self.store.create_alert_rule(org, new).await?;
        self.refresh(org).await?;
        Ok(rule)
    }

    /// Changes the fields given, checked as a new rule's are; answers the rule before and after. Events
    /// already opened stay.
    pub async fn update_rule(
        &self,
        org: &str,
        id: &str,
        patch: AlertRulePatch,
    ) -> Result<(AlertRule, AlertRule), RuleError> {
        self.check_horizon(patch.condition.as_ref())?;
        self.check_model_rule(org, patch.condition.as_ref()).await?;
        self.check_channels(patch.channels.as_deref()).await?;
        let before = self.store.alert_rule(org, id).await?;
        let rule = self.store.update_alert_rule(org, id, patch).await?;
        self.refresh(org).await?;
        Ok((before, rule))
    }

    /// Deletes a rule and its events; answers the rule as it was.
    pub async fn delete_rule(&self, org: &str, id: &str) -> Result<AlertRule, RuleError> {
        let before = self.store.alert_rule(org, id).await?;
        self.store.delete_alert_rule(org, id).await?;
        self.refresh(org).await?;
        Ok(before)
    }

    /// At most --max-alert-channels channels, and each webhook's receiver outside the server's network
    /// (unless --webhook-allow-private).
    async fn check_channels(&self, channels: Option<&[Channel]>) -> Result<(), RuleError> {
        let Some(channels) = channels else {
            return Ok(());
        };
        let max = self.limits.max_channels;
        if channels.len() > max {
            return Err(RuleError::invalid(
                "channels",
                format!("at most {max} channels (--max-alert-channels)"),
            ));
        }
        for channel in channels {
            if let Channel::Webhook(w) = channel {
                self.webhooks
                    .egress
                    .check_url(&w.url)
                    .await
                    .map_err(|e| RuleError::invalid("channels.webhook.url", e))?;
            }
        }
        Ok(())
    }

    /// A forecast rule's horizon must be one the active forecast model covers.
    /// A model monitoring rule: monitoring is on, the window is one it keeps, and the rule belongs to the
    /// platform organization (the counts cover every organization's traffic).
    async fn check_model_rule(
        &self,
        org: &str,
        condition: Option<&Condition>,
    ) -> Result<(), RuleError> {
        let Some(condition) = condition.filter(|c| c.watches_model().is_some()) else {
            return Ok(());
        };
        let Some(windows) = self.monitor_windows.get() else {
            return Err(RuleError::invalid(
                "condition.type",
                "model monitoring is off on this server (--monitor false)",
            ));
        };
        let window = match condition {
            Condition::FeatureDrift { window, .. } | Condition::Accuracy { window, .. } => window,
            _ => &None,
        };
        if let Some(window) = window.as_ref().filter(|w| !windows.contains(w)) {
            return Err(RuleError::invalid(
                "condition.window",
                format!(
                    "`{window}` is not one of this server's windows: {}",
                    windows.join(", ")
                ),
            ));
        }
        if !self.store.organization(org).await?.platform {
            return Err(RuleError::invalid(
                "condition.type",
                "model monitoring rules belong to the platform organization: its traffic is every organization's",
            ));
        }
        Ok(())
    }

    fn check_horizon(&self, condition: Option<&Condition>) -> Result<(), RuleError> {
        let Some(Condition::ForecastChange { horizon_days, .. }) = condition else {
            return Ok(());
        };
        let max = self.predictions.forecast_horizon();
        if *horizon_days as usize > max {
            return Err(RuleError::invalid(
                "condition.horizon_days",
                format!("the active forecast model covers 1 to {max} days"),
            ));
        }
        Ok(())
    }
}
