//! Model monitoring rules (`feature_drift`, `accuracy`): judged once per window that ends, with onset
//! hysteresis.

use std::sync::Arc;

use chrono::DateTime;
use mercator_features::drift::{ColumnDrift, Verdict};
use mercator_store::{AlertRule, Breach, Condition};

use super::{Monitor, Report, Window};
use crate::alerts::Alerts;

impl Monitor {
    /// Judges model monitoring rules through `alerts` from now on.
    pub fn alert_through(&self, alerts: Arc<Alerts>) {
        let _ = self.alerts.set(alerts);
    }

    /// Once per window that ends (on one replica: the first to claim it), the model rules over it.
    pub(super) async fn judge_rules(&self) {
        let Some(alerts) = self.alerts.get() else {
            return;
        };
        let rules = alerts.model_rules();
        if rules.is_empty() {
            return;
        }
        let now = self.clock.now().timestamp();
        for window in &self.config.windows {
            let length = window.length.as_secs().max(1) as i64;
            let slot = now.div_euclid(length);
            {
                let mut judged = self.judged.lock().unwrap_or_else(|e| e.into_inner());
                if judged.get(&window.name) == Some(&slot) {
                    continue;
                }
                judged.insert(window.name.clone(), slot);
            }
            match self
                .store
                .claim_run(&format!("monitor_rules:{}", window.name), slot)
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, window = %window.name, "model rules not judged");
                    continue;
                }
            }
            for (org, rule) in &rules {
                let named = match &rule.condition {
                    Condition::FeatureDrift { window, .. } | Condition::Accuracy { window, .. } => {
                        window.as_deref()
                    }
                    _ => continue,
                };
                if named.unwrap_or(&self.config.windows[0].name) != window.name {
                    continue;
                }
                if let Some(breach) = self.judge_rule(rule, window, slot * length).await {
                    alerts.raise(org, rule, &breach).await;
                }
            }
        }
    }

    /// The breach of a model rule by the windows that end at `end`: it held in each of the last `windows`
    /// and not in the one before them (so a drift that lasts fires once, and again only after it cleared).
    async fn judge_rule(&self, rule: &AlertRule, window: &Window, end: i64) -> Option<Breach> {
        let model = rule.condition.watches_model()?;
        let version = self.repository.active(model)?;
        let n = match &rule.condition {
            Condition::FeatureDrift { windows, .. } | Condition::Accuracy { windows, .. } => {
                *windows as usize
            }
            _ => return None,
        };
        let length = window.length.as_secs().max(1) as i64;
        let mut held = Vec::with_capacity(n + 1);
        for k in 0..=n as i64 {
            let range = (end - (k + 1) * length, end - k * length);
            let with_accuracy = matches!(rule.condition, Condition::Accuracy { .. });
            let report = match self
                .report_range(model, version, &window.name, range, with_accuracy)
                .await
            {
                Ok(report) => report,
                Err(e) => {
                    tracing::warn!(rule = %rule.id, error = %e, "a model rule cannot be judged");
                    return None;
                }
            };
            held.push(self.breach_of(&rule.condition, &report));
        }
        if held[n].is_some() || held[..n].iter().any(Option::is_none) {
            return None;
        }
        let (value, threshold, what) = held.swap_remove(0)?;
        let from = DateTime::from_timestamp(end - length, 0).unwrap_or_default();
        let to = DateTime::from_timestamp(end, 0).unwrap_or_default();
        Some(Breach {
            rule_id: rule.id.clone(),
            material_id: None,
            supplier_id: None,
            price_id: None,
            value,
            threshold,
            message: format!(
                "{model} v{version}: {what}, in each of the last {n} window(s) of {} (the last {from} to {to})",
                window.name
            ),
            severity: rule.severity,
            count: 1,
        })
    }

    /// Whether a report breaks a model rule's condition: (value, threshold, what broke).
    fn breach_of(&self, condition: &Condition, report: &Report) -> Option<(f64, f64, String)> {
        match condition {
            Condition::FeatureDrift { features, .. } => {
                let drifted: Vec<&ColumnDrift> = report
                    .features
                    .iter()
                    .filter(|c| c.verdict == Verdict::Drift)
                    .filter(|c| features.as_ref().is_none_or(|f| f.contains(&c.name)))
                    .collect();
                let first = drifted.first()?;
                let what = drifted
                    .iter()
                    .map(|c| {
                        format!(
                            "{} drifted ({} {:.3} > {:.3}, {} rows)",
                            c.name,
                            c.metric,
                            c.value.unwrap_or_default(),
                            c.threshold,
                            c.rows
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                Some((first.value.unwrap_or_default(), first.threshold, what))
            }
            Condition::Accuracy {
                max_mape,
                min_coverage,
                ..
            } => {
                let a = report.accuracy.as_ref()?;
                if a.labelled < self.config.thresholds.min_rows {
                    return None;
                }
                if let (Some(max), Some(mape)) = (max_mape, a.mape) {
                    if mape > *max {
                        return Some((
                            mape,
                            *max,
                            format!(
                                "realized MAPE {:.2}% above {:.2}% ({} labelled)",
                                mape * 100.0,
                                max * 100.0,
                                a.labelled
                            ),
                        ));
                    }
                }
                let min = (*min_coverage)?;
                let low = a.coverage.iter().find(|c| c.coverage < min)?;
                Some((
                    low.coverage,
                    min,
                    format!(
                        "the {:.0}% interval covered {:.1}% of {} prices, below {:.1}%",
                        low.level * 100.0,
                        low.coverage * 100.0,
                        low.labelled,
                        min * 100.0
                    ),
                ))
            }
            _ => None,
        }
    }
}
