//! Realized accuracy: logged price predictions checked against the prices observed afterwards.
//!
//! The label of a prediction asked for day `D` is the mean price of the first day in
//! `[D, D + label_days)` on which the same material was observed from the same supplier (from any supplier,
//! for a prediction without one), read from the organization's price history. The model prices a purchase
//! on its day from what came before it, so the day's own observations are fair labels. A prediction with no
//! label is `pending` while its label window is still open (by the domain's clock) and `unlabelled` after.

use mercator_features::online::OnlineHistory;
use mercator_features::Day;
use mercator_store::LoggedPrediction;
use serde::Serialize;

/// How the predictions of a window did against what followed.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Accuracy {
    /// Logged predictions answered in the window (at most the configured cap; `truncated` says).
    pub logged: u64,
    pub truncated: bool,
    /// With a label, and without one yet, and without one for good.
    pub labelled: u64,
    pub pending: u64,
    pub unlabelled: u64,
    pub label_days: u32,
    /// Mean |predicted − actual| / actual.
    pub mape: Option<f64>,
    /// Median of the same: MAPE is pulled by small actuals.
    pub median_ape: Option<f64>,
    /// Mean (predicted − actual) / actual: above 0, the model prices high.
    pub bias: Option<f64>,
    /// Mean |predicted − actual|, in the prices' currency.
    pub mae: Option<f64>,
    /// Per interval level asked for.
    pub coverage: Vec<Coverage>,
}

/// How often the actual fell inside the interval, against its nominal level.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Coverage {
    pub level: f64,
    pub labelled: u64,
    pub covered: u64,
    pub coverage: f64,
    /// The nominal level ± 1.96 binomial standard errors at this count: coverage outside it is off.
    pub expected_low: f64,
    pub expected_high: f64,
    /// Mean (upper − lower) / predicted.
    pub mean_relative_width: f64,
}

/// The accuracy of `logged` (all of one model version), labelled from `history`, `today` the domain's day.
pub fn realized(
    logged: &[LoggedPrediction],
    truncated: bool,
    history: &OnlineHistory,
    label_days: u32,
    today: Day,
) -> Accuracy {
    let mut errors: Vec<f64> = Vec::new();
    let mut absolute = 0.0;
    let mut by_level: Vec<(f64, u64, u64, f64)> = Vec::new();
    let (mut pending, mut unlabelled) = (0, 0);
    let days = label_days.max(1) as i64;
    for p in logged {
        let from = p.as_of_day.clamp(i64::from(Day::MIN), i64::from(Day::MAX)) as Day;
        let to = (i64::from(from) + days - 1).min(i64::from(Day::MAX)) as Day;
        let label = history.first_price(
            &p.organization_id,
            &p.material_id,
            p.supplier_id.as_deref(),
            from,
            to,
        );
        let Some((_, actual)) = label.filter(|(_, a)| *a > 0.0) else {
            if i64::from(today) <= i64::from(to) {
                pending += 1;
            } else {
                unlabelled += 1;
            }
            continue;
        };
        errors.push((p.predicted - actual) / actual);
        absolute += (p.predicted - actual).abs();
        let covered = u64::from(p.lower_bound <= actual && actual <= p.upper_bound);
        let width = if p.predicted > 0.0 {
            (p.upper_bound - p.lower_bound) / p.predicted
        } else {
            0.0
        };
        match by_level
            .iter_mut()
            .find(|(l, ..)| (*l - p.level).abs() < 1e-9)
        {
            Some(entry) => {
                entry.1 += 1;
                entry.2 += covered;
                entry.3 += width;
            }
            None => by_level.push((p.level, 1, covered, width)),
        }
    }
    let n = errors.len();
    let mean = |v: f64| (n > 0).then(|| v / n as f64);
    let mut ape: Vec<f64> = errors.iter().map(|e| e.abs()).collect();
    ape.sort_by(f64::total_cmp);
    let median_ape = (n > 0).then(|| {
        if n % 2 == 1 {
            ape[n / 2]
        } else {
            (ape[n / 2 - 1] + ape[n / 2]) / 2.0
        }
    });
    by_level.sort_by(|a, b| a.0.total_cmp(&b.0));
    Accuracy {
        logged: logged.len() as u64,
        truncated,
        labelled: n as u64,
        pending,
        unlabelled,
        label_days,
        mape: mean(ape.iter().sum()),
        median_ape,
        bias: mean(errors.iter().sum()),
        mae: mean(absolute),
        coverage: by_level
            .into_iter()
            .map(|(level, labelled, covered, width)| {
                let se = (level * (1.0 - level) / labelled as f64).sqrt();
                Coverage {
                    level,
                    labelled,
                    covered,
                    coverage: covered as f64 / labelled as f64,
                    expected_low: (level - 1.96 * se).max(0.0),
                    expected_high: (level + 1.96 * se).min(1.0),
                    mean_relative_width: width / labelled as f64,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mercator_features::online::Observation;

    fn logged(material: &str, day: i64, predicted: f64, lo: f64, hi: f64) -> LoggedPrediction {
        LoggedPrediction {
            id: format!("{material}-{day}"),
            organization_id: "org".into(),
            model: "price".into(),
            version: 2,
            material_id: material.into(),
            supplier_id: Some("s".into()),
            as_of_day: day,
            quantity: 1.0,
            predicted,
            lower_bound: lo,
            upper_bound: hi,
            level: 0.8,
            inputs_digest: String::new(),
            created_at: 0,
        }
    }

    #[test]
    fn labels_are_the_first_later_day_and_the_figures_are_the_hand_computed_ones() {
        let history = OnlineHistory::default();
        let at = |day: i64| day * 86_400_000;
        // m1: 10 and 12 on day 100 (mean 11); m2: 20 on day 103 only.
        history.add([
            Observation {
                organization: "org",
                material: "m1",
                supplier: Some("s"),
                observed_at_ms: at(100),
                price: 10.0,
            },
            Observation {
                organization: "org",
                material: "m1",
                supplier: Some("s"),
                observed_at_ms: at(100),
                price: 12.0,
            },
            Observation {
                organization: "org",
                material: "m2",
                supplier: Some("s"),
                observed_at_ms: at(103),
                price: 20.0,
            },
        ]);
        let rows = [
            logged("m1", 100, 12.1, 10.0, 12.0), // actual 11: +10%, covered
            logged("m2", 101, 18.0, 17.0, 19.5), // actual 20 (day 103): -10%, not covered
            logged("m2", 99, 18.0, 0.0, 99.0),   // day 103 is past 99 + 3: no label, window over
            logged("m1", 104, 11.0, 0.0, 99.0),  // nothing yet, window open on day 105
        ];
        let a = realized(&rows, false, &history, 3, 105);
        assert_eq!((a.labelled, a.pending, a.unlabelled), (2, 1, 1));
        assert!((a.mape.unwrap() - 0.1).abs() < 1e-12, "{a:?}");
        assert!(a.bias.unwrap().abs() < 1e-12, "{a:?}");
        assert!((a.mae.unwrap() - (1.1 + 2.0) / 2.0).abs() < 1e-12, "{a:?}");
        assert_eq!(a.coverage.len(), 1);
        assert_eq!((a.coverage[0].labelled, a.coverage[0].covered), (2, 1));
        assert!((a.coverage[0].coverage - 0.5).abs() < 1e-12);
        let empty = realized(&[], false, &history, 3, 105);
        assert_eq!((empty.mape, empty.coverage.len()), (None, 0));
    }
}
