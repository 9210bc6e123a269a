//! A policy's lead time and demand taken from what the store knows, when the request does not give them.
//!
//! - **Lead time**: over the supplier's orders placed in the `history_days` before `as_of` (default
//!   today), each line of the material received in full (accepted quantity reaching the ordered one): days
//!   from the order to that delivery; mean and sample standard deviation. Below two such lines of the
//!   material, every line of the supplier counts (the answer says which).
//! - **Demand**, by default (`demand_from = forecast`): the demand model's units per day over the exposure
//!   (the lead time, or the review period plus the lead time; each day its week's rate, days past the
//!   model's weeks the last week's), and its error: the calibrated standard deviation of a week's rate,
//!   times √7 for a day's (see [`crate::predict::DemandOutlook::over`]).
//! - **Demand** with `demand_from = orders`: the organization's ordered quantity of the material over the
//!   same `history_days` (cancelled orders aside), per day: the mean. Orders come in lumps (one every week
//!   or two), so the day-to-day spread is read from 28-day totals: the standard deviation of those totals
//!   ÷ √28, which is the daily standard deviation were days independent.
//!
//! What was ordered stands in for what was consumed either way: the order book is the demand history
//! Mercator has.

use chrono::{Duration, NaiveDate};
use serde::Serialize;
use utoipa::ToSchema;

use super::scorecard::{mean, received_in_full, sample_std};
use super::{Demand, DemandFrom, LeadTime, PolicyRequest, Supply, SupplyError};
use crate::predict::PredictError;
use mercator_store::FieldErrors;

/// Days of history by default, and the bounds.
pub const DEFAULT_HISTORY_DAYS: u32 = 365;
const HISTORY_DAYS: std::ops::RangeInclusive<u32> = 56..=1830;
/// Days in one bucket of demand.
const BUCKET_DAYS: i64 = 28;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Inputs {
    pub lead_time: Source,
    pub demand: Source,
}

/// A policy input and where it came from.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Source {
    pub mean: f64,
    pub std: f64,
    /// `given`, `deliveries of the material`, `deliveries` (every material of the supplier), `orders` or
    /// `forecast`.
    pub source: &'static str,
    /// The model version, for a forecast.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<crate::predict::ModelRef>,
    /// Lines (lead time), order lines (demand from orders) or days with orders (forecast) it rests on; 0
    /// when given.
    pub lines: usize,
    #[schema(value_type = Option<String>, format = Date)]
    pub from: Option<NaiveDate>,
    #[schema(value_type = Option<String>, format = Date)]
    pub to: Option<NaiveDate>,
}

impl Source {
    fn given(mean: f64, std: f64) -> Source {
        Source {
            mean,
            std,
            source: "given",
            model: None,
            lines: 0,
            from: None,
            to: None,
        }
    }
}

impl Inputs {
    pub fn given(lead_time: &LeadTime, demand: &Demand) -> Inputs {
        Inputs {
            lead_time: Source::given(lead_time.mean_days, lead_time.std_days),
            demand: Source::given(demand.mean_per_day, demand.std_per_day),
        }
    }
}

impl Supply {
    /// Fills the request's lead time and demand from the history where they are missing; says where each
    /// came from.
    pub(super) async fn inputs(
        &self,
        org: &str,
        r: &mut PolicyRequest,
    ) -> Result<Inputs, SupplyError> {
        let days = r.history_days.unwrap_or(DEFAULT_HISTORY_DAYS);
        if !HISTORY_DAYS.contains(&days) {
            return Err(FieldErrors::one(
                "history_days",
                format!("must be {} to {}", HISTORY_DAYS.start(), HISTORY_DAYS.end()),
            )
            .into());
        }
        let today = r.as_of.unwrap_or_else(|| self.clock.now().date_naive());
        let to = today - Duration::days(1);
        let from = to - Duration::days(i64::from(days) - 1);
        let lead = match (&r.lead_time, &r.supplier_id) {
            (Some(given), _) => Source::given(given.mean_days, given.std_days),
            (None, Some(supplier)) => {
                let lead = self
                    .lead_time(org, supplier, &r.material_id, (from, to))
                    .await?;
                r.lead_time = Some(LeadTime {
                    mean_days: lead.mean,
                    std_days: lead.std,
                });
                lead
            }
            (None, None) => {
                return Err(FieldErrors::one(
                    "lead_time",
                    "give lead_time, or supplier_id to take it from the supplier's deliveries",
                )
                .into())
            }
        };
        let demand = match (&r.demand, r.demand_from) {
            (Some(given), _) => Source::given(given.mean_per_day, given.std_per_day),
            (None, DemandFrom::Forecast) => {
                let lead = r.lead_time.as_ref().map_or(0.0, |l| l.mean_days);
                let period = match &r.review {
                    Some(review) if review.kind == "periodic" => review.period_days.unwrap_or(0.0),
                    _ => 0.0,
                };
                let demand = self
                    .forecast_demand(org, &r.material_id, today, lead + period)
                    .await?;
                r.demand = Some(Demand {
                    mean_per_day: demand.mean,
                    std_per_day: demand.std,
                });
                demand
            }
            (None, DemandFrom::Orders) => {
                let demand = self.demand(org, &r.material_id, (from, to)).await?;
                r.demand = Some(Demand {
                    mean_per_day: demand.mean,
                    std_per_day: demand.std,
                });
                demand
            }
        };
        Ok(Inputs {
            lead_time: lead,
            demand,
        })
    }

    async fn lead_time(
        &self,
        org: &str,
        supplier_id: &str,
        material_id: &str,
        (from, to): (NaiveDate, NaiveDate),
    ) -> Result<Source, SupplyError> {
        self.store.supplier(org, supplier_id).await?;
        let (orders, deliveries) = self
            .store
            .supplier_book(org, supplier_id, (from, to))
            .await?;
        let (mut of_material, mut all) = (Vec::new(), Vec::new());
        for order in orders.iter().filter(|o| o.status != "cancelled") {
            for line in &order.lines {
                if let Some(day) = received_in_full(order, line, &deliveries) {
                    let days = (day - order.ordered_on).num_days() as f64;
                    all.push(days);
                    if line.material_id == material_id {
                        of_material.push(days);
                    }
                }
            }
        }
        let (leads, source) = if of_material.len() >= 2 {
            (of_material, "deliveries of the material")
        } else {
            (all, "deliveries")
        };
        match (mean(&leads), sample_std(&leads)) {
            (Some(mean), Some(std)) => Ok(Source {
                mean: mean.max(f64::MIN_POSITIVE),
                std,
                source,
                model: None,
                lines: leads.len(),
                from: Some(from),
                to: Some(to),
            }),
            _ => Err(FieldErrors::one(
                "lead_time",
                format!(
                    "the supplier has {} lines received in full from {from} to {to}, 2 needed: give lead_time",
                    leads.len()
                ),
            )
            .into()),
        }
    }

    async fn demand(
        &self,
        org: &str,
        material_id: &str,
        (from, to): (NaiveDate, NaiveDate),
    ) -> Result<Source, SupplyError> {
        let orders = self.store.orders_between(org, (from, to)).await?;
        let days = (to - from).num_days() + 1;
        let buckets = (days / BUCKET_DAYS).max(1) as usize;
        // Whole buckets back from `to`; the oldest days that do not fill one count in the mean only.
        let mut totals = vec![0.0; buckets];
        let (mut total, mut lines) = (0.0, 0);
        for order in orders.iter().filter(|o| o.status != "cancelled") {
            for line in order.lines.iter().filter(|l| l.material_id == material_id) {
                total += line.quantity;
                lines += 1;
                let back = (to - order.ordered_on).num_days() / BUCKET_DAYS;
                if let Some(t) = usize::try_from(back).ok().and_then(|b| totals.get_mut(b)) {
                    *t += line.quantity;
                }
            }
        }
        if lines == 0 {
            return Err(FieldErrors::one(
                "demand",
                format!("no orders of the material from {from} to {to}: give demand"),
            )
            .into());
        }
        let std = sample_std(&totals).unwrap_or(0.0) / (BUCKET_DAYS as f64).sqrt();
        Ok(Source {
            mean: total / days as f64,
            std,
            source: "orders",
            model: None,
            lines,
            from: Some(from),
            to: Some(to),
        })
    }

    /// Demand over `days` ahead from the demand model, as of today. A forecast that cannot be made for the
    /// material (too little history, no demand model served) is the `demand` field's problem.
    async fn forecast_demand(
        &self,
        org: &str,
        material_id: &str,
        today: NaiveDate,
        days: f64,
    ) -> Result<Source, SupplyError> {
        let outlook = match self
            .predictions
            .demand_outlook(org, material_id, Some(today))
            .await
        {
            Ok(outlook) => outlook,
            Err(e @ (PredictError::Feature(_) | PredictError::Unservable(_)))
            | Err(e @ PredictError::Engine(mercator_engine::EngineError::ModelNotFound(_))) => {
                return Err(FieldErrors::one(
                    "demand",
                    format!("{e}: give demand, or set demand_from to orders"),
                )
                .into())
            }
            Err(e) => return Err(e.into()),
        };
        let (mean, std) = outlook.over(if days.is_finite() { days } else { 1.0 });
        Ok(Source {
            mean: mean.max(0.0),
            std,
            source: "forecast",
            model: Some(outlook.model),
            lines: outlook.order_days,
            from: Some(outlook.window.0),
            to: Some(outlook.window.1),
        })
    }
}
