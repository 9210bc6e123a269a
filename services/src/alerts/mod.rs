//! Price alerting: the rules of every organization indexed by scope, evaluated on every price ingest (after
//! anomaly scoring), the events they open recorded in the store (one per rule and subject within the
//! cooldown), and announced on `/ws/notifications` and to webhooks ([`webhook`]). Forecast rules run on a
//! schedule ([`schedule`]).
//!
//! Evaluation cost follows the rules that can match: a price looks up the rules of its material, its
//! category, its supplier and the organization-wide ones (four hash lookups), never the others. Prices older
//! than --alert-max-age-days are history being loaded, not news: they are not evaluated.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use mercator_features::spec::{Feature, Stat, HISTORY_DAYS};
use mercator_features::{day_of, FeatureSpec, RowInput};
use mercator_store::{AlertEvent, AlertRule, Breach, Channel, Condition, Price, PriceType, Store};
use serde_json::json;

use crate::clock::Clock;
use crate::events::{Fanout, Notification};
use crate::predict::{Predictions, PricePrediction, PriceRequest};

pub mod egress;
mod rules;
pub mod schedule;
pub mod webhook;
pub mod zscore;

pub use rules::{RuleError, RuleLimits};

/// One organization's enabled rules, by what they watch.
#[derive(Default)]
struct OrgRules {
    by_material: HashMap<String, Vec<Arc<AlertRule>>>,
    by_category: HashMap<String, Vec<Arc<AlertRule>>>,
    by_supplier: HashMap<String, Vec<Arc<AlertRule>>>,
    everything: Vec<Arc<AlertRule>>,
}

impl OrgRules {
    fn build(rules: impl IntoIterator<Item = AlertRule>) -> OrgRules {
        let mut index = OrgRules::default();
        for rule in rules.into_iter().filter(|r| r.enabled) {
            let scope = rule.scope.clone();
            let rule = Arc::new(rule);
            match (scope.material_id, scope.category, scope.supplier_id) {
                (Some(m), _, _) => index.by_material.entry(m).or_default().push(rule),
                (_, Some(c), _) => index.by_category.entry(c).or_default().push(rule),
                (_, _, Some(s)) => index.by_supplier.entry(s).or_default().push(rule),
                _ => index.everything.push(rule),
            }
        }
        index
    }

    /// The rules a price of `material` (in `category`) from `supplier` can match.
    fn candidates<'a>(
        &'a self,
        material: &str,
        category: &str,
        supplier: Option<&str>,
    ) -> impl Iterator<Item = &'a Arc<AlertRule>> {
        let none: &[Arc<AlertRule>] = &[];
        let get = |map: &'a HashMap<String, Vec<Arc<AlertRule>>>, key: &str| {
            map.get(key).map_or(none, Vec::as_slice)
        };
        get(&self.by_material, material)
            .iter()
            .chain(get(&self.by_category, category))
            .chain(supplier.map_or(none, |s| get(&self.by_supplier, s)))
            .chain(&self.everything)
    }

    /// Every rule of the organization.
    fn all(&self) -> impl Iterator<Item = &Arc<AlertRule>> {
        self.by_material
            .values()
            .chain(self.by_category.values())
            .chain(self.by_supplier.values())
            .flatten()
            .chain(&self.everything)
    }

    fn is_empty(&self) -> bool {
        self.by_material.is_empty()
            && self.by_category.is_empty()
            && self.by_supplier.is_empty()
            && self.everything.is_empty()
    }
}

/// The alerting service: every organization's rule index (swapped whole for an organization when one of
/// its rules changes), and what judging and announcing need.
pub struct Alerts {
    index: RwLock<HashMap<String, Arc<OrgRules>>>,
    /// Prices observed longer ago than this are not evaluated.
    max_age: chrono::Duration,
    store: Store,
    predictions: Arc<Predictions>,
    notifications: Arc<Fanout<Notification>>,
    webhooks: Arc<webhook::Webhooks>,
    limits: RuleLimits,
    /// What breaches are judged at (cooldowns, what is too old to be news).
    clock: Arc<Clock>,
    /// The windows model monitoring keeps, when it is on: model rules may name them.
    monitor_windows: std::sync::OnceLock<Vec<String>>,
}

impl Alerts {
    /// The service, with an empty index ([`Alerts::load`] fills it).
    pub fn new(
        max_age_days: u32,
        store: Store,
        predictions: Arc<Predictions>,
        notifications: Arc<Fanout<Notification>>,
        webhooks: Arc<webhook::Webhooks>,
        limits: RuleLimits,
        clock: Arc<Clock>,
    ) -> Alerts {
        Alerts {
            index: RwLock::default(),
            max_age: chrono::Duration::days(max_age_days.into()),
            store,
            predictions,
            notifications,
            webhooks,
            limits,
            clock,
            monitor_windows: std::sync::OnceLock::new(),
        }
    }

    /// Takes model monitoring rules from now on, over these windows (the first is a rule's default).
    pub fn watch_models(&self, windows: Vec<String>) {
        let _ = self.monitor_windows.set(windows);
    }

    /// Every organization's enabled model monitoring rules.
    pub fn model_rules(&self) -> Vec<(String, Arc<AlertRule>)> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index
            .iter()
            .flat_map(|(org, rules)| {
                rules
                    .everything
                    .iter()
                    .filter(|r| r.condition.watches_model().is_some())
                    .map(move |r| (org.clone(), r.clone()))
            })
            .collect()
    }

    /// Records a breach of a model rule and announces the event it opens, if it opens one.
    pub async fn raise(&self, org: &str, rule: &AlertRule, breach: &Breach) {
        match self
            .store
            .record_breach(org, breach, rule.cooldown_seconds, self.clock.now())
            .await
        {
            Ok(Some(event)) => self.announce(org, rule, &event).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, rule = %rule.id, "recording an alert failed"),
        }
    }

    /// The webhook dispatcher (its egress guard checks rule URLs).
    pub fn webhooks(&self) -> &webhook::Webhooks {
        &self.webhooks
    }

    /// Indexes every organization's rules (at start).
    pub async fn load(&self) -> Result<usize, String> {
        let rules = self
            .store
            .all_alert_rules()
            .await
            .map_err(|e| format!("loading alert rules: {e}"))?;
        let total = rules.len();
        let mut by_org: HashMap<String, Vec<AlertRule>> = HashMap::new();
        for owned in rules {
            by_org
                .entry(owned.organization_id)
                .or_default()
                .push(owned.rule);
        }
        let index = by_org
            .into_iter()
            .map(|(org, rules)| (org, Arc::new(OrgRules::build(rules))))
            .collect();
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = index;
        Ok(total)
    }

    /// Re-reads one organization's rules after a change.
    pub async fn refresh(&self, org: &str) -> Result<(), mercator_store::StoreError> {
        let page = mercator_store::ListParams {
            limit: 1_000_000,
            offset: 0,
            sort: None,
            count: false,
        };
        let rules = self.store.alert_rules(org, &page).await?.items;
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(org.to_string(), Arc::new(OrgRules::build(rules)));
        Ok(())
    }

    /// Every organization's enabled forecast rules (for the schedule).
    pub fn forecast_rules(&self) -> Vec<(String, Arc<AlertRule>)> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (org, rules) in index.iter() {
            let all = rules
                .by_material
                .values()
                .chain(rules.by_category.values())
                .flatten()
                .chain(&rules.everything);
            for rule in all {
                if matches!(rule.condition, Condition::ForecastChange { .. }) {
                    out.push((org.clone(), rule.clone()));
                }
            }
        }
        out
    }

    fn rules_of(&self, org: &str) -> Option<Arc<OrgRules>> {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(org)
            .cloned()
            .filter(|r| !r.is_empty())
    }

    /// Evaluates the organization's rules on prices just written (and scored), records the breaches and
    /// announces the events opened. Never fails the ingest: problems are logged.
    pub async fn on_ingest(&self, org: &str, prices: &[Price]) {
        let Some(rules) = self.rules_of(org) else {
            return;
        };
        let oldest = self.clock.now() - self.max_age;
        // The prices to evaluate, with their material's category.
        let mut fresh: Vec<(&Price, String)> = Vec::new();
        for price in prices.iter().filter(|p| p.time >= oldest) {
            match self.predictions.category(org, &price.material_id).await {
                Ok(category) => fresh.push((price, category)),
                Err(e) => {
                    tracing::warn!(error = %e, "alert evaluation: the material's category is unknown")
                }
            }
        }
        // Quotes a quote rule will compare with the price model: predicted together, in the model's batches.
        let quoted: Vec<usize> = fresh
            .iter()
            .enumerate()
            .filter(|(_, (price, category))| {
                price.price_type == PriceType::Quote
                    && price.quantity.is_some()
                    && rules
                        .candidates(&price.material_id, category, price.supplier_id.as_deref())
                        .any(|r| matches!(r.condition, Condition::QuoteAbovePrediction { .. }))
            })
            .map(|(i, _)| i)
            .collect();
        let mut predictions: HashMap<usize, PricePrediction> = HashMap::new();
        if !quoted.is_empty() {
            let requests: Vec<PriceRequest> = quoted
                .iter()
                .map(|&i| {
                    let price = fresh[i].0;
                    PriceRequest {
                        material_id: price.material_id.clone(),
                        quantity: price.quantity.unwrap_or_default(),
                        supplier_id: price.supplier_id.clone(),
                        delivery_date: None,
                        as_of: Some(price.time.date_naive()),
                        interval_level: None,
                    }
                })
                .collect();
            match self.predictions.price_batch(org, &requests).await {
                Ok(answers) => {
                    for (&i, answer) in quoted.iter().zip(answers) {
                        match answer {
                            Ok(prediction) => {
                                predictions.insert(i, prediction);
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "no prediction to compare a quote with")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "quote rules: predicting the quotes failed"),
            }
        }
        // The series a zscore rule reads, for the prices one can match: one query per material and type.
        let zscored: Vec<&Price> = fresh
            .iter()
            .filter(|(price, category)| {
                rules
                    .candidates(&price.material_id, category, price.supplier_id.as_deref())
                    .any(|r| matches!(r.condition, Condition::Zscore { .. }))
            })
            .map(|(price, _)| *price)
            .collect();
        let series = if zscored.is_empty() {
            zscore::Series::default()
        } else {
            let lookback = rules
                .all()
                .filter_map(|r| match r.condition {
                    Condition::Zscore { lookback_days, .. } => Some(lookback_days),
                    _ => None,
                })
                .max()
                .unwrap_or(90);
            zscore::Series::load(&self.store, org, &zscored, lookback)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "zscore rules: the series could not be read");
                    zscore::Series::default()
                })
        };
        // Breaches by (rule, subject): the first, and how many more in this batch.
        let mut breaches: Vec<(Arc<AlertRule>, Breach)> = Vec::new();
        let mut seen: HashMap<(String, String, Option<String>), usize> = HashMap::new();
        for (i, (price, category)) in fresh.iter().enumerate() {
            for rule in rules.candidates(&price.material_id, category, price.supplier_id.as_deref())
            {
                let mean = |days| self.window_mean(org, price, category, days);
                let Some(breach) = judge(rule, price, predictions.get(&i), mean, &series) else {
                    continue;
                };
                let key = (
                    rule.id.clone(),
                    price.material_id.clone(),
                    price.supplier_id.clone(),
                );
                match seen.get(&key) {
                    Some(&k) => breaches[k].1.count += 1,
                    None => {
                        seen.insert(key, breaches.len());
                        breaches.push((rule.clone(), breach));
                    }
                }
            }
        }
        for (rule, breach) in breaches {
            match self
                .store
                .record_breach(org, &breach, rule.cooldown_seconds, self.clock.now())
                .await
            {
                Ok(Some(event)) => self.announce(org, &rule, &event).await,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, rule = %rule.id, "recording an alert failed"),
            }
        }
    }
}

/// One-feature specs of the window means pct_change rules compare with, by window (1 to 90 days): made
/// once, not per price.
static WINDOW_MEANS: LazyLock<Vec<FeatureSpec>> = LazyLock::new(|| {
    (1..=HISTORY_DAYS)
        .map(|days| {
            FeatureSpec::single(
                Feature::Rolling {
                    stat: Stat::Mean,
                    days,
                },
                days,
            )
        })
        .collect()
});

/// The breach a price makes of a rule, if it does. `prediction`: the price model's answer for a quote;
/// `window_mean`: the material's mean price over that many days before the price's day.
fn judge(
    rule: &AlertRule,
    price: &Price,
    prediction: Option<&PricePrediction>,
    window_mean: impl FnOnce(u32) -> Option<f64>,
    series: &zscore::Series,
) -> Option<Breach> {
    let p = price.price;
    let (value, threshold, message, severity) = match &rule.condition {
        Condition::PriceAbove { threshold } if p > *threshold => (
            p,
            *threshold,
            format!("price {p} is above {threshold}"),
            rule.severity,
        ),
        Condition::PriceBelow { threshold } if p < *threshold => (
            p,
            *threshold,
            format!("price {p} is below {threshold}"),
            rule.severity,
        ),
        Condition::PctChange {
            threshold,
            window_days,
        } => {
            let mean = window_mean(*window_days)?;
            let pct = (p / mean - 1.0) * 100.0;
            if pct.abs() <= *threshold {
                return None;
            }
            (
                pct,
                *threshold,
                format!(
                    "price {p} is {:.1}% {} the {window_days}-day mean of {mean:.4}",
                    pct.abs(),
                    if pct > 0.0 { "above" } else { "below" }
                ),
                rule.severity,
            )
        }
        Condition::Anomaly { level } => {
            let anomaly = price.anomaly.as_ref()?;
            let severity = anomaly.severity.filter(|s| s >= level)?;
            (
                anomaly.score,
                0.0,
                format!(
                    "price {p} scored {:.3} by {}: a {} anomaly",
                    anomaly.score,
                    anomaly.model,
                    severity.as_str()
                ),
                severity,
            )
        }
        Condition::QuoteAbovePrediction { threshold } => {
            let predicted = prediction?;
            let upper = predicted.prediction_interval.upper;
            let over = (p / upper - 1.0) * 100.0;
            if over <= *threshold {
                return None;
            }
            (
                over,
                *threshold,
                format!(
                    "quote {p} is {over:.1}% above the upper bound {upper:.4} of the predicted price's 80% interval (predicted {:.4})",
                    predicted.predicted_price
                ),
                rule.severity,
            )
        }
        Condition::Zscore {
            k,
            window,
            min_points,
            lookback_days,
        } => {
            let before = series.window(price, *window as usize, *lookback_days);
            let score = zscore::score(&before, p, *min_points as usize)?;
            if score.z.abs() <= *k {
                return None;
            }
            (
                score.z,
                *k,
                format!(
                    "price {p} is {:.2} standard deviations {} the mean {:.4} of the {} {} prices before it (σ {:.4})",
                    score.z.abs(),
                    if score.z > 0.0 { "above" } else { "below" },
                    score.mean,
                    score.points,
                    price.price_type.as_str(),
                    score.sd
                ),
                rule.severity,
            )
        }
        // Forecast rules run on the schedule.
        _ => return None,
    };
    Some(Breach {
        rule_id: rule.id.clone(),
        material_id: Some(price.material_id.clone()),
        supplier_id: price.supplier_id.clone(),
        price_id: Some(price.id.clone()),
        value,
        threshold,
        message,
        severity,
        count: 1,
    })
}

impl Alerts {
    /// The material's mean price over the `days` before the price's day, by the feature pipeline's kernel.
    fn window_mean(&self, org: &str, price: &Price, category: &str, days: u32) -> Option<f64> {
        let spec = WINDOW_MEANS.get((days as usize).checked_sub(1)?)?;
        let input = RowInput {
            as_of: day_of(price.time.date_naive()),
            quantity: 1.0,
            delivery: None,
            category,
            supplier_code: None,
            list_price: None,
            supplier_reliability: None,
            price: None,
        };
        let row = self
            .predictions
            .history
            .row(spec, org, &price.material_id, None, &input)
            .ok()?;
        row.first().copied()
    }

    /// Sends a sourcing event's body to the webhooks of the organization's `sourcing` rules that name it
    /// (`id`: the delivery's event id, the same for every webhook). Never fails the change it reports.
    pub async fn deliver_event(&self, org: &str, kind: &str, id: &str, body: &serde_json::Value) {
        let Some(rules) = self.rules_of(org) else {
            return;
        };
        let text = body.to_string();
        for rule in rules.all() {
            let Condition::Sourcing { events } = &rule.condition else {
                continue;
            };
            if !events.iter().any(|e| e == kind) {
                continue;
            }
            for channel in &rule.channels {
                if let Channel::Webhook(hook) = channel {
                    match self.store.enqueue_delivery(org, id, hook, &text).await {
                        Ok(_) => self.webhooks.wake(),
                        Err(e) => {
                            tracing::error!(error = %e, event = id, url = %hook.url, "queueing a webhook delivery failed")
                        }
                    }
                }
            }
        }
    }

    /// Sends an event opened to the rule's channels: the WebSocket at once, webhooks through the outbox.
    async fn announce(&self, org: &str, rule: &AlertRule, event: &AlertEvent) {
        let body = json!({
            "type": "alert.fired",
            "timestamp": event.opened_at,
            "event": event,
            "rule": {"id": rule.id, "name": rule.name, "condition": rule.condition},
        });
        for channel in &rule.channels {
            match channel {
                Channel::Websocket => {
                    self.notifications
                        .send(org, std::iter::once(Arc::new(body.clone())));
                }
                Channel::Webhook(hook) => {
                    match self
                        .store
                        .enqueue_delivery(org, &event.id, hook, &body.to_string())
                        .await
                    {
                        Ok(_) => self.webhooks.wake(),
                        Err(e) => {
                            tracing::error!(error = %e, event = %event.id, url = %hook.url, "queueing a webhook delivery failed")
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mercator_store::{PriceAnomaly, Scope, Severity};

    fn rule(condition: Condition) -> AlertRule {
        let now = chrono::Utc::now();
        AlertRule {
            id: "rule".into(),
            name: "a rule".into(),
            scope: Scope::default(),
            condition,
            severity: Severity::Medium,
            cooldown_seconds: 0,
            enabled: true,
            channels: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }

    fn price(value: f64, price_type: PriceType) -> Price {
        let now = chrono::Utc::now();
        Price {
            id: "price".into(),
            time: now,
            material_id: "m".into(),
            supplier_id: Some("s".into()),
            price: value,
            currency: "EUR".into(),
            quantity: Some(10.0),
            price_type,
            source: None,
            created_at: now,
            anomaly: None,
        }
    }

    fn predicted(value: f64, lower: f64, upper: f64) -> PricePrediction {
        PricePrediction {
            predicted_price: value,
            prediction_interval: crate::predict::Interval {
                lower,
                upper,
                level: 0.8,
            },
            confidence_score: 0.5,
            model: crate::predict::ModelRef {
                name: "price".into(),
                version: 2,
            },
            as_of: chrono::Utc::now().date_naive(),
            features_used: serde_json::Map::new(),
        }
    }

    /// No window mean is asked for: the closure fails the test if it is.
    fn no_mean(_: u32) -> Option<f64> {
        panic!("no window mean is needed")
    }

    #[test]
    fn thresholds_breach_strictly_beyond_and_say_by_how_much() {
        let above = rule(Condition::PriceAbove { threshold: 10.0 });
        let spot = |v| price(v, PriceType::Market);
        assert!(judge(
            &above,
            &spot(10.0),
            None,
            no_mean,
            &zscore::Series::default()
        )
        .is_none());
        let breach = judge(
            &above,
            &spot(10.5),
            None,
            no_mean,
            &zscore::Series::default(),
        )
        .unwrap();
        assert_eq!((breach.value, breach.threshold), (10.5, 10.0));
        assert_eq!(breach.severity, Severity::Medium);
        assert_eq!(breach.price_id.as_deref(), Some("price"));
        assert_eq!(breach.supplier_id.as_deref(), Some("s"));
        let below = rule(Condition::PriceBelow { threshold: 10.0 });
        assert!(judge(
            &below,
            &spot(10.0),
            None,
            no_mean,
            &zscore::Series::default()
        )
        .is_none());
        assert!(judge(
            &below,
            &spot(9.0),
            None,
            no_mean,
            &zscore::Series::default()
        )
        .is_some());
    }

    #[test]
    fn a_change_is_measured_against_the_window_mean_it_names() {
        let r = rule(Condition::PctChange {
            threshold: 20.0,
            window_days: 28,
        });
        let mut asked = None;
        let breach = judge(
            &r,
            &price(13.0, PriceType::Market),
            None,
            |days| {
                asked = Some(days);
                Some(10.0)
            },
            &zscore::Series::default(),
        )
        .unwrap();
        assert_eq!(asked, Some(28));
        assert!((breach.value - 30.0).abs() < 1e-9, "{}", breach.value);
        assert!(breach.message.contains("30.0% above"), "{}", breach.message);
        let within = judge(
            &r,
            &price(11.9, PriceType::Market),
            None,
            |_| Some(10.0),
            &zscore::Series::default(),
        );
        assert!(within.is_none());
        let falling = judge(
            &r,
            &price(7.0, PriceType::Market),
            None,
            |_| Some(10.0),
            &zscore::Series::default(),
        )
        .unwrap();
        assert!(falling.message.contains("below"), "{}", falling.message);
        // No history to compare with: no breach.
        assert!(judge(
            &r,
            &price(100.0, PriceType::Market),
            None,
            |_| None,
            &zscore::Series::default()
        )
        .is_none());
    }

    #[test]
    fn an_anomaly_breaches_at_its_level_or_above_with_the_scores_severity() {
        let r = rule(Condition::Anomaly {
            level: Severity::Medium,
        });
        let scored = |severity: Option<Severity>| {
            let mut p = price(10.0, PriceType::Market);
            p.anomaly = Some(PriceAnomaly {
                score: 0.9,
                is_anomaly: severity.is_some(),
                severity,
                model: "anomaly:2".into(),
            });
            p
        };
        assert!(judge(
            &r,
            &price(10.0, PriceType::Market),
            None,
            no_mean,
            &zscore::Series::default()
        )
        .is_none());
        assert!(judge(&r, &scored(None), None, no_mean, &zscore::Series::default()).is_none());
        assert!(judge(
            &r,
            &scored(Some(Severity::Low)),
            None,
            no_mean,
            &zscore::Series::default()
        )
        .is_none());
        let breach = judge(
            &r,
            &scored(Some(Severity::High)),
            None,
            no_mean,
            &zscore::Series::default(),
        )
        .unwrap();
        assert_eq!(
            breach.severity,
            Severity::High,
            "the score's severity, not the rule's"
        );
        assert!(breach.message.contains("anomaly:2"), "{}", breach.message);
    }

    #[test]
    fn a_quote_is_compared_with_the_upper_bound_of_its_prediction() {
        let r = rule(Condition::QuoteAbovePrediction { threshold: 10.0 });
        let quote = price(12.0, PriceType::Quote);
        assert!(
            judge(&r, &quote, None, no_mean, &zscore::Series::default()).is_none(),
            "no prediction"
        );
        assert!(judge(
            &r,
            &quote,
            Some(&predicted(10.0, 9.0, 11.0)),
            no_mean,
            &zscore::Series::default()
        )
        .is_none());
        let breach = judge(
            &r,
            &quote,
            Some(&predicted(9.0, 8.0, 10.0)),
            no_mean,
            &zscore::Series::default(),
        )
        .unwrap();
        assert!((breach.value - 20.0).abs() < 1e-9, "{}", breach.value);
        // Forecast rules are the schedule's, never an ingest's.
        let forecast = rule(Condition::ForecastChange {
            threshold: 1.0,
            horizon_days: 7,
        });
        assert!(judge(&forecast, &quote, None, no_mean, &zscore::Series::default()).is_none());
    }
}
