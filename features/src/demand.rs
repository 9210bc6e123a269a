//! Demand features: what a material's order history says about how much of it will be needed in the weeks
//! ahead. One implementation, used to build the demand model's training frame (`mercator features
//! demand-frame`) and to answer `POST /api/v1/analytics/demand-forecast`.
//!
//! A row reads the material's orders placed in the `window_days` before its as-of day (the as-of rule of the
//! price features: nothing from the as-of day on). Orders come in lumps, one every week or three, so every
//! rate is put against the material's own **scale**, its ordered quantity per day over the window: the
//! features and the model's targets are ratios to it, which lets one model serve materials used by the
//! tonne and by the piece. The scale is also the row's last column, by which the model's graph multiplies
//! its ratios back into units per day.
//!
//! The window counts as a *full year* of history when its first order falls within its first
//! `full_within_days` (an ordering cycle); the scale is then the quantity over the whole window, else over
//! the days since that first order, and last year's features are 1 (the scale's own level) with
//! `full_year` 0.
//!
//! ```toml
//! name = "demand_v1"
//! kind = "demand"
//! window_days = 364
//! min_history_days = 91
//! full_within_days = 28
//! weeks = 8
//!
//! [[features]]
//! kind = "rate"
//! days = 28
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::history::{date_of, Day};
use crate::FeatureError;

/// Days in a year of whole weeks: last year's same weekday.
pub const YEAR_DAYS: u32 = 364;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemandSpec {
    pub name: String,
    /// Always `demand`: tells this spec from the others at a glance.
    pub kind: String,
    /// The orders a row reads: those placed in the `window_days` before as-of.
    pub window_days: u32,
    /// Fewer days than this from the window's first order to as-of: no row (`insufficient_history`).
    pub min_history_days: u32,
    /// The window is a full year when its first order is within this many days of its start.
    pub full_within_days: u32,
    /// Weeks ahead the model forecasts (its output's width).
    pub weeks: u32,
    pub features: Vec<DemandFeature>,
}

/// One input feature of a demand model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DemandFeature {
    /// Quantity ordered per day over the `days` before as-of, ÷ the scale.
    Rate { days: u32 },
    /// Quantity ordered per day over `days` starting `offset` days after as-of's day one year (364 days)
    /// before, ÷ the scale: last year's demand for the days ahead. 1 without a full year.
    LastYear { offset: u32, days: u32 },
    /// 1 when the window holds a full year of history, else 0.
    FullYear,
    /// Days since the last order ÷ the median days between the window's orders, at most 3: how due the
    /// next order is. 1 with fewer than two orders.
    Due,
    /// The last order's quantity ÷ (the scale × the median days between orders): the cycles of demand it
    /// covers, 1 with fewer than two orders.
    LastCover,
    /// The scale itself, in units per day: must be the last feature.
    Scale,
}

impl DemandFeature {
    pub fn name(&self) -> String {
        match self {
            DemandFeature::Rate { days } => format!("rate_{days}"),
            DemandFeature::LastYear { offset, days } => format!("last_year_{offset}_{days}"),
            DemandFeature::FullYear => "full_year".into(),
            DemandFeature::Due => "due".into(),
            DemandFeature::LastCover => "last_cover".into(),
            DemandFeature::Scale => "scale".into(),
        }
    }
}

impl DemandSpec {
    pub fn parse(text: &str) -> Result<DemandSpec, FeatureError> {
        let spec: DemandSpec =
            toml::from_str(text).map_err(|e| FeatureError::Spec(e.to_string()))?;
        let fail = |m: &str| Err(FeatureError::Spec(format!("{}: {m}", spec.name)));
        if spec.kind != "demand" {
            return fail("kind must be `demand`");
        }
        if !(YEAR_DAYS..=3 * YEAR_DAYS).contains(&spec.window_days) {
            return fail("window_days must be 364 to 1092");
        }
        if spec.min_history_days == 0 || spec.min_history_days > spec.window_days {
            return fail("min_history_days must be 1 to window_days");
        }
        if spec.full_within_days >= spec.window_days {
            return fail("full_within_days must be below window_days");
        }
        if !(1..=52).contains(&spec.weeks) {
            return fail("weeks must be 1 to 52");
        }
        if spec.features.last() != Some(&DemandFeature::Scale)
            || spec
                .features
                .iter()
                .filter(|f| **f == DemandFeature::Scale)
                .count()
                != 1
        {
            return fail("the last feature, and only it, is `scale`");
        }
        for f in &spec.features {
            match *f {
                DemandFeature::Rate { days } if days == 0 || days > spec.window_days => {
                    return fail("a rate's days must be 1 to window_days")
                }
                DemandFeature::LastYear { offset, days }
                    if days == 0 || offset + days > YEAR_DAYS =>
                {
                    return fail("last_year needs days >= 1 and offset + days <= 364")
                }
                _ => {}
            }
        }
        Ok(spec)
    }

    pub fn from_file(path: &Path) -> Result<DemandSpec, FeatureError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FeatureError::Spec(format!("{}: {e}", path.display())))?;
        DemandSpec::parse(&text)
    }

    pub fn names(&self) -> Vec<String> {
        self.features.iter().map(DemandFeature::name).collect()
    }

    /// The first day of the window a row as of `as_of` reads.
    pub fn window_start(&self, as_of: Day) -> Day {
        as_of - self.window_days as Day
    }
}

/// What a row rests on, for the answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemandSummary {
    /// Orders (days with an order) in the window.
    pub orders: usize,
    pub first: Option<Day>,
    pub full_year: bool,
    /// Units per day.
    pub scale: f64,
    /// Days between orders, the median (0 below two orders).
    pub median_gap: f64,
}

/// The demand row of a material as of `as_of` from its orders `(day, quantity)`, in any order; orders outside
/// the window are ignored. `insufficient_history` when the window's first order is less than
/// `min_history_days` before as-of, or when nothing was ordered.
pub fn demand_row(
    spec: &DemandSpec,
    orders: &[(Day, f64)],
    as_of: Day,
) -> Result<(Vec<f32>, DemandSummary), FeatureError> {
    let start = spec.window_start(as_of);
    // Quantity per day in the window, by day.
    let mut days: BTreeMap<Day, f64> = BTreeMap::new();
    for &(day, quantity) in orders {
        if (start..as_of).contains(&day) {
            *days.entry(day).or_default() += quantity;
        }
    }
    let first = days.keys().next().copied();
    let span = first.map_or(0, |f| as_of - f);
    let total: f64 = days.values().sum();
    if span < spec.min_history_days as Day || total <= 0.0 {
        return Err(FeatureError::TooLittleOrderHistory {
            days: span.max(0) as usize,
            needed: spec.min_history_days,
            window: spec.window_days,
        });
    }
    let first = first.unwrap_or(start);
    let full_year = first - start < spec.full_within_days as Day;
    let scale = total
        / if full_year {
            spec.window_days
        } else {
            span as u32
        } as f64;
    let sum = |from: Day, to: Day| -> f64 { days.range(from..to).map(|(_, q)| q).sum() };
    let mut gaps: Vec<f64> = days
        .keys()
        .zip(days.keys().skip(1))
        .map(|(a, b)| f64::from(b - a))
        .collect();
    gaps.sort_by(f64::total_cmp);
    let median_gap = match gaps.len() {
        0 => 0.0,
        n if n % 2 == 1 => gaps[n / 2],
        n => 0.5 * (gaps[n / 2 - 1] + gaps[n / 2]),
    };
    let (last_day, last_quantity) = days
        .iter()
        .next_back()
        .map_or((as_of, 0.0), |(d, q)| (*d, *q));
    let row = spec
        .features
        .iter()
        .map(|f| {
            let value = match *f {
                DemandFeature::Rate { days } => {
                    sum(as_of - days as Day, as_of) / f64::from(days) / scale
                }
                DemandFeature::LastYear { offset, days } if full_year => {
                    let from = as_of - YEAR_DAYS as Day + offset as Day;
                    sum(from, from + days as Day) / f64::from(days) / scale
                }
                DemandFeature::LastYear { .. } => 1.0,
                DemandFeature::FullYear => f64::from(u8::from(full_year)),
                DemandFeature::Due if median_gap > 0.0 => {
                    (f64::from(as_of - last_day) / median_gap).min(3.0)
                }
                DemandFeature::LastCover if median_gap > 0.0 => {
                    last_quantity / (scale * median_gap)
                }
                DemandFeature::Due | DemandFeature::LastCover => 1.0,
                DemandFeature::Scale => scale,
            };
            value as f32
        })
        .collect();
    Ok((
        row,
        DemandSummary {
            orders: days.len(),
            first: Some(first),
            full_year,
            scale,
            median_gap,
        },
    ))
}

/// The training frame of a demand model: one row per material and as-of day whose weeks ahead all fall
/// before `end`, its features and the quantity ordered per day in each week ahead (the targets).
pub struct Frame {
    pub columns: Vec<String>,
    pub weeks: u32,
    pub rows: Vec<FrameRow>,
}

pub struct FrameRow {
    pub material: String,
    pub as_of: Day,
    pub features: Vec<f32>,
    /// Units per day in week 1, 2, … after as-of.
    pub targets: Vec<f64>,
}

/// Builds the frame from an order CSV (one row per line: material_code, ordered_on, quantity; a `status`
/// column, when there is one, leaves out `cancelled` lines), one row every `every` days per material.
pub fn frame(
    spec: &DemandSpec,
    orders: &Path,
    end: Day,
    every: u32,
) -> Result<Frame, FeatureError> {
    let fail = |e: String| FeatureError::Materialize(format!("{}: {e}", orders.display()));
    let mut reader = csv::Reader::from_path(orders).map_err(|e| fail(e.to_string()))?;
    let headers = reader.headers().map_err(|e| fail(e.to_string()))?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| fail(format!("no column `{name}`")))
    };
    let (material, ordered_on, quantity) = (
        column("material_code")?,
        column("ordered_on")?,
        column("quantity")?,
    );
    let status = headers.iter().position(|h| h == "status");
    let mut by_material: BTreeMap<String, Vec<(Day, f64)>> = BTreeMap::new();
    for record in reader.records() {
        let r = record.map_err(|e| fail(e.to_string()))?;
        if status.is_some_and(|s| &r[s] == "cancelled") {
            continue;
        }
        let day = r[ordered_on]
            .parse::<chrono::NaiveDate>()
            .map(crate::day_of)
            .map_err(|e| fail(format!("`{}`: {e}", &r[ordered_on])))?;
        let q: f64 = r[quantity]
            .parse()
            .map_err(|e| fail(format!("`{}`: {e}", &r[quantity])))?;
        by_material
            .entry(r[material].to_string())
            .or_default()
            .push((day, q));
    }
    let horizon = 7 * spec.weeks as Day;
    let mut rows = Vec::new();
    for (code, orders) in &by_material {
        let Some(first) = orders.iter().map(|o| o.0).min() else {
            continue;
        };
        let mut as_of = first + spec.min_history_days as Day;
        while as_of + horizon <= end {
            if let Ok((features, _)) = demand_row(spec, orders, as_of) {
                let targets = (0..spec.weeks as Day)
                    .map(|w| {
                        let from = as_of + 7 * w;
                        orders
                            .iter()
                            .filter(|o| (from..from + 7).contains(&o.0))
                            .map(|o| o.1)
                            .sum::<f64>()
                            / 7.0
                    })
                    .collect();
                rows.push(FrameRow {
                    material: code.clone(),
                    as_of,
                    features,
                    targets,
                });
            }
            as_of += every.max(1) as Day;
        }
    }
    Ok(Frame {
        columns: spec.names(),
        weeks: spec.weeks,
        rows,
    })
}

/// Writes a frame as CSV: material_code, as_of, each feature, week_1 … week_N (units per day).
pub fn write_frame(frame: &Frame, path: &Path) -> Result<(), FeatureError> {
    let fail = |e: String| FeatureError::Materialize(format!("{}: {e}", path.display()));
    let mut w = csv::Writer::from_path(path).map_err(|e| fail(e.to_string()))?;
    let mut header = vec!["material_code".to_string(), "as_of".to_string()];
    header.extend(frame.columns.iter().cloned());
    header.extend((1..=frame.weeks).map(|k| format!("week_{k}")));
    w.write_record(&header).map_err(|e| fail(e.to_string()))?;
    for r in &frame.rows {
        let mut record = vec![r.material.clone(), date_of(r.as_of).to_string()];
        record.extend(r.features.iter().map(|v| v.to_string()));
        record.extend(r.targets.iter().map(|v| v.to_string()));
        w.write_record(&record).map_err(|e| fail(e.to_string()))?;
    }
    w.flush().map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DemandSpec {
        DemandSpec::parse(
            r#"
name = "t"
kind = "demand"
window_days = 364
min_history_days = 91
full_within_days = 28
weeks = 8
features = [
  { kind = "rate", days = 28 },
  { kind = "last_year", offset = 0, days = 14 },
  { kind = "full_year" },
  { kind = "due" },
  { kind = "last_cover" },
  { kind = "scale" },
]
"#,
        )
        .unwrap()
    }

    /// 100 units every 10 days from day 0: a scale of 10/day over a full year.
    #[test]
    fn a_regular_history() {
        let orders: Vec<(Day, f64)> = (0..60).map(|i| (i * 10, 100.0)).collect();
        let (row, s) = demand_row(&spec(), &orders, 400).unwrap();
        // Window [36, 400): orders on 40, 50, …, 390 = 36 orders, 3,600 units.
        assert_eq!(s.orders, 36);
        assert!(s.full_year);
        assert!((s.scale - 3600.0 / 364.0).abs() < 1e-12);
        // Last 28 days [372, 400): orders on 380, 390.
        assert!((f64::from(row[0]) - (200.0 / 28.0) / s.scale).abs() < 1e-6);
        // Last year [36, 50): orders on 40.
        assert!((f64::from(row[1]) - (100.0 / 14.0) / s.scale).abs() < 1e-6);
        assert_eq!(row[2], 1.0);
        assert!(
            (row[3] - 1.0).abs() < 1e-6,
            "10 days since the last, gap 10"
        );
        assert!((f64::from(row[4]) - 100.0 / (s.scale * 10.0)).abs() < 1e-6);
        assert!((f64::from(row[5]) - s.scale).abs() < 1e-4);
    }

    #[test]
    fn a_short_history_is_refused_and_a_part_year_is_scaled_by_its_days() {
        let orders = [(300, 50.0), (350, 50.0)];
        assert!(matches!(
            demand_row(&spec(), &orders, 380),
            Err(FeatureError::TooLittleOrderHistory { days: 80, .. })
        ));
        let (row, s) = demand_row(&spec(), &orders, 400).unwrap();
        assert!(!s.full_year);
        assert!((s.scale - 1.0).abs() < 1e-12, "100 units over 100 days");
        assert_eq!(row[1], 1.0);
        assert_eq!(row[2], 0.0);
        // An order on the as-of day is not known yet.
        assert_eq!(
            demand_row(&spec(), &[(300, 50.0), (391, 9.0)], 391)
                .unwrap()
                .1
                .orders,
            1
        );
    }

    #[test]
    fn specs_are_checked() {
        let bad = |text: &str| DemandSpec::parse(text).is_err();
        let head = "name = \"t\"\nkind = \"demand\"\nwindow_days = 364\nmin_history_days = 91\nfull_within_days = 28\nweeks = 8\n";
        assert!(bad(&format!(
            "{head}features = [{{ kind = \"rate\", days = 7 }}]"
        )));
        assert!(bad(&format!(
            "{head}features = [{{ kind = \"scale\" }}, {{ kind = \"rate\", days = 7 }}]"
        )));
        assert!(bad(&format!(
            "{head}features = [{{ kind = \"last_year\", offset = 360, days = 7 }}, {{ kind = \"scale\" }}]"
        )));
        assert!(!bad(&format!(
            "{head}features = [{{ kind = \"rate\", days = 7 }}, {{ kind = \"scale\" }}]"
        )));
    }
}
