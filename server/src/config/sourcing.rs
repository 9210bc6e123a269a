//! Sourcing's flags: the deal score's weights and the landed cost's penalties.

use mercator_services::sourcing::score::{DealWeights, LandedCost};
use mercator_services::sourcing::SourcingConfig;

use super::ServeArgs;

pub(super) fn sourcing(args: &ServeArgs, file: &ServeArgs) -> Result<SourcingConfig, String> {
    let d = SourcingConfig::default();
    let mut deal = match args.deal_weights.as_ref().or(file.deal_weights.as_ref()) {
        Some(text) => DealWeights::parse(text).map_err(|e| format!("--deal-weights: {e}"))?,
        None => d.deal,
    };
    let number = |flag: &str, v: Option<f64>, positive: bool| match v {
        Some(v) if v.is_finite() && (v > 0.0 || (!positive && v == 0.0)) && v <= 1e6 => Ok(Some(v)),
        Some(v) => Err(format!(
            "{flag}: {v} is not a number {} up to 1e6",
            if positive { "above 0" } else { "from 0" }
        )),
        None => Ok(None),
    };
    if let Some(days) = number(
        "--deal-late-days",
        args.deal_late_days.or(file.deal_late_days),
        true,
    )? {
        deal.late_days_to_zero = days;
    }
    let landed = LandedCost {
        late_per_day: number(
            "--landed-late-per-day",
            args.landed_late_per_day.or(file.landed_late_per_day),
            false,
        )?
        .unwrap_or(d.landed.late_per_day),
        unreliability: number(
            "--landed-unreliability",
            args.landed_unreliability.or(file.landed_unreliability),
            false,
        )?
        .unwrap_or(d.landed.unreliability),
    };
    Ok(SourcingConfig {
        deal,
        landed,
        interval_level: d.interval_level,
    })
}
