//! A price series as exact integer day tiles.
//!
//! Prices are fixed point (`units_per_price` integer units), each day of a series is one tile of integer
//! sums (count, sum, sum of squares, min, max), and a window is merged from tiles with integer adds. Integer
//! sums are exact and order-free: the tiles built by the materialiser from a file and the ones the server
//! folds price by price as they are ingested are equal, whatever the order, and a deleted price retracts
//! exactly. The only float arithmetic is in [`crate::row`], shared by both paths.

use std::collections::BTreeMap;

/// A day, as days since 1970-01-01.
pub type Day = i32;

/// Converts a price to fixed-point units: the one rounding of a price, used by both paths.
pub fn to_units(price: f64, units_per_price: i64) -> i64 {
    (price * units_per_price as f64).round() as i64
}

const EPOCH: chrono::NaiveDate = match chrono::NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => panic!("a valid date"),
};

/// The day of a date (every date chrono holds fits: about ±96 million days).
pub fn day_of(date: chrono::NaiveDate) -> Day {
    date.signed_duration_since(EPOCH).num_days() as Day
}

/// The date of a day; a day beyond what chrono can hold is its first or last date (callers take dates
/// from the API's range, 1900 to 2200, so this only keeps arithmetic on odd data from panicking).
pub fn date_of(day: Day) -> chrono::NaiveDate {
    let shifted = if day >= 0 {
        EPOCH.checked_add_days(chrono::Days::new(day as u64))
    } else {
        EPOCH.checked_sub_days(chrono::Days::new(day.unsigned_abs() as u64))
    };
    shifted.unwrap_or(if day >= 0 {
        chrono::NaiveDate::MAX
    } else {
        chrono::NaiveDate::MIN
    })
}

/// The day of an instant in milliseconds since the epoch (UTC).
pub fn day_of_ms(ms: i64) -> Day {
    ms.div_euclid(86_400_000) as Day
}

/// Integer sums of some prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agg {
    pub n: u64,
    pub sum: i128,
    pub sumsq: i128,
    pub min: i64,
    pub max: i64,
}

impl Default for Agg {
    fn default() -> Self {
        Agg {
            n: 0,
            sum: 0,
            sumsq: 0,
            min: i64::MAX,
            max: i64::MIN,
        }
    }
}

impl Agg {
    /// Wrapping adds: as fast as plain ones (this runs for every tile of every window of every request),
    /// never a panic, and still exact and order-free: modulo 2^128 the total is the same in any order, so
    /// it is the true total whenever that fits (prices are at most 10^12: millions of them per window).
    pub fn merge(&mut self, other: &Agg) {
        self.n = self.n.wrapping_add(other.n);
        self.sum = self.sum.wrapping_add(other.sum);
        self.sumsq = self.sumsq.wrapping_add(other.sumsq);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// One day of a series: its sums, and its prices so that a retraction can rebuild min and max.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tile {
    pub agg: Agg,
    values: Vec<i64>,
}

impl Tile {
    /// A tile from its sums alone (the materialiser's group-by); it cannot retract.
    pub fn from_agg(agg: Agg) -> Tile {
        Tile {
            agg,
            values: Vec::new(),
        }
    }

    fn add(&mut self, units: i64) {
        let a = &mut self.agg;
        a.n += 1;
        a.sum = a.sum.wrapping_add(units as i128);
        a.sumsq = a.sumsq.wrapping_add((units as i128) * (units as i128));
        a.min = a.min.min(units);
        a.max = a.max.max(units);
        self.values.push(units);
    }

    /// Takes one price out; false when the tile has no such price.
    fn remove(&mut self, units: i64) -> bool {
        let Some(i) = self.values.iter().position(|v| *v == units) else {
            return false;
        };
        self.values.swap_remove(i);
        let a = &mut self.agg;
        a.n -= 1;
        a.sum = a.sum.wrapping_sub(units as i128);
        a.sumsq = a.sumsq.wrapping_sub((units as i128) * (units as i128));
        a.min = self.values.iter().copied().min().unwrap_or(i64::MAX);
        a.max = self.values.iter().copied().max().unwrap_or(i64::MIN);
        true
    }
}

/// One series (a material's market, or a material from one supplier): a tile per day with prices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Series {
    days: BTreeMap<Day, Tile>,
}

impl Series {
    pub fn add(&mut self, day: Day, units: i64) {
        self.days.entry(day).or_default().add(units);
    }

    /// Takes one price out of its day; false when the series does not hold it.
    pub fn remove(&mut self, day: Day, units: i64) -> bool {
        let Some(tile) = self.days.get_mut(&day) else {
            return false;
        };
        let removed = tile.remove(units);
        if tile.agg.n == 0 {
            self.days.remove(&day);
        }
        removed
    }

    /// Puts a whole day's tile in (the materialiser).
    pub fn insert_tile(&mut self, day: Day, tile: Tile) {
        self.days.insert(day, tile);
    }

    /// The sums of the days `[from, to)`.
    pub fn window(&self, from: Day, to: Day) -> Agg {
        let mut agg = Agg::default();
        if from < to {
            for tile in self.days.range(from..to).map(|(_, t)| t) {
                agg.merge(&tile.agg);
            }
        }
        agg
    }

    /// Days with prices in `[from, to)`.
    pub fn days_with_prices(&self, from: Day, to: Day) -> usize {
        if from < to {
            self.days.range(from..to).count()
        } else {
            0
        }
    }

    /// The latest day in `[from, to]` with prices, and its sums.
    pub fn latest(&self, from: Day, to: Day) -> Option<(Day, Agg)> {
        if from > to {
            return None;
        }
        self.days
            .range(from..=to)
            .next_back()
            .map(|(d, t)| (*d, t.agg))
    }

    /// The earliest day in `[from, to]` with prices, and its sums.
    pub fn earliest(&self, from: Day, to: Day) -> Option<(Day, Agg)> {
        if from > to {
            return None;
        }
        self.days.range(from..=to).next().map(|(d, t)| (*d, t.agg))
    }

    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }

    /// The first and last days with prices.
    pub fn span(&self) -> Option<(Day, Day)> {
        Some((*self.days.keys().next()?, *self.days.keys().next_back()?))
    }

    /// Each day's sums, oldest first.
    pub fn tiles(&self) -> impl Iterator<Item = (Day, &Agg)> {
        self.days.iter().map(|(d, t)| (*d, &t.agg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_are_order_free_and_retract_exactly() {
        let prices = [(3, 101), (1, 99), (3, 250), (2, 100), (3, 99), (1, 1)];
        let mut forward = Series::default();
        prices.iter().for_each(|(d, u)| forward.add(*d, *u));
        let mut backward = Series::default();
        prices.iter().rev().for_each(|(d, u)| backward.add(*d, *u));
        assert_eq!(forward.window(0, 10), backward.window(0, 10));
        // A price added and taken out again leaves the series as it was, min and max included.
        let before = forward.window(0, 10);
        forward.add(3, 5);
        assert_eq!(forward.window(3, 4).min, 5);
        assert!(forward.remove(3, 5));
        assert_eq!(forward.window(0, 10), before);
        assert!(!forward.remove(3, 5), "not there any more");
        let w = forward.window(1, 3);
        assert_eq!((w.n, w.sum, w.min, w.max), (3, 200, 1, 100));
        assert_eq!(forward.window(3, 3), Agg::default(), "an empty range");
        assert_eq!(forward.latest(0, 2).map(|(d, _)| d), Some(2));
        assert_eq!(forward.days_with_prices(0, 4), 3);
    }

    #[test]
    fn days_and_units() {
        let d = chrono::NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
        assert_eq!(date_of(day_of(d)), d);
        assert_eq!(
            date_of(day_of(chrono::NaiveDate::MAX)),
            chrono::NaiveDate::MAX
        );
        assert_eq!(
            date_of(Day::MAX),
            chrono::NaiveDate::MAX,
            "saturates, never panics"
        );
        assert_eq!(date_of(Day::MIN), chrono::NaiveDate::MIN);
        assert_eq!(day_of_ms(-1), -1, "before the epoch rounds down");
        assert_eq!(to_units(3.332676, 10_000), 33_327);
        assert_eq!(to_units(0.00005, 10_000), 1);
    }
}
