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

use crate::predict::{PricePrediction, PriceRequest};
use crate::AppState;

pub mod egress;
pub mod schedule;
pub mod webhook;

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

    fn is_empty(&self) -> bool {
        self.by_material.is_empty()
            && self.by_category.is_empty()
            && self.by_supplier.is_empty()
            && self.everything.is_empty()
    }
}

/// Every organization's rule index, swapped whole for an organization when one of its rules changes.
pub struct Alerting {
    index: RwLock<HashMap<String, Arc<OrgRules>>>,
    /// Prices observed longer ago than this are not evaluated.
    max_age: chrono::Duration,
}

impl Alerting {
    pub fn new(max_age_days: u32) -> Alerting {
        Alerting {
            index: RwLock::default(),
            max_age: chrono::Duration::days(max_age_days.into()),
        }
    }

    /// Indexes every organization's rules (at start).
    pub async fn load(&self, store: &Store) -> Result<usize, String> {
        let rules = store
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
    pub async fn refresh(
        &self,
        store: &Store,
        org: &str,
    ) -> Result<(), mercator_store::StoreError> {
        let page = mercator_store::ListParams {
            limit: 1_000_000,
            offset: 0,
            sort: None,
            count: false,
        };
        let rules = store.alert_rules(org, &page).await?.items;
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
}

/// Evaluates the organization's rules on prices just written (and scored), records the breaches and
/// announces the events opened. Never fails the ingest: problems are logged.
pub async fn on_ingest(app: &AppState, org: &str, prices: &[Price]) {
    let Some(rules) = app.alerting.rules_of(org) else {
        return;
    };
    let oldest = chrono::Utc::now() - app.alerting.max_age;
    // The prices to evaluate, with their material's category.
    let mut fresh: Vec<(&Price, String)> = Vec::new();
    for price in prices.iter().filter(|p| p.time >= oldest) {
        match app
            .predictor
            .category(&app.store, org, &price.material_id)
            .await
        {
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
        match app
            .predictor
            .price_batch(&app.store, &app.repository, &app.data_dir, org, &requests)
            .await
        {
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
    // Breaches by (rule, subject): the first, and how many more in this batch.
    let mut breaches: Vec<(Arc<AlertRule>, Breach)> = Vec::new();
    let mut seen: HashMap<(String, String, Option<String>), usize> = HashMap::new();
    for (i, (price, category)) in fresh.iter().enumerate() {
        for rule in rules.candidates(&price.material_id, category, price.supplier_id.as_deref()) {
            let Some(breach) = judge(app, org, rule, price, category, predictions.get(&i)) else {
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
        match app
            .store
            .record_breach(org, &breach, rule.cooldown_seconds)
            .await
        {
            Ok(Some(event)) => announce(app, org, &rule, &event).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, rule = %rule.id, "recording an alert failed"),
        }
    }
}

/// The breach a price makes of a rule, if it does (`prediction`: the price model's answer for a quote).
fn judge(
    app: &AppState,
    org: &str,
    rule: &AlertRule,
    price: &Price,
    category: &str,
    prediction: Option<&PricePrediction>,
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
            let mean = window_mean(app, org, price, category, *window_days)?;
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

/// The material's mean price over the `days` before the price's day, by the feature pipeline's kernel.
fn window_mean(app: &AppState, org: &str, price: &Price, category: &str, days: u32) -> Option<f64> {
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
    let row = app
        .predictor
        .history
        .row(spec, org, &price.material_id, None, &input)
        .ok()?;
    row.first().copied()
}

/// Sends an event opened to the rule's channels: the WebSocket at once, webhooks through the outbox.
pub(crate) async fn announce(app: &AppState, org: &str, rule: &AlertRule, event: &AlertEvent) {
    let body = json!({
        "type": "alert.fired",
        "timestamp": event.opened_at,
        "event": event,
        "rule": {"id": rule.id, "name": rule.name, "condition": rule.condition},
    });
    for channel in &rule.channels {
        match channel {
            Channel::Websocket => {
                app.notifications
                    .send(org, std::iter::once(Arc::new(body.clone())));
            }
            Channel::Webhook(hook) => {
                match app
                    .store
                    .enqueue_delivery(org, &event.id, hook, &body.to_string())
                    .await
                {
                    Ok(_) => app.webhooks.wake(),
                    Err(e) => {
                        tracing::error!(error = %e, event = %event.id, url = %hook.url, "queueing a webhook delivery failed")
                    }
                }
            }
        }
    }
}
