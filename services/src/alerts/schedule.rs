//! Forecast rules, on a schedule (--forecast-alert-interval-secs): for each material in a rule's scope, the
//! active forecast model's answer for today; a breach when its last day of the rule's horizon differs from
//! its first by more than the threshold, in percent. The cooldown holds it to one event per material.

use std::time::Duration;

use mercator_store::{Breach, Condition, ListParams, MaterialFilter};

use super::Alerts;
use crate::predict::ForecastRequest;

impl Alerts {
    /// Evaluates the forecast rules once every `every` across the fleet (one replica per period, each
    /// period from its start on the wall clock).
    pub async fn run_schedule(self: std::sync::Arc<Self>, every: Duration) {
        let store = self.store.clone();
        crate::fleet::each_period(store, "forecast_rules", every, || self.evaluate_forecasts())
            .await
    }

    /// One round over every organization's enabled forecast rules.
    pub async fn evaluate_forecasts(&self) {
        for (org, rule) in self.forecast_rules() {
            let Condition::ForecastChange {
                threshold,
                horizon_days,
            } = rule.condition
            else {
                continue;
            };
            let materials = match (&rule.scope.material_id, &rule.scope.category) {
                (Some(m), _) => vec![m.clone()],
                (None, category) => {
                    let filter = MaterialFilter {
                        category: category.clone(),
                        ..MaterialFilter::default()
                    };
                    let page = ListParams {
                        limit: 100_000,
                        offset: 0,
                        sort: None,
                        count: false,
                    };
                    match self
                        .store
                        .entries::<mercator_store::Material>(&org, &filter, &page)
                        .await
                    {
                        Ok(listed) => listed.items.into_iter().map(|m| m.id).collect(),
                        Err(e) => {
                            tracing::warn!(error = %e, rule = %rule.id, "forecast rule: listing materials failed");
                            continue;
                        }
                    }
                }
            };
            for material in materials {
                let request = ForecastRequest {
                    material_id: material.clone(),
                    horizon_days,
                    supplier_id: None,
                    as_of: None,
                    interval_level: None,
                };
                let forecast = match self.predictions.forecast(&org, request).await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::debug!(error = %e, %material, "forecast rule: no forecast");
                        continue;
                    }
                };
                let (Some(first), Some(last)) = (forecast.points.first(), forecast.points.last())
                else {
                    continue;
                };
                let pct = (last.value / first.value - 1.0) * 100.0;
                if pct.abs() <= threshold {
                    continue;
                }
                let breach = Breach {
                rule_id: rule.id.clone(),
                material_id: Some(material),
                supplier_id: None,
                price_id: None,
                value: pct,
                threshold,
                message: format!(
                    "the forecast moves {pct:+.1}% over {horizon_days} days: {:.4} on {} to {:.4} on {} (forecast v{})",
                    first.value, first.date, last.value, last.date, forecast.model.version
                ),
                severity: rule.severity,
                count: 1,
            };
                match self
                    .store
                    .record_breach(&org, &breach, rule.cooldown_seconds, self.clock.now())
                    .await
                {
                    Ok(Some(event)) => self.announce(&org, &rule, &event).await,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, rule = %rule.id, "recording an alert failed")
                    }
                }
            }
        }
    }
}
