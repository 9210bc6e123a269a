//! Anomaly scoring: how unusual observed prices are against the material's history before their day. Used by
//! `POST /api/v1/analytics/anomalies` (stored observations of a time range, or observations in the body) and
//! on every price ingest, whose score is stored with the observation.

use chrono::NaiveDate;
use mercator_engine::{AnomalyThresholds, Model};
use mercator_features::history::Day;
use mercator_features::spec::Stat;
use mercator_features::{day_of, Feature, FeatureError, FeatureSpec, RowInput};
use mercator_store::{Price, PriceAnomaly, PriceQuery, Severity};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ModelRef, PredictError, Predictions, ANOMALY_MODEL};

/// Rows per scheduler request when many observations are scored at once.
const CHUNK_ROWS: usize = 1024;
/// Days of stored observations scored when a request gives no `from`.
const DEFAULT_RANGE_DAYS: i64 = 30;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnomalyRequest {
    /// The material of the stored observations, and of body observations that name none.
    pub material_id: Option<String>,
    /// Stored observations from this time (inclusive; RFC 3339 or a date); default 30 days before `to`.
    pub from: Option<String>,
    /// Stored observations before this time (exclusive); default now.
    pub to: Option<String>,
    /// Observations to score instead of stored ones (not stored). At most --max-bulk-rows.
    pub observations: Option<Vec<ObservationIn>>,
}

/// A price to judge that is not (or not yet) stored.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ObservationIn {
    /// Default: the request's `material_id`.
    pub material_id: Option<String>,
    pub supplier_id: Option<String>,
    /// Per unit of the material.
    pub price: f64,
    /// The history before this day is the reference; default today (UTC).
    #[serde(default, deserialize_with = "mercator_store::opt_date")]
    pub observed_on: Option<NaiveDate>,
}

/// A feature of the row that stands out, in words.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Reason {
    pub feature: String,
    pub value: f64,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Judgement {
    /// The stored observation, when one was scored.
    pub price_id: Option<String>,
    pub material_id: String,
    pub supplier_id: Option<String>,
    pub observed_on: NaiveDate,
    pub price: f64,
    /// 0 to 1, higher is stranger; null when the observation cannot be scored (see `error`).
    pub score: Option<f64>,
    pub is_anomaly: bool,
    /// low | medium | high when flagged: the highest of the model's thresholds the score reaches.
    pub severity: Option<Severity>,
    /// The features that stand out (empty when none does).
    pub reasons: Vec<Reason>,
    /// Why there is no score: too little history before the observation's day.
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Thresholds {
    pub low: f64,
    pub medium: f64,
    pub high: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AnomalyAnswer {
    pub model: ModelRef,
    pub thresholds: Thresholds,
    pub scored: usize,
    pub anomalies: usize,
    pub results: Vec<Judgement>,
}

/// An observation as the scorer takes it.
struct Candidate {
    price_id: Option<String>,
    material_id: String,
    supplier_id: Option<String>,
    day: Day,
    price: f64,
}

impl Predictions {
    /// Judges the stored observations of a material in a time range, or the observations of the body.
    pub async fn anomalies(
        &self,
        org: &str,
        request: AnomalyRequest,
    ) -> Result<AnomalyAnswer, PredictError> {
        let max_rows = self.max_rows;
        let candidates = match request.observations {
            Some(observations) => {
                if observations.len() > max_rows {
                    return Err(PredictError::TooManyRows { limit: max_rows });
                }
                if request.from.is_some() || request.to.is_some() {
                    return Err(PredictError::invalid(
                        "observations",
                        "send observations, or a time range of stored ones, not both",
                    ));
                }
                let today = chrono::Utc::now().date_naive();
                observations
                    .into_iter()
                    .map(|o| {
                        let material_id = o
                            .material_id
                            .or_else(|| request.material_id.clone())
                            .ok_or_else(|| {
                                PredictError::invalid(
                                    "material_id",
                                    "name the material of every observation",
                                )
                            })?;
                        Ok(Candidate {
                            price_id: None,
                            material_id,
                            supplier_id: o.supplier_id,
                            day: day_of(o.observed_on.unwrap_or(today)),
                            price: o.price,
                        })
                    })
                    .collect::<Result<Vec<_>, PredictError>>()?
            }
            None => {
                let Some(material_id) = request.material_id else {
                    return Err(PredictError::invalid(
                        "material_id",
                        "name the material whose stored observations to score",
                    ));
                };
                self.material(org, &material_id).await?;
                let to = parse_time("to", request.to)?.unwrap_or_else(chrono::Utc::now);
                let from = parse_time("from", request.from)?
                    .unwrap_or(to - chrono::Duration::days(DEFAULT_RANGE_DAYS));
                let query = PriceQuery {
                    material_id: Some(material_id),
                    from: Some(from),
                    to: Some(to),
                    ..PriceQuery::default()
                };
                let page = mercator_store::ListParams {
                    limit: (max_rows + 1).min(u32::MAX as usize) as u32,
                    offset: 0,
                    sort: Some("time".into()),
                    count: false,
                };
                let listed = self
                    .store
                    .list_prices(org, &query, &page)
                    .await
                    .map_err(PredictError::store("price"))?;
                if listed.items.len() > max_rows {
                    return Err(PredictError::TooManyRows { limit: max_rows });
                }
                listed.items.iter().map(candidate).collect()
            }
        };
        let model = self.model(ANOMALY_MODEL)?;
        let thresholds = thresholds(&model)?;
        let results = self.judge(org, &model, &thresholds, candidates).await?;
        let manifest = model.manifest();
        Ok(AnomalyAnswer {
            model: ModelRef {
                name: manifest.name.clone(),
                version: manifest.version,
            },
            thresholds: Thresholds {
                low: thresholds.low,
                medium: thresholds.medium,
                high: thresholds.high,
            },
            scored: results.iter().filter(|j| j.score.is_some()).count(),
            anomalies: results.iter().filter(|j| j.is_anomaly).count(),
            results,
        })
    }

    /// The scores of prices just written (or corrected), to store with them: None when no anomaly model
    /// with a feature spec is active; per price None when it cannot be scored (too little history).
    pub async fn score_prices(
        &self,
        org: &str,
        prices: &[Price],
    ) -> Result<Option<Vec<Option<PriceAnomaly>>>, PredictError> {
        let Ok(model) = self.model(ANOMALY_MODEL) else {
            return Ok(None);
        };
        let Ok(thresholds) = thresholds(&model) else {
            return Ok(None);
        };
        let tag = format!("{}:{}", model.manifest().name, model.manifest().version);
        let judged = self
            .judge(
                org,
                &model,
                &thresholds,
                prices.iter().map(candidate).collect(),
            )
            .await?;
        Ok(Some(
            judged
                .into_iter()
                .map(|j| {
                    j.score.map(|score| PriceAnomaly {
                        score,
                        is_anomaly: j.is_anomaly,
                        severity: j.severity,
                        model: tag.clone(),
                    })
                })
                .collect(),
        ))
    }

    /// Feature rows from the history as of each observation's day, scored through the scheduler in chunks.
    async fn judge(
        &self,
        org: &str,
        model: &Model,
        thresholds: &AnomalyThresholds,
        candidates: Vec<Candidate>,
    ) -> Result<Vec<Judgement>, PredictError> {
        let prepared = self.spec(model)?;
        let spec = &prepared.spec;
        let mut rows: Vec<Result<Vec<f64>, FeatureError>> = Vec::with_capacity(candidates.len());
        for c in &candidates {
            let material = self.material(org, &c.material_id).await?;
            let supplier = match &c.supplier_id {
                Some(id) => Some(self.supplier(org, id).await?),
                None => None,
            };
            let input = RowInput {
                as_of: c.day,
                quantity: 1.0,
                delivery: None,
                category: &material.category,
                supplier_code: supplier.as_ref().map(|s| s.code.as_str()),
                list_price: material.list_price,
                supplier_reliability: supplier.as_ref().map(|s| s.reliability),
                price: Some(c.price),
            };
            let row = self
                .history
                .row(spec, org, &c.material_id, c.supplier_id.as_deref(), &input);
            if let Err(e @ FeatureError::Price(_)) = row {
                return Err(e.into());
            }
            rows.push(row);
        }
        let width = prepared.names.len();
        let ready: Vec<&Vec<f64>> = rows.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut scores = Vec::with_capacity(ready.len());
        for chunk in ready.chunks(CHUNK_ROWS) {
            let rows = chunk
                .iter()
                .flat_map(|row| row.iter().map(|v| *v as f32))
                .collect();
            let output = self.infer(model, rows, width).await?;
            let values = output
                .outputs
                .first()
                .map(|t| t.data.to_f64())
                .filter(|v| v.len() == chunk.len())
                .ok_or_else(|| {
                    PredictError::Output("the anomaly model gave no score per row".into())
                })?;
            scores.extend(values);
        }
        let mut scores = scores.into_iter();
        Ok(candidates
            .into_iter()
            .zip(rows)
            .map(|(c, row)| {
                let (score, reasons, error) = match row {
                    Ok(row) => (scores.next(), reasons(spec, &row, c.price), None),
                    Err(e) => (None, Vec::new(), Some(e.to_string())),
                };
                let severity = score.and_then(|s| severity(thresholds, s));
                Judgement {
                    price_id: c.price_id,
                    material_id: c.material_id,
                    supplier_id: c.supplier_id,
                    observed_on: mercator_features::history::date_of(c.day),
                    price: c.price,
                    score,
                    is_anomaly: severity.is_some(),
                    severity,
                    reasons,
                    error,
                }
            })
            .collect())
    }
}

/// A time parameter: RFC 3339 or a date.
fn parse_time(
    field: &str,
    text: Option<String>,
) -> Result<Option<mercator_store::Time>, PredictError> {
    mercator_store::parse_time_param(field, text).map_err(|details| PredictError::Invalid {
        message: format!("`{field}` is not a time"),
        details,
    })
}

fn thresholds(model: &Model) -> Result<AnomalyThresholds, PredictError> {
    let m = model.manifest();
    match (&m.anomaly, &m.features) {
        (Some(t), Some(_)) => Ok(t.clone()),
        _ => Err(PredictError::Unservable(format!(
            "version {} of {} scores raw feature tensors (no [features] spec or [anomaly] thresholds); \
             activate a version with both",
            m.version, m.name
        ))),
    }
}

/// The highest threshold the score reaches; None below `low`.
fn severity(t: &AnomalyThresholds, score: f64) -> Option<Severity> {
    [
        (t.high, Severity::High),
        (t.medium, Severity::Medium),
        (t.low, Severity::Low),
    ]
    .into_iter()
    .find(|(threshold, _)| score >= *threshold)
    .map(|(_, s)| s)
}

fn candidate(p: &Price) -> Candidate {
    Candidate {
        price_id: Some(p.id.clone()),
        material_id: p.material_id.clone(),
        supplier_id: p.supplier_id.clone(),
        day: day_of(p.time.date_naive()),
        price: p.price,
    }
}

/// A price this far from a reference (as a log ratio, ±25%) is worth a reason.
const NOTABLE_LOG_RATIO: f64 = 0.223;
/// Beyond a window's minimum or maximum by this much (±10%).
const NOTABLE_EXTREME: f64 = 0.095;
const NOTABLE_ZSCORE: f64 = 3.0;
const NOTABLE_PREMIUM: f64 = 0.1;

/// The features of the row that stand out, in words, most striking first.
fn reasons(spec: &FeatureSpec, row: &[f64], price: f64) -> Vec<Reason> {
    let mut out: Vec<(f64, Reason)> = Vec::new();
    for (f, &v) in spec.features.iter().zip(row) {
        let against = |what: String| {
            let reference = price * (-v).exp();
            let pct = (v.exp() - 1.0).abs() * 100.0;
            let side = if v > 0.0 { "above" } else { "below" };
            format!("{pct:.0}% {side} {what} ({reference:.4})")
        };
        let (strength, message) = match f {
            Feature::PriceToRolling { stat, days } => {
                let (what, notable) = match stat {
                    Stat::Min => ("minimum", v <= -NOTABLE_EXTREME),
                    Stat::Max => ("maximum", v >= NOTABLE_EXTREME),
                    _ => ("mean", v.abs() >= NOTABLE_LOG_RATIO),
                };
                if !notable {
                    continue;
                }
                (v.abs(), against(format!("the {days}-day {what}")))
            }
            Feature::PriceToLag { days } if v.abs() >= NOTABLE_LOG_RATIO => {
                let what = if *days == 1 {
                    "the last day's mean price".to_string()
                } else {
                    format!("the mean price {days} days before")
                };
                (v.abs(), against(what))
            }
            Feature::PriceToList if v.abs() >= NOTABLE_LOG_RATIO => {
                (v.abs(), against("the list price".into()))
            }
            Feature::PriceZscore { days } if v.abs() >= NOTABLE_ZSCORE => {
                let side = if v > 0.0 { "above" } else { "below" };
                (
                    v.abs() / 10.0,
                    format!(
                        "{:.1} standard deviations {side} the {days}-day mean",
                        v.abs()
                    ),
                )
            }
            Feature::SupplierPremium { days } if v.abs() >= NOTABLE_PREMIUM => {
                let side = if v > 0.0 { "above" } else { "below" };
                (
                    0.0,
                    format!(
                        "the supplier's prices ran {:.0}% {side} the market's over {days} days",
                        v.abs() * 100.0
                    ),
                )
            }
            _ => continue,
        };
        out.push((
            strength,
            Reason {
                feature: f.name(),
                value: v,
                message,
            },
        ));
    }
    out.sort_by(|a, b| b.0.total_cmp(&a.0));
    out.into_iter().map(|(_, r)| r).collect()
}
