//! Supply: how much of a material to order and when.
//!
//! - [`policy`]: the arithmetic (EOQ, safety stock, reorder point, (s, S), order-up-to, fill rate, turns).
//! - [`orders`]: purchase orders (by hand or from an RFQ's awards) and their deliveries.
//! - [`scorecard`]: a supplier's OTIF, lead time, defects, price competitiveness and RFQ responses.
//! - this file: `POST /api/v1/inventory/policy` — a material's policy from its costs, service target,
//!   review, lead time and daily demand (mean and forecast error; by default from the demand model), each
//!   figure returned with the formula and the numbers that made it.

pub mod history;
pub mod import;
pub mod orders;
pub mod policy;
pub mod scorecard;

use std::collections::BTreeMap;

use std::sync::Arc;

use mercator_store::{FieldErrors, Store, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use policy::Service;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceLevel {
    /// `cycle` (the probability of no stockout in a cycle) or `fill_rate` (the share of demand met from
    /// stock).
    #[serde(rename = "type")]
    pub kind: String,
    /// Between 0 and 1, exclusive.
    pub value: f64,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Review {
    /// `continuous` (order Q when the position falls to s) or `periodic` (every `period_days`, order up to
    /// S).
    #[serde(rename = "type")]
    pub kind: String,
    pub period_days: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Demand {
    /// Expected demand per day, in the material's unit.
    pub mean_per_day: f64,
    /// The standard deviation of the daily demand forecast's error (not the spread of demand itself).
    pub std_per_day: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DemandFrom {
    #[default]
    Forecast,
    Orders,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeadTime {
    pub mean_days: f64,
    #[serde(default)]
    pub std_days: f64,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    pub material_id: String,
    /// The price of one unit.
    pub unit_cost: f64,
    /// The annual cost of holding stock as a share of its value (0.2: 20% a year); or give `holding_cost`.
    pub holding_rate: Option<f64>,
    /// The annual cost of holding one unit, instead of `holding_rate` × `unit_cost`.
    pub holding_cost: Option<f64>,
    /// The fixed cost of placing one order.
    pub ordering_cost: f64,
    pub service_level: ServiceLevel,
    /// Default: continuous.
    pub review: Option<Review>,
    /// Default: from `supplier_id`'s deliveries of the material (of anything it delivered, below two
    /// lines of it) over `history_days`.
    pub lead_time: Option<LeadTime>,
    /// Default: as `demand_from` says.
    pub demand: Option<Demand>,
    /// Where demand comes from when not given: `forecast` (default: the demand model's weekly rates over
    /// the exposure, and its calibrated error) or `orders` (the organization's orders of the material over
    /// `history_days`).
    #[serde(default)]
    pub demand_from: DemandFrom,
    /// The supplier whose delivery history gives the lead time when none is given.
    pub supplier_id: Option<String>,
    /// Days of history the defaults are taken from, ending the day before `as_of` (default 365, 56 to
    /// 1,830); the forecast reads its model's own window.
    pub history_days: Option<u32>,
    /// The day the policy is for: lead time and demand come from the history before it (default today).
    /// For backtests.
    #[serde(default, deserialize_with = "mercator_store::opt_date")]
    pub as_of: Option<chrono::NaiveDate>,
    /// The quantity ordered each time, instead of the EOQ.
    pub order_quantity: Option<f64>,
    /// The smallest quantity the supplier takes: the EOQ is raised to it.
    pub moq: Option<f64>,
    /// On hand plus on order minus backorders: a periodic review says what to order now.
    pub inventory_position: Option<f64>,
    /// Default 365 (364 for 52 weeks of 7 days).
    pub days_per_year: Option<f64>,
}

/// One figure of the answer: its value, the formula, and the formula with the numbers put in.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Figure {
    pub value: f64,
    pub formula: &'static str,
    pub computed: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Policy {
    pub material_id: String,
    /// `continuous` or `periodic`.
    pub review: String,
    /// `cycle` or `fill_rate`, and its target.
    pub service_level: String,
    pub target: f64,
    /// The order quantity used: the EOQ (raised to the MOQ), or the one given.
    pub order_quantity: f64,
    /// The reorder point s (continuous), or the level S orders are placed up to (periodic).
    pub reorder_point: Option<f64>,
    pub order_up_to: Option<f64>,
    pub safety_stock: f64,
    /// (s, S) and min–max: s = the reorder point, S = s + Q.
    pub s: f64,
    #[serde(rename = "S")]
    pub big_s: f64,
    pub expected_fill_rate: f64,
    pub cycle_service_level: f64,
    pub inventory_turns: f64,
    /// With a periodic review and an inventory position: what to order now, in whole units.
    pub order_now: Option<f64>,
    /// Every figure by name: eoq, annual_cost, exposure_days, exposure_sd, z, safety_stock, ...
    pub figures: BTreeMap<&'static str, Figure>,
    /// Where the lead time and the demand came from.
    pub inputs: history::Inputs,
}

#[derive(Debug, thiserror::Error)]
pub enum SupplyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{message}")]
    Invalid {
        message: String,
        details: FieldErrors,
    },
    /// The order's or the RFQ's state does not allow it.
    #[error("{0}")]
    State(String),
    /// The demand forecast failed for a reason of the server's (a field's is `Invalid`).
    #[error(transparent)]
    Predict(#[from] crate::predict::PredictError),
}

impl SupplyError {
    pub fn code(&self) -> &'static str {
        match self {
            SupplyError::Store(e) => e.code(),
            SupplyError::Invalid { .. } => "validation_error",
            SupplyError::State(_) => "invalid_state",
            SupplyError::Predict(e) => e.code(),
        }
    }
}

impl From<FieldErrors> for SupplyError {
    fn from(details: FieldErrors) -> SupplyError {
        SupplyError::Invalid {
            message: format!(
                "invalid values: {}",
                details.0.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            details,
        }
    }
}

pub struct Supply {
    store: Store,
    clock: Arc<crate::clock::Clock>,
    predictions: Arc<crate::predict::Predictions>,
}

impl Supply {
    pub fn new(
        store: Store,
        clock: Arc<crate::clock::Clock>,
        predictions: Arc<crate::predict::Predictions>,
    ) -> Supply {
        Supply {
            store,
            clock,
            predictions,
        }
    }

    /// A material's inventory policy; a lead time or demand not given is taken from the history.
    pub async fn policy(&self, org: &str, mut r: PolicyRequest) -> Result<Policy, SupplyError> {
        self.store.material(org, &r.material_id).await?;
        let inputs = self.inputs(org, &mut r).await?;
        let mut policy = compute(r)?;
        policy.inputs = inputs;
        Ok(policy)
    }
}

/// The policy `r` asks for, every input checked first.
pub fn compute(r: PolicyRequest) -> Result<Policy, SupplyError> {
    let mut e = FieldErrors::default();
    let positive = |e: &mut FieldErrors, field: &str, v: f64| {
        if !(v.is_finite() && v > 0.0 && v <= 1e12) {
            e.add(field, "must be a number above 0, at most 1e12");
        }
    };
    let non_negative = |e: &mut FieldErrors, field: &str, v: f64| {
        if !(v.is_finite() && (0.0..=1e12).contains(&v)) {
            e.add(field, "must be a number from 0 to 1e12");
        }
    };
    positive(&mut e, "unit_cost", r.unit_cost);
    non_negative(&mut e, "ordering_cost", r.ordering_cost);
    let (Some(demand), Some(lead_time)) = (&r.demand, &r.lead_time) else {
        return Err(
            FieldErrors::one("demand", "a policy needs the demand and the lead time").into(),
        );
    };
    positive(&mut e, "demand.mean_per_day", demand.mean_per_day);
    non_negative(&mut e, "demand.std_per_day", demand.std_per_day);
    positive(&mut e, "lead_time.mean_days", lead_time.mean_days);
    non_negative(&mut e, "lead_time.std_days", lead_time.std_days);
    let holding = match (r.holding_rate, r.holding_cost) {
        (Some(rate), None) => {
            positive(&mut e, "holding_rate", rate);
            rate * r.unit_cost
        }
        (None, Some(cost)) => {
            positive(&mut e, "holding_cost", cost);
            cost
        }
        _ => {
            e.add(
                "holding_rate",
                "give holding_rate or holding_cost, one of them",
            );
            f64::NAN
        }
    };
    let days_per_year = r.days_per_year.unwrap_or(365.0);
    if !(1.0..=366.0).contains(&days_per_year) {
        e.add("days_per_year", "must be 1 to 366");
    }
    for (field, v) in [("order_quantity", r.order_quantity), ("moq", r.moq)] {
        if let Some(v) = v {
            positive(&mut e, field, v);
        }
    }
    if r.order_quantity.is_none() && r.ordering_cost == 0.0 {
        e.add(
            "ordering_cost",
            "with no cost per order the EOQ is 0: give the cost, or order_quantity",
        );
    }
    if let Some(ip) = r.inventory_position {
        if !(ip.is_finite() && ip.abs() <= 1e12) {
            e.add(
                "inventory_position",
                "must be a number of at most 1e12 either way",
            );
        }
    }
    let level = r.service_level.value;
    let service = match r.service_level.kind.as_str() {
        "cycle" => Service::Cycle(level),
        "fill_rate" => Service::FillRate(level),
        _ => {
            e.add("service_level.type", "must be cycle or fill_rate");
            Service::Cycle(level)
        }
    };
    if !(level > 0.0 && level < 1.0) {
        e.add("service_level.value", "must be between 0 and 1, exclusive");
    }
    let review = r.review.unwrap_or(Review {
        kind: "continuous".into(),
        period_days: None,
    });
    let period = match (review.kind.as_str(), review.period_days) {
        ("continuous", None) => None,
        ("periodic", Some(p)) if p.is_finite() && p > 0.0 && p <= 3660.0 => Some(p),
        ("periodic", _) => {
            e.add(
                "review.period_days",
                "a periodic review needs period_days, above 0, at most 3660",
            );
            None
        }
        ("continuous", Some(_)) => {
            e.add("review.period_days", "only a periodic review has a period");
            None
        }
        _ => {
            e.add("review.type", "must be continuous or periodic");
            None
        }
    };
    e.into_result()?;

    let (d, sd_d) = (demand.mean_per_day, demand.std_per_day);
    let (lt, sd_lt) = (lead_time.mean_days, lead_time.std_days);
    let annual = d * days_per_year;
    let mut figures = BTreeMap::new();
    let mut put = |name: &'static str, value: f64, formula: &'static str, computed: String| {
        figures.insert(
            name,
            Figure {
                value,
                formula,
                computed,
            },
        );
        value
    };
    put(
        "annual_demand",
        annual,
        "D = d · days per year",
        format!("{d} · {days_per_year} = {annual:.4}"),
    );
    put(
        "holding_cost",
        holding,
        "h = i · c (or as given)",
        match r.holding_rate {
            Some(i) => format!("{i} · {} = {holding:.4}", r.unit_cost),
            None => format!("given: {holding}"),
        },
    );
    let eoq = put(
        "eoq",
        policy::eoq(annual, r.ordering_cost, holding),
        "EOQ = √(2·D·K / h)",
        format!(
            "√(2 · {annual:.4} · {} / {holding:.4}) = {:.4}",
            r.ordering_cost,
            policy::eoq(annual, r.ordering_cost, holding)
        ),
    );
    let q = match (r.order_quantity, r.moq) {
        (Some(q), _) => q,
        (None, Some(moq)) => eoq.max(moq),
        (None, None) => eoq,
    };
    let q = if q > 0.0 { q } else { f64::MIN_POSITIVE };
    put(
        "order_quantity",
        q,
        "Q = the order quantity given, else max(EOQ, MOQ)",
        format!("{q:.4}"),
    );
    let cost = policy::annual_cost(annual, r.ordering_cost, holding, q);
    put(
        "annual_cost",
        cost,
        "K·D/Q + h·Q/2 (ordering and cycle stock, safety stock aside)",
        format!(
            "{} · {annual:.4} / {q:.4} + {holding:.4} · {q:.4} / 2 = {cost:.4}",
            r.ordering_cost
        ),
    );
    let exposure = lt + period.unwrap_or(0.0);
    put(
        "exposure_days",
        exposure,
        "L (continuous review) or R + L (periodic)",
        match period {
            Some(p) => format!("{p} + {lt} = {exposure}"),
            None => format!("{lt}"),
        },
    );
    let sd = policy::exposure_sd(exposure, d, sd_d, sd_lt);
    put(
        "exposure_sd",
        sd,
        "σ = √(days · σ_d² + d² · σ_LT²)",
        format!("√({exposure} · {sd_d}² + {d}² · {sd_lt}²) = {sd:.4}"),
    );
    let z = if sd > 0.0 {
        policy::safety_factor(service, q, sd)
    } else {
        0.0
    };
    put(
        "z",
        z,
        match service {
            Service::Cycle(_) => "z = Φ⁻¹(cycle service level)",
            Service::FillRate(_) => "z solves G(z) = (1 − β) · Q / σ, G(z) = φ(z) − z·(1 − Φ(z))",
        },
        match service {
            Service::Cycle(a) => format!("Φ⁻¹({a}) = {z:.6}"),
            Service::FillRate(b) => {
                format!(
                    "G(z) = (1 − {b}) · {q:.4} / {sd:.4} = {:.6} → z = {z:.6}",
                    (1.0 - b) * q / sd
                )
            }
        },
    );
    let ss = z * sd;
    put(
        "safety_stock",
        ss,
        "SS = z · σ",
        format!("{z:.6} · {sd:.4} = {ss:.4}"),
    );
    let level_point = d * exposure + ss;
    put(
        match period {
            Some(_) => "order_up_to",
            None => "reorder_point",
        },
        level_point,
        match period {
            Some(_) => "S = d · (R + L) + SS",
            None => "s = d · L + SS",
        },
        format!("{d} · {exposure} + {ss:.4} = {level_point:.4}"),
    );
    let big_s = level_point + q;
    put(
        "S",
        big_s,
        "(s, S) and min–max: S = s + Q",
        format!("{level_point:.4} + {q:.4} = {big_s:.4}"),
    );
    let fill = policy::fill_rate(z, q, sd);
    put(
        "expected_fill_rate",
        fill,
        "β = 1 − σ · G(z) / Q",
        format!("1 − {sd:.4} · {:.6} / {q:.4} = {fill:.6}", policy::loss(z)),
    );
    let csl = crate::sourcing::score::normal_cdf(z);
    put(
        "cycle_service_level",
        csl,
        "α = Φ(z)",
        format!("Φ({z:.6}) = {csl:.6}"),
    );
    let turns = annual / (q / 2.0 + ss);
    put(
        "inventory_turns",
        turns,
        "turns = D / (Q/2 + SS) (cost of goods over average inventory value, both at c)",
        format!("{annual:.4} / ({q:.4}/2 + {ss:.4}) = {turns:.4}"),
    );
    let order_now = match (period, r.inventory_position) {
        (Some(_), Some(ip)) => {
            let now = (level_point.ceil() - ip).max(0.0);
            Some(put(
                "order_now",
                now,
                "⌈S⌉ − inventory position, at least 0",
                format!("⌈{level_point:.4}⌉ − {ip} = {now}"),
            ))
        }
        _ => None,
    };
    Ok(Policy {
        material_id: r.material_id,
        review: review.kind,
        service_level: r.service_level.kind,
        target: level,
        order_quantity: q,
        reorder_point: period.is_none().then_some(level_point),
        order_up_to: period.map(|_| level_point),
        safety_stock: ss,
        s: level_point,
        big_s,
        expected_fill_rate: fill,
        cycle_service_level: csl,
        inventory_turns: turns,
        order_now,
        figures,
        inputs: history::Inputs::given(lead_time, demand),
    })
}
