//! The serving side's price history: every organization's series as day tiles, folded price by price as
//! prices are ingested, corrected or deleted, and rebuilt from the store at start. A request reads it under
//! a shared lock and merges at most 90 day tiles per series: microseconds, no query.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::history::{day_of_ms, to_units, Series};
use crate::row::{assemble, RowHistory, RowInput};
use crate::spec::FeatureSpec;
use crate::FeatureError;

/// Fixed-point units the online history keeps prices in. A spec must use the same (checked on use).
pub const UNITS_PER_PRICE: i64 = 10_000;

#[derive(Default)]
struct MaterialHistory {
    market: Series,
    by_supplier: HashMap<String, Series>,
}

/// One price observation as the history sees it.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub organization: &'a str,
    pub material: &'a str,
    pub supplier: Option<&'a str>,
    /// Milliseconds since the epoch.
    pub observed_at_ms: i64,
    pub price: f64,
}

/// Every organization's price series: organization → material → series.
#[derive(Default)]
pub struct OnlineHistory {
    orgs: RwLock<HashMap<String, HashMap<String, MaterialHistory>>>,
}

impl OnlineHistory {
    /// Folds prices in.
    pub fn add<'a>(&self, observations: impl IntoIterator<Item = Observation<'a>>) {
        let mut orgs = self.orgs.write().unwrap_or_else(|e| e.into_inner());
        for o in observations {
            let (day, units) = (
                day_of_ms(o.observed_at_ms),
                to_units(o.price, UNITS_PER_PRICE),
            );
            let material = orgs
                .entry(o.organization.to_string())
                .or_default()
                .entry(o.material.to_string())
                .or_default();
            material.market.add(day, units);
            if let Some(s) = o.supplier {
                material
                    .by_supplier
                    .entry(s.to_string())
                    .or_default()
                    .add(day, units);
            }
        }
    }

    /// Holds what `other` holds instead (a history rebuilt beside this one, swapped in whole).
    pub fn replace(&self, other: OnlineHistory) {
        let other = other.orgs.into_inner().unwrap_or_else(|e| e.into_inner());
        *self.orgs.write().unwrap_or_else(|e| e.into_inner()) = other;
    }

    /// Takes prices out (a deletion, or the old side of a correction).
    pub fn remove(&self, o: Observation) {
        let mut orgs = self.orgs.write().unwrap_or_else(|e| e.into_inner());
        let (day, units) = (
            day_of_ms(o.observed_at_ms),
            to_units(o.price, UNITS_PER_PRICE),
        );
        if let Some(material) = orgs
            .get_mut(o.organization)
            .and_then(|m| m.get_mut(o.material))
        {
            material.market.remove(day, units);
            if let Some(s) = o.supplier.and_then(|s| material.by_supplier.get_mut(s)) {
                s.remove(day, units);
            }
        }
    }

    /// The feature row of a request for `material` (and `supplier`) of `organization`.
    pub fn row(
        &self,
        spec: &FeatureSpec,
        organization: &str,
        material: &str,
        supplier: Option<&str>,
        input: &RowInput,
    ) -> Result<Vec<f64>, FeatureError> {
        if spec.units_per_price != UNITS_PER_PRICE {
            return Err(FeatureError::Spec(format!(
                "units_per_price {} differs from the server's {UNITS_PER_PRICE}",
                spec.units_per_price
            )));
        }
        let orgs = self.orgs.read().unwrap_or_else(|e| e.into_inner());
        let empty = Series::default();
        let history = orgs.get(organization).and_then(|m| m.get(material));
        let history = RowHistory {
            market: history.map_or(&empty, |h| &h.market),
            supplier: supplier.and_then(|s| history.and_then(|h| h.by_supplier.get(s))),
        };
        assemble(spec, input, history)
    }

    /// The first day in `[from, to]` with prices of `material` (from `supplier`, when given), and their
    /// mean price that day: what a prediction made for that day is checked against.
    pub fn first_price(
        &self,
        organization: &str,
        material: &str,
        supplier: Option<&str>,
        from: crate::Day,
        to: crate::Day,
    ) -> Option<(crate::Day, f64)> {
        let orgs = self.orgs.read().unwrap_or_else(|e| e.into_inner());
        let history = orgs.get(organization)?.get(material)?;
        let series = match supplier {
            Some(s) => history.by_supplier.get(s)?,
            None => &history.market,
        };
        let (day, agg) = series.earliest(from, to)?;
        (agg.n > 0).then(|| (day, agg.sum as f64 / agg.n as f64 / UNITS_PER_PRICE as f64))
    }

    /// Runs `f` on the material's market series (empty when it has no prices), under the shared lock.
    pub fn with_market<T>(
        &self,
        organization: &str,
        material: &str,
        f: impl FnOnce(&Series) -> T,
    ) -> T {
        let orgs = self.orgs.read().unwrap_or_else(|e| e.into_inner());
        let empty = Series::default();
        f(orgs
            .get(organization)
            .and_then(|m| m.get(material))
            .map_or(&empty, |h| &h.market))
    }
}
