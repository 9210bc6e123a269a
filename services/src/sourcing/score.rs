//! The arithmetic of judging a quote: where a price falls in the price model's predictive distribution,
//! the deal score, and the landed cost the comparison ranks offers by. Pure functions: the README gives the
//! same formulas.

use serde_json::{Map, Value};

use mercator_store::DealScore;

/// Φ, the standard normal distribution function.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// Φ⁻¹(p) for p in (0, 1), by bisection on Φ (to the last bit of an f64; called once per quote).
pub fn normal_quantile(p: f64) -> f64 {
    if !(p > 0.0 && p < 1.0) {
        return f64::NAN;
    }
    let (mut lo, mut hi) = (-40.0_f64, 40.0_f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= f64::EPSILON * mid.abs().max(1.0) {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// Where `price` falls given a fair price `m` and its central interval `[lower, upper]` at `level`: the
/// standard score on its side of a split normal (σ below = (m − lower)/z, above = (upper − m)/z, with
/// z = Φ⁻¹((1 + level)/2)) and its percentile Φ(score).
pub fn position(price: f64, m: f64, lower: f64, upper: f64, level: f64) -> (f64, f64) {
    let zq = normal_quantile(0.5 + level / 2.0);
    let sigma = if price < m {
        (m - lower) / zq
    } else {
        (upper - m) / zq
    };
    let z = if price == m {
        0.0
    } else if sigma > 0.0 && sigma.is_finite() {
        (price - m) / sigma
    } else {
        // A point prediction: the quote is on one side of it, infinitely far in its own units.
        (price - m).signum() * f64::INFINITY
    };
    (z, normal_cdf(z))
}

/// `below`, `within` or `above` the interval.
pub fn verdict(price: f64, lower: f64, upper: f64) -> &'static str {
    if price < lower {
        "below"
    } else if price > upper {
        "above"
    } else {
        "within"
    }
}

/// The deal score's weights and the lead-time grace (configurable).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DealWeights {
    pub price: f64,
    pub reliability: f64,
    pub lead_time: f64,
    pub risk: f64,
    /// Days late at which the lead-time component reaches 0.
    pub late_days_to_zero: f64,
}

impl Default for DealWeights {
    fn default() -> Self {
        DealWeights {
            price: 0.50,
            reliability: 0.20,
            lead_time: 0.15,
            risk: 0.15,
            late_days_to_zero: 14.0,
        }
    }
}

impl DealWeights {
    /// `price=0.5,reliability=0.2,lead_time=0.15,risk=0.15` (any subset; the rest keep their defaults),
    /// each a non-negative number, not all zero.
    pub fn parse(text: &str) -> Result<DealWeights, String> {
        let mut w = DealWeights::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: give weights as name=value"))?;
            let value: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("`{part}`: a weight is a number from 0"))?;
            match name.trim() {
                "price" => w.price = value,
                "reliability" => w.reliability = value,
                "lead_time" => w.lead_time = value,
                "risk" => w.risk = value,
                other => {
                    return Err(format!(
                        "`{other}`: the weights are price, reliability, lead_time and risk"
                    ))
                }
            }
        }
        if w.price + w.reliability + w.lead_time + w.risk <= 0.0 {
            return Err("at least one weight must be above 0".into());
        }
        Ok(w)
    }
}

/// What a deal score is computed from; a component without its input is left out.
#[derive(Debug, Clone, Copy, Default)]
pub struct DealInputs {
    /// The quote's standard score against the fair price.
    pub z: Option<f64>,
    /// The supplier's reliability, 0–1.
    pub reliability: Option<f64>,
    /// Days the promised date falls after the needed-by date (0 or less: on time).
    pub days_late: Option<i64>,
    /// The probability the supplier delivers late.
    pub p_late: Option<f64>,
    /// Why the quote cannot be scored at all, when it cannot.
    pub gate: Option<&'static str>,
}

/// The deal score: each component 0–100, their mean weighted by `w` over the components present (a
/// missing one's weight shared among the others), rounded half away from zero.
///
/// - price = 100 · (1 − Φ(z))
/// - reliability = 100 · reliability
/// - lead_time = 100 when on time, else 100 · max(0, 1 − days late / `late_days_to_zero`)
/// - risk = 100 · (1 − p(late))
pub fn deal_score(inputs: &DealInputs, w: &DealWeights) -> DealScore {
    let components = [
        (
            "price",
            w.price,
            inputs.z.map(|z| 100.0 * (1.0 - normal_cdf(z))),
        ),
        (
            "reliability",
            w.reliability,
            inputs.reliability.map(|r| 100.0 * r.clamp(0.0, 1.0)),
        ),
        (
            "lead_time",
            w.lead_time,
            inputs.days_late.map(|late| {
                if late <= 0 {
                    100.0
                } else {
                    100.0
                        * (1.0 - late as f64 / w.late_days_to_zero.max(f64::MIN_POSITIVE)).max(0.0)
                }
            }),
        ),
        (
            "risk",
            w.risk,
            inputs.p_late.map(|p| 100.0 * (1.0 - p.clamp(0.0, 1.0))),
        ),
    ];
    let mut values = Map::new();
    let mut weights = Map::new();
    let mut missing = Vec::new();
    let (mut sum, mut weight) = (0.0, 0.0);
    for (name, w, value) in components {
        weights.insert(name.into(), Value::from(w));
        match value.filter(|v| v.is_finite()) {
            Some(v) => {
                values.insert(name.into(), Value::from(v));
                sum += w * v;
                weight += w;
            }
            None => {
                values.insert(name.into(), Value::Null);
                missing.push(name.to_string());
            }
        }
    }
    let score = match inputs.gate {
        Some(_) => None,
        None if weight > 0.0 => Some((sum / weight).round()),
        None => None,
    };
    DealScore {
        reason: inputs.gate.map(str::to_string).or_else(|| {
            score
                .is_none()
                .then(|| "no component with a weight could be computed".to_string())
        }),
        score,
        components: values,
        weights,
        missing,
    }
}

/// How the comparison turns a quoted price into the cost it ranks by (configurable).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LandedCost {
    /// Added per day the promised date falls after the needed-by date, as a share of the price.
    pub late_per_day: f64,
    /// Added per unit of unreliability (1 − reliability), as a share of the price.
    pub unreliability: f64,
}

impl Default for LandedCost {
    fn default() -> Self {
        LandedCost {
            late_per_day: 0.005,
            unreliability: 0.10,
        }
    }
}

impl LandedCost {
    /// unit price × (1 + late_per_day · days late + unreliability · p(late)), p(late) being the risk
    /// model's chance the line arrives late, or 1 − the supplier's reliability without one.
    pub fn unit(&self, price: f64, days_late: i64, p_late: f64) -> f64 {
        price
            * (1.0
                + self.late_per_day * days_late.max(0) as f64
                + self.unreliability * p_late.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_distribution_and_its_inverse_agree_with_tables() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-15);
        assert!((normal_cdf(1.959963984540054) - 0.975).abs() < 1e-12);
        assert!((normal_quantile(0.9) - 1.2815515655446004).abs() < 1e-12);
        assert!((normal_quantile(0.95) - 1.6448536269514722).abs() < 1e-12);
        assert!(normal_quantile(0.0).is_nan() && normal_quantile(1.0).is_nan());
    }

    /// The design reference's examples: m = 100, p10 = 90, p90 = 112.
    #[test]
    fn deal_scores_equal_the_worked_examples() {
        let w = DealWeights::default();
        let (z, pct) = position(95.0, 100.0, 90.0, 112.0, 0.8);
        assert!((z - -0.64078).abs() < 1e-5, "{z}");
        assert!((pct - 0.26083).abs() < 1e-5, "{pct}");
        let good = deal_score(
            &DealInputs {
                z: Some(z),
                reliability: Some(0.92),
                days_late: Some(0),
                p_late: Some(0.10),
                gate: None,
            },
            &w,
        );
        let price = good.components["price"].as_f64().unwrap();
        assert!((price - 73.917).abs() < 1e-3, "{price}");
        assert_eq!(good.score, Some(84.0));
        let (z, _) = position(118.0, 100.0, 90.0, 112.0, 0.8);
        assert!((z - 1.92233).abs() < 1e-5, "{z}");
        let poor = deal_score(
            &DealInputs {
                z: Some(z),
                reliability: Some(0.70),
                days_late: Some(5),
                p_late: Some(0.35),
                gate: None,
            },
            &w,
        );
        let price = poor.components["price"].as_f64().unwrap();
        assert!((price - 2.728).abs() < 1e-3, "{price}");
        assert_eq!(poor.score, Some(35.0));
    }

    #[test]
    fn a_missing_component_shares_its_weight_and_a_gate_gives_no_score() {
        let w = DealWeights::default();
        // Without risk: (0.5·50 + 0.2·80 + 0.15·100) / 0.85 = 56 / 0.85 = 65.88 → 66.
        let s = deal_score(
            &DealInputs {
                z: Some(0.0),
                reliability: Some(0.8),
                days_late: Some(-3),
                p_late: None,
                gate: None,
            },
            &w,
        );
        assert_eq!(s.score, Some(66.0));
        assert_eq!(s.missing, vec!["risk".to_string()]);
        assert!(s.reason.is_none());
        let gated = deal_score(
            &DealInputs {
                gate: Some("the quote expired"),
                ..DealInputs::default()
            },
            &w,
        );
        assert_eq!(gated.score, None);
        assert_eq!(gated.reason.as_deref(), Some("the quote expired"));
        // Seven days late of fourteen: half the lead-time component.
        let late = deal_score(
            &DealInputs {
                days_late: Some(7),
                ..DealInputs::default()
            },
            &w,
        );
        assert_eq!(late.components["lead_time"].as_f64(), Some(50.0));
        assert_eq!(late.score, Some(50.0));
    }

    #[test]
    fn weights_parse_by_name_and_refuse_what_they_cannot_use() {
        let w = DealWeights::parse("price=1, risk=0").unwrap();
        assert_eq!((w.price, w.risk, w.reliability), (1.0, 0.0, 0.20));
        for bad in [
            "price",
            "price=-1",
            "speed=1",
            "price=x",
            "price=0,reliability=0,lead_time=0,risk=0",
        ] {
            assert!(DealWeights::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn positions_and_verdicts_at_the_edges() {
        assert_eq!(position(100.0, 100.0, 90.0, 112.0, 0.8), (0.0, 0.5));
        let (z, pct) = position(112.0, 100.0, 90.0, 112.0, 0.8);
        assert!((z - 1.2815515655446004).abs() < 1e-9 && (pct - 0.9).abs() < 1e-9);
        let (z, pct) = position(101.0, 100.0, 100.0, 100.0, 0.8);
        assert!(z.is_infinite() && pct == 1.0);
        assert_eq!(verdict(89.0, 90.0, 112.0), "below");
        assert_eq!(verdict(112.0, 90.0, 112.0), "within");
        assert_eq!(verdict(112.5, 90.0, 112.0), "above");
        // p(late) 0.1 (1 − reliability 0.9, or the risk model's): 100 × (1 + 0.005·4 + 0.1·0.1).
        let landed = LandedCost::default().unit(100.0, 4, 0.1);
        assert!((landed - 103.0).abs() < 1e-12, "{landed}");
    }
}
