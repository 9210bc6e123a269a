//! Supplier risk: the chance a planned order line arrives late (the `risk` model), from the supplier's order
//! book as known on a day ([`mercator_features::delivery`], the code that built the training frame).
//!
//! The answer gives the probability, its band (the version's `[risk]` thresholds), the model version, the
//! book it rests on, every feature, and the factors: for each feature, how much the probability moves when
//! it takes the training rows' typical value instead (all of them in one batch with the row itself),
//! largest first.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;
use mercator_engine::Model;
use mercator_features::delivery::{
    delivery_row, median, summarise, BookLine, BookSummary, DeliverySpec, Planned, Receipt,
};
use mercator_features::{date_of, day_of, Day};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ModelRef, PredictError, Predictions};

pub const RISK_MODEL: &str = "risk";

/// Days ahead a line is promised when the question names no date: the supplier's usual lead, else this.
const DEFAULT_LEAD_DAYS: i64 = 14;

/// A planned line to score; what is left out is the supplier's usual.
#[derive(Debug, Clone, Default)]
pub struct RiskRequest {
    pub material_id: Option<String>,
    pub quantity: Option<f64>,
    pub promised_date: Option<NaiveDate>,
    /// The book as known before this day (default today); the line is ordered on it.
    pub as_of: Option<NaiveDate>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SupplierRisk {
    pub supplier_id: String,
    /// The probability the line arrives late (short of its quantity at the end of its promised day).
    pub p_late: f64,
    /// `low`, `medium` or `high`, by the version's thresholds.
    pub band: &'static str,
    pub thresholds: RiskBands,
    pub model: ModelRef,
    pub as_of: NaiveDate,
    pub line: PlannedLine,
    pub history: RiskHistory,
    /// Every feature, by name, as the model saw it.
    pub features: BTreeMap<String, f64>,
    /// Largest effect first.
    pub factors: Vec<RiskFactor>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RiskBands {
    pub medium: f64,
    pub high: f64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlannedLine {
    pub material_id: Option<String>,
    pub category: Option<String>,
    pub quantity: f64,
    pub promised_date: NaiveDate,
    pub lead_days: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RiskHistory {
    pub window_days: u32,
    /// Lines promised in the window before as-of (their lateness known), and the late ones.
    pub lines_known: u64,
    pub lines_late: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RiskFactor {
    pub feature: String,
    pub value: f64,
    /// The training rows' median.
    pub typical: f64,
    /// p_late − p_late with this feature at its typical value: what this line's value adds.
    pub effect: f64,
}

/// A supplier's book, loaded once for several lines.
pub struct Book {
    lines: Vec<BookLine>,
}

impl Predictions {
    /// The risk that a line planned with `supplier_id` arrives late.
    pub async fn supplier_risk(
        &self,
        org: &str,
        supplier_id: &str,
        request: &RiskRequest,
    ) -> Result<SupplierRisk, PredictError> {
        self.supplier(org, supplier_id).await?;
        let model = self.model(RISK_MODEL)?;
        let spec = self.delivery_spec(&model)?;
        let today = request
            .as_of
            .unwrap_or_else(|| chrono::Utc::now().date_naive());
        let as_of = day_of(today);
        let book = self.book(org, supplier_id, &spec, as_of).await?;
        let summary = summarise(&spec, &book.lines, as_of, request.material_id.as_deref());
        let category = match &request.material_id {
            Some(id) => Some(self.material(org, id).await?.category),
            None => None,
        };
        let promised = match request.promised_date {
            Some(date) if date < today => {
                return Err(PredictError::invalid(
                    "promised_date",
                    "must not be before as_of",
                ))
            }
            Some(date) => day_of(date),
            None => as_of + usual_lead(&summary) as Day,
        };
        let quantity = match request.quantity {
            Some(q) if !(q.is_finite() && q > 0.0 && q <= 1e12) => {
                return Err(PredictError::invalid(
                    "quantity",
                    "must be a number above 0, at most 1e12",
                ))
            }
            Some(q) => q,
            None => usual_quantity(&book.lines, as_of, spec.window_days),
        };
        let planned = Planned {
            quantity,
            promised,
            category: category.as_deref(),
        };
        let row = delivery_row(&spec, &summary, as_of, &planned)?;
        let m = model.manifest();
        let Some(settings) = m.risk.clone() else {
            return Err(PredictError::Unservable(format!(
                "version {} of {} has no [risk] bands; activate a version with them",
                m.version, m.name
            )));
        };
        let width = row.len();
        if settings.typical.len() != width {
            return Err(PredictError::Output(format!(
                "version {} of {}: {} typical values for {width} features",
                m.version,
                m.name,
                settings.typical.len()
            )));
        }
        // The row, then one row per feature with that feature at its typical value.
        let mut rows = row.clone();
        for (i, typical) in settings.typical.iter().enumerate() {
            let mut changed = row.clone();
            changed[i] = *typical as f32;
            rows.extend(changed);
        }
        let p = self.p_late(&model, rows, width).await?;
        let p_late = p[0];
        let names = spec.names();
        let mut factors: Vec<RiskFactor> = names
            .iter()
            .enumerate()
            .map(|(i, name)| RiskFactor {
                feature: name.to_string(),
                value: f64::from(row[i]),
                typical: settings.typical[i],
                effect: p_late - p[i + 1],
            })
            .collect();
        factors.sort_by(|a, b| b.effect.abs().total_cmp(&a.effect.abs()));
        Ok(SupplierRisk {
            supplier_id: supplier_id.to_string(),
            p_late,
            band: band(p_late, settings.medium, settings.high),
            thresholds: RiskBands {
                medium: settings.medium,
                high: settings.high,
            },
            model: ModelRef {
                name: m.name.clone(),
                version: m.version,
            },
            as_of: today,
            line: PlannedLine {
                material_id: request.material_id.clone(),
                category,
                quantity,
                promised_date: date_of(promised),
                lead_days: i64::from(promised - as_of),
            },
            history: RiskHistory {
                window_days: spec.window_days,
                lines_known: summary.known,
                lines_late: summary.late,
            },
            features: names
                .iter()
                .zip(&row)
                .map(|(n, v)| (n.to_string(), f64::from(*v)))
                .collect(),
            factors,
        })
    }

    /// The chance each of `lines` (material, quantity, promised date) with `supplier_id` arrives late,
    /// ordered on `today`: the supplier's book read once, one batch.
    pub async fn p_late_batch(
        &self,
        org: &str,
        supplier_id: &str,
        lines: &[(&str, f64, NaiveDate)],
        today: NaiveDate,
    ) -> Result<Vec<f64>, PredictError> {
        let model = self.model(RISK_MODEL)?;
        let spec = self.delivery_spec(&model)?;
        let as_of = day_of(today);
        let book = self.book(org, supplier_id, &spec, as_of).await?;
        let mut rows = Vec::new();
        let mut width = 0;
        for (material_id, quantity, promised) in lines {
            let summary = summarise(&spec, &book.lines, as_of, Some(material_id));
            let category = self.material(org, material_id).await?.category;
            let planned = Planned {
                quantity: *quantity,
                promised: day_of(*promised).max(as_of),
                category: Some(&category),
            };
            let row = delivery_row(&spec, &summary, as_of, &planned)?;
            width = row.len();
            rows.extend(row);
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        self.p_late(&model, rows, width).await
    }

    /// The model's probabilities for `rows`, checked to be probabilities.
    async fn p_late(
        &self,
        model: &Model,
        rows: Vec<f32>,
        width: usize,
    ) -> Result<Vec<f64>, PredictError> {
        let n = rows.len() / width.max(1);
        let output = self.infer(model, rows, width).await?;
        let p: Vec<f64> = output
            .outputs
            .first()
            .map(|t| (0..t.data.len()).map(|i| t.data.f64_at(i)).collect())
            .unwrap_or_default();
        if p.len() != n || p.iter().any(|x| !(0.0..=1.0).contains(x)) {
            return Err(PredictError::Output(format!(
                "the risk model gave {} values for {n} rows, or values outside 0 to 1",
                p.len()
            )));
        }
        Ok(p)
    }

    /// The supplier's lines and receipts that the window before `as_of` can read (cancelled orders aside:
    /// nothing was to arrive).
    async fn book(
        &self,
        org: &str,
        supplier_id: &str,
        spec: &DeliverySpec,
        as_of: Day,
    ) -> Result<Book, PredictError> {
        // Lines promised in the window were ordered before as-of, at most a year before it opened.
        let from = date_of(as_of - spec.window_days as Day - 366);
        let to = date_of(as_of - 1);
        let (orders, deliveries) = self
            .store
            .supplier_book(org, supplier_id, (from, to))
            .await
            .map_err(PredictError::store("supplier"))?;
        // Each line's receipts by (order, line): one pass over the deliveries, not one per line.
        let mut receipts: std::collections::HashMap<(&str, &str), Vec<Receipt>> =
            std::collections::HashMap::new();
        for d in &deliveries {
            receipts
                .entry((d.order_id.as_str(), d.line_id.as_str()))
                .or_default()
                .push(Receipt {
                    day: day_of(d.delivered_on),
                    quantity: d.quantity,
                    rejected: d.rejected_quantity,
                });
        }
        let mut lines = Vec::new();
        for order in orders.iter().filter(|o| o.status != "cancelled") {
            for line in &order.lines {
                lines.push(BookLine {
                    material: line.material_id.clone(),
                    ordered: day_of(order.ordered_on),
                    promised: day_of(line.promised_date),
                    quantity: line.quantity,
                    receipts: receipts
                        .remove(&(order.id.as_str(), line.id.as_str()))
                        .unwrap_or_default(),
                });
            }
        }
        Ok(Book { lines })
    }

    /// The delivery spec of a risk model version (parsed once).
    fn delivery_spec(&self, model: &Model) -> Result<Arc<DeliverySpec>, PredictError> {
        self.cached_spec(&self.delivery_specs, model, DeliverySpec::from_file)
    }
}

fn band(p: f64, medium: f64, high: f64) -> &'static str {
    if p >= high {
        "high"
    } else if p >= medium {
        "medium"
    } else {
        "low"
    }
}

/// The supplier's mean days from order to delivery in full, rounded, or the default without any.
fn usual_lead(summary: &BookSummary) -> i64 {
    if summary.leads.is_empty() {
        return DEFAULT_LEAD_DAYS;
    }
    let mean = summary.leads.iter().sum::<f64>() / summary.leads.len() as f64;
    (mean.round() as i64).clamp(1, 365)
}

/// The median quantity of the supplier's lines ordered in the window, or 1 without any.
fn usual_quantity(lines: &[BookLine], as_of: Day, window_days: u32) -> f64 {
    let q: Vec<f64> = lines
        .iter()
        .filter(|l| l.ordered < as_of && l.ordered >= as_of - window_days as Day)
        .map(|l| l.quantity)
        .collect();
    median(&q).unwrap_or(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_and_the_usual_line() {
        assert_eq!(band(0.1, 0.25, 0.5), "low");
        assert_eq!(band(0.25, 0.25, 0.5), "medium");
        assert_eq!(band(0.5, 0.25, 0.5), "high");
        let line = |ordered, quantity| BookLine {
            material: "m".into(),
            ordered,
            promised: ordered + 5,
            quantity,
            receipts: vec![],
        };
        let lines = [
            line(90, 10.0),
            line(95, 30.0),
            line(99, 20.0),
            line(100, 99.0),
            line(10, 99.0),
        ];
        // Days 90, 95 and 99 are in the 20 days before 100; 100 itself and 10 are not.
        assert_eq!(usual_quantity(&lines, 100, 20), 20.0);
        assert_eq!(usual_quantity(&lines[..2], 100, 20), 20.0);
        assert_eq!(usual_quantity(&[], 100, 20), 1.0);
        let summary = BookSummary {
            leads: vec![10.0, 13.0],
            ..BookSummary::default()
        };
        assert_eq!(usual_lead(&summary), 12);
        assert_eq!(usual_lead(&BookSummary::default()), DEFAULT_LEAD_DAYS);
    }
}
