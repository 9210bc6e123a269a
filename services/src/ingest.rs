//! Price ingest: observations written all or nothing, then folded into the organization's history, scored
//! by the active anomaly model (the score stored with each), judged by the alert rules, and announced to the
//! organization's price listeners. Corrections and deletions keep the history in step.

use std::sync::Arc;

use mercator_store::{NewPrice, Price, PricePatch, RowError, Store, StoreError};

use crate::alerts::Alerts;
use crate::events::{Fanout, PriceEvent};
use crate::predict::Predictions;

/// A write this large refreshes the query planner's statistics (in the background).
const ANALYZE_AFTER_ROWS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Rows refused, each with its problems; nothing was written.
    #[error("{} of {total} rows are invalid; nothing was written", rows.len())]
    Rows { rows: Vec<RowError>, total: usize },
    /// The store's answer (a price not found names no other resource: it is the price).
    #[error(transparent)]
    Store(StoreError),
}

impl IngestError {
    /// The stable snake_case code (the server's table maps it to a status).
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::Rows { .. } => "invalid_rows",
            IngestError::Store(e) => e.code(),
        }
    }
}

/// The ingest service.
pub struct Ingest {
    store: Store,
    predictions: Arc<Predictions>,
    alerts: Arc<Alerts>,
    prices: Arc<Fanout<PriceEvent>>,
    /// Whether ingested prices are scored by the anomaly model (--score-on-ingest).
    score_on_ingest: bool,
}

impl Ingest {
    pub fn new(
        store: Store,
        predictions: Arc<Predictions>,
        alerts: Arc<Alerts>,
        prices: Arc<Fanout<PriceEvent>>,
        score_on_ingest: bool,
    ) -> Ingest {
        Ingest {
            store,
            predictions,
            alerts,
            prices,
            score_on_ingest,
        }
    }

    /// Writes observations (all or nothing), scores them, evaluates the alert rules on them, and announces
    /// them to the organization's price listeners.
    pub async fn write(&self, org: &str, rows: Vec<NewPrice>) -> Result<Vec<Price>, IngestError> {
        let total = rows.len();
        let mut written = self
            .store
            .insert_prices(org, rows)
            .await
            .map_err(|e| match e {
                StoreError::Rows(rows) => IngestError::Rows { rows, total },
                e => IngestError::Store(e),
            })?;
        if written.len() >= ANALYZE_AFTER_ROWS {
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.refresh_statistics().await {
                    tracing::warn!(error = %e, "refreshing the planner's statistics failed");
                }
            });
        }
        self.predictions
            .history
            .add(written.iter().map(|p| observation(org, p)));
        self.score(org, &mut written).await;
        count(&written);
        self.alerts.on_ingest(org, &written).await;
        self.prices
            .send(org, written.iter().map(|p| Arc::new(p.clone())));
        Ok(written)
    }

    /// Corrects an observation: the history follows (the old price out, the new one in), and the score is
    /// redone.
    pub async fn correct(
        &self,
        org: &str,
        id: &str,
        patch: PricePatch,
    ) -> Result<Price, IngestError> {
        let (before, price) = self
            .store
            .update_price(org, id, patch)
            .await
            .map_err(IngestError::Store)?;
        self.predictions.history.remove(observation(org, &before));
        self.predictions.history.add([observation(org, &price)]);
        let mut price = [price];
        self.score(org, &mut price).await;
        let [price] = price;
        Ok(price)
    }

    /// Deletes an observation, and takes it out of the history.
    pub async fn delete(&self, org: &str, id: &str) -> Result<(), IngestError> {
        let before = self
            .store
            .delete_price(org, id)
            .await
            .map_err(IngestError::Store)?;
        self.predictions.history.remove(observation(org, &before));
        Ok(())
    }

    /// Scores prices just written (or corrected) with the active anomaly model, against the history before
    /// their day, and stores each score with its price. A price is never refused for its score: when
    /// scoring fails it stays unscored, and the failure is logged. Off with --score-on-ingest false.
    async fn score(&self, org: &str, prices: &mut [Price]) {
        if !self.score_on_ingest {
            return;
        }
        let scores = match self.predictions.score_prices(org, prices).await {
            Ok(Some(scores)) => scores,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, prices = prices.len(), "anomaly scoring failed; prices stored unscored");
                return;
            }
        };
        let updates: Vec<_> = prices
            .iter()
            .zip(&scores)
            .map(|(p, s)| (p.id.clone(), s.clone()))
            .collect();
        if let Err(e) = self.store.set_price_anomalies(org, &updates).await {
            tracing::warn!(error = %e, "storing anomaly scores failed; prices stored unscored");
            return;
        }
        for (p, s) in prices.iter_mut().zip(scores) {
            p.anomaly = s;
        }
    }
}

/// Prices written, and the anomalies among them by severity (the product's `price_updates_total` and
/// `price_anomalies_total`; no organization or material label, so the series stay few).
pub const PRICE_UPDATES: &str = "price_updates_total";
pub const PRICE_ANOMALIES: &str = "price_anomalies_total";

fn count(written: &[Price]) {
    metrics::counter!(PRICE_UPDATES).increment(written.len() as u64);
    for p in written {
        if let Some(a) = p.anomaly.as_ref().filter(|a| a.is_anomaly) {
            let severity = match a.severity {
                Some(mercator_store::Severity::High) => "high",
                Some(mercator_store::Severity::Medium) => "medium",
                _ => "low",
            };
            metrics::counter!(PRICE_ANOMALIES, "severity" => severity).increment(1);
        }
    }
}

/// An observation as the feature history keeps it.
fn observation<'a>(org: &'a str, p: &'a Price) -> mercator_features::online::Observation<'a> {
    mercator_features::online::Observation {
        organization: org,
        material: &p.material_id,
        supplier: p.supplier_id.as_deref(),
        observed_at_ms: p.time.timestamp_millis(),
        price: p.price,
    }
}
