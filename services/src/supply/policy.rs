//! Inventory policy arithmetic: the economic order quantity, safety stock and reorder point under demand
//! and lead-time uncertainty, for a cycle service level or a fill rate, on continuous or periodic review.
//! Pure functions over one consistent time unit (days); the README gives the formulas and their sources.
//!
//! - EOQ = √(2DK/h), D the annual demand, K the cost of an order, h = i·c the annual cost of holding a
//!   unit; the annual ordering and holding cost at Q is K·D/Q + h·Q/2 (√(2DKh) at the EOQ).
//! - Continuous review (s, Q): over the lead time L the demand has mean d·L and standard deviation
//!   σ_L = √(L·σ_d² + d²·σ_LT²) (Silver, Pyke & Thomas); σ_d is the error of the daily demand forecast.
//! - Periodic review (R, S): the exposure is R + L: mean d·(R + L), σ = √((R + L)·σ_d² + d²·σ_LT²);
//!   S = d·(R + L) + z·σ; each review orders S − inventory position.
//! - Cycle service level α (no stockout in a cycle): z = Φ⁻¹(α). Fill rate β (the share of demand met
//!   from stock): z solves G(z) = (1 − β)·Q/σ, G(z) = φ(z) − z·(1 − Φ(z)) the standard normal loss
//!   function; the fill rate a z gives is 1 − σ·G(z)/Q.
//! - Safety stock SS = z·σ; reorder point s = d·L + SS; (s, S) and min–max: S = s + Q.
//! - Inventory turns = annual demand / average inventory (Q/2 + SS).

use crate::sourcing::score::{normal_cdf, normal_quantile};

/// The standard normal density.
pub fn normal_pdf(z: f64) -> f64 {
    (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// G(z) = φ(z) − z·(1 − Φ(z)): the expected shortfall beyond z of a standard normal.
pub fn loss(z: f64) -> f64 {
    normal_pdf(z) - z * (1.0 - normal_cdf(z))
}

/// The z whose loss is `target` (> 0): G falls from +∞ to 0, so bisection finds it.
pub fn loss_inverse(target: f64) -> f64 {
    let (mut lo, mut hi) = (-40.0_f64, 40.0_f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if loss(mid) > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// √(2DK/h).
pub fn eoq(annual_demand: f64, order_cost: f64, holding_cost: f64) -> f64 {
    (2.0 * annual_demand * order_cost / holding_cost).sqrt()
}

/// K·D/Q + h·Q/2.
pub fn annual_cost(annual_demand: f64, order_cost: f64, holding_cost: f64, q: f64) -> f64 {
    order_cost * annual_demand / q + holding_cost * q / 2.0
}

/// The standard deviation of demand over `days` with daily demand `d` ± `sd_d` (independent days) and a
/// lead time of standard deviation `sd_lt` days.
pub fn exposure_sd(days: f64, d: f64, sd_d: f64, sd_lt: f64) -> f64 {
    (days * sd_d * sd_d + d * d * sd_lt * sd_lt).sqrt()
}

/// The safety factor z for a service level over a cycle: a cycle service level α, or a fill rate β with
/// order quantity `q` and exposure standard deviation `sd`.
pub fn safety_factor(service: Service, q: f64, sd: f64) -> f64 {
    match service {
        Service::Cycle(alpha) => normal_quantile(alpha),
        Service::FillRate(beta) => loss_inverse((1.0 - beta) * q / sd),
    }
}

/// The fill rate that safety factor `z` gives with order quantity `q`.
pub fn fill_rate(z: f64, q: f64, sd: f64) -> f64 {
    if sd <= 0.0 {
        return 1.0;
    }
    (1.0 - sd * loss(z) / q).clamp(0.0, 1.0)
}

/// What the policy must achieve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Service {
    /// The probability of no stockout in a replenishment cycle, 0–1 exclusive.
    Cycle(f64),
    /// The share of demand met from stock, 0–1 exclusive.
    FillRate(f64),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn near(a: f64, b: f64, tolerance: f64) {
        assert!((a - b).abs() <= tolerance, "{a} against {b}");
    }

    /// The design reference's vector 1 (stockpyl's `economic_order_quantity`): K = 8, h = 0.225,
    /// λ = 1300 → Q = 304.0468, cost 68.4105.
    #[test]
    fn the_eoq_and_its_cost() {
        let q = eoq(1300.0, 8.0, 0.225);
        near(q, 304.0468, 5e-5);
        near(annual_cost(1300.0, 8.0, 0.225, q), 68.4105, 5e-5);
    }

    /// Vector 2: d = 200/week, σ_d = 40, D = 10,400/year, c = 25, i = 0.20, K = 100, L = 4 weeks,
    /// CSL 95% → EOQ 644.98, cost 3,224.90, σ_L 80, SS 131.59, ROP 931.59, G 0.020893, fill rate 0.99741,
    /// turns 22.90. Weeks are 7 days: a weekly σ of 40 is a daily σ of 40/√7.
    #[test]
    fn a_cycle_service_level_policy() {
        let (d, sd_d) = (200.0 / 7.0, 40.0 / 7f64.sqrt());
        let h = 0.20 * 25.0;
        let q = eoq(10_400.0, 100.0, h);
        near(q, 644.98, 5e-3);
        near(annual_cost(10_400.0, 100.0, h, q), 3224.90, 5e-3);
        let sd = exposure_sd(28.0, d, sd_d, 0.0);
        near(sd, 80.0, 1e-9);
        let z = safety_factor(Service::Cycle(0.95), q, sd);
        near(z * sd, 131.59, 5e-3);
        near(d * 28.0 + z * sd, 931.59, 5e-3);
        near(loss(z), 0.020893, 5e-7);
        near(fill_rate(z, q, sd), 0.99741, 5e-6);
        near(10_400.0 / (q / 2.0 + z * sd), 22.90, 5e-3);
    }

    /// Vector 3: d = 50/day, σ_d = 10, L = 10, σ_LT = 2, Q = 1000 → σ_L 104.881; fill rate 98%:
    /// z = 0.523334, SS 54.89, ROP 554.89; CSL 98%: z = 2.053749, SS 215.40. Leaving σ_LT out would give
    /// σ_L = 31.62.
    #[test]
    fn a_fill_rate_policy_with_lead_time_variance() {
        let sd = exposure_sd(10.0, 50.0, 10.0, 2.0);
        near(sd, 104.881, 5e-4);
        near(exposure_sd(10.0, 50.0, 10.0, 0.0), 31.62, 5e-3);
        let z = safety_factor(Service::FillRate(0.98), 1000.0, sd);
        near(z, 0.523334, 5e-6);
        near(z * sd, 54.89, 5e-3);
        near(500.0 + z * sd, 554.89, 5e-3);
        near(fill_rate(z, 1000.0, sd), 0.98, 1e-12);
        let z = safety_factor(Service::Cycle(0.98), 1000.0, sd);
        near(z, 2.053749, 5e-6);
        near(z * sd, 215.40, 5e-3);
    }

    /// Vector 4: (R, S) with R = 1 week, L = 2 weeks, d = 100/week, σ_d = 30, CSL 90% → SS 66.59,
    /// S 366.59 (367 in whole units); inventory position 220 → order 147. With K = 50, h = 2, D = 5,200:
    /// EOQ 509.90, s 366.59, S 876.49.
    #[test]
    fn a_periodic_review_policy() {
        let (d, sd_d) = (100.0 / 7.0, 30.0 / 7f64.sqrt());
        let sd = exposure_sd(21.0, d, sd_d, 0.0);
        let z = safety_factor(Service::Cycle(0.90), 0.0, sd);
        near(z * sd, 66.59, 5e-3);
        let s_up = d * 21.0 + z * sd;
        near(s_up, 366.59, 5e-3);
        assert_eq!(s_up.ceil(), 367.0);
        assert_eq!((s_up.ceil() - 220.0).max(0.0), 147.0);
        let q = eoq(5200.0, 50.0, 2.0);
        near(q, 509.90, 5e-3);
        near(s_up + q, 876.49, 5e-3);
    }

    #[test]
    fn the_loss_function_and_its_inverse() {
        near(loss(0.0), 0.398_942_280_4, 1e-9);
        for target in [1e-6, 0.01, 0.19, 0.4, 2.0] {
            near(loss(loss_inverse(target)), target, 1e-12);
        }
    }
}
