//! Profiles of a model version's columns (its input features and its outputs): the reference one computed
//! from the reference rows when the version is made, and live ones counted from what it serves, with the
//! same bin edges, so the two compare bin by bin.
//!
//! A column's counts ([`Counts`]) are plain sums: two profiles of the same reference merge exactly by
//! adding them (per thread, per bucket of time, per replica), and merging in any order gives the same
//! profile as counting the combined stream.
//!
//! - Numeric columns are binned on the reference's quantile edges (twenty bins by default, fewer where
//!   quantiles coincide, as on a feature of few values), with an underflow and an overflow bin, so a value
//!   the reference never saw still lands in a bin.
//! - Categorical columns (a vocabulary code: 0 for an unknown value, `i` for the `i`-th word) count by code;
//!   a code outside the vocabulary counts as unknown.
//! - Missing values (NaN) are counted apart and kept out of the bins and the moments.

use serde::{Deserialize, Serialize};

use crate::spec::{Feature, FeatureSpec};

/// Quantile bins a numeric column gets at most.
pub const DEFAULT_BINS: usize = 20;

/// What a column is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// Binned on `edges` (ascending, distinct): bin 0 is below `edges[0]`, bin `i` is
    /// `[edges[i-1], edges[i])`, the last is `edges[last]` and above. Single precision, as models take
    /// their inputs and give their outputs: an edge is exactly a value the model can see, and it reads back
    /// from JSON exactly (a double parsed a unit in the last place off would move a value across it).
    Numeric { edges: Vec<f32> },
    /// A vocabulary code: `labels[0]` is "(unknown)", `labels[i]` the `i`-th word.
    Categorical { labels: Vec<String> },
}

impl Kind {
    pub fn bins(&self) -> usize {
        match self {
            Kind::Numeric { edges } => edges.len() + 1,
            Kind::Categorical { labels } => labels.len(),
        }
    }

    /// The bin a present value falls in.
    pub fn bin(&self, x: f64) -> usize {
        match self {
            Kind::Numeric { edges } => edges.partition_point(|e| f64::from(*e) <= x),
            Kind::Categorical { labels } => {
                let code = x.round();
                if code >= 1.0 && code < labels.len() as f64 && (x - code).abs() < 1e-6 {
                    code as usize
                } else {
                    0
                }
            }
        }
    }

    /// A readable name of bin `i`: a range, or the category.
    pub fn label(&self, i: usize) -> String {
        match self {
            Kind::Numeric { edges } => {
                let lo = i.checked_sub(1).and_then(|j| edges.get(j));
                match (lo, edges.get(i)) {
                    (None, Some(hi)) => format!("< {hi}"),
                    (Some(lo), Some(hi)) => format!("[{lo}, {hi})"),
                    (Some(lo), None) => format!(">= {lo}"),
                    (None, None) => "all".to_string(),
                }
            }
            Kind::Categorical { labels } => labels.get(i).cloned().unwrap_or_default(),
        }
    }
}

/// Which side of the model a column is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Input,
    Output,
}

/// Where a column sits: the tensor and the element within one row of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnRef {
    pub name: String,
    pub role: Role,
    pub tensor: String,
    pub index: usize,
}

/// The counts of one column: mergeable by addition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Counts {
    /// Present (not NaN) values.
    pub count: u64,
    pub missing: u64,
    pub bins: Vec<u64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub sum: f64,
    pub sum_sq: f64,
}

impl Counts {
    pub fn empty(bins: usize) -> Counts {
        Counts {
            bins: vec![0; bins],
            ..Counts::default()
        }
    }

    pub fn observe(&mut self, kind: &Kind, x: f64) {
        self.observe_all(kind, std::iter::once(x));
    }

    /// Counts every value of `values`: what the monitor does per column of a batch. The column's kind is
    /// looked at once and the moments are kept in registers until the end, so a value costs its bin's
    /// search and a few additions.
    pub fn observe_all(&mut self, kind: &Kind, values: impl Iterator<Item = f64>) {
        let (mut count, mut missing) = (0u64, 0u64);
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut sum, mut sum_sq) = (0.0, 0.0);
        let bins = &mut self.bins[..];
        let mut present = |x: f64| {
            count += 1;
            min = min.min(x);
            max = max.max(x);
            sum += x;
            sum_sq += x * x;
        };
        match kind {
            Kind::Numeric { edges } => {
                for x in values {
                    if x.is_nan() {
                        missing += 1;
                        continue;
                    }
                    let bin = edges.partition_point(|e| f64::from(*e) <= x);
                    if let Some(b) = bins.get_mut(bin) {
                        *b += 1;
                    }
                    present(x);
                }
            }
            Kind::Categorical { .. } => {
                for x in values {
                    if x.is_nan() {
                        missing += 1;
                        continue;
                    }
                    if let Some(b) = bins.get_mut(kind.bin(x)) {
                        *b += 1;
                    }
                    present(x);
                }
            }
        }
        self.missing += missing;
        if count > 0 {
            self.count += count;
            self.min = Some(self.min.map_or(min, |m| m.min(min)));
            self.max = Some(self.max.map_or(max, |m| m.max(max)));
            self.sum += sum;
            self.sum_sq += sum_sq;
        }
    }

    /// Adds `other`'s counts; bins of another length (another reference) are refused.
    pub fn merge(&mut self, other: &Counts) -> Result<(), ProfileError> {
        if self.bins.len() != other.bins.len() {
            return Err(ProfileError::Mismatch(format!(
                "{} bins merged with {}",
                self.bins.len(),
                other.bins.len()
            )));
        }
        for (a, b) in self.bins.iter_mut().zip(&other.bins) {
            *a += b;
        }
        self.count += other.count;
        self.missing += other.missing;
        self.min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
        Ok(())
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// Population standard deviation.
    pub fn std(&self) -> Option<f64> {
        let mean = self.mean()?;
        Some(
            (self.sum_sq / self.count as f64 - mean * mean)
                .max(0.0)
                .sqrt(),
        )
    }

    pub fn missing_rate(&self) -> f64 {
        let all = self.count + self.missing;
        if all == 0 {
            0.0
        } else {
            self.missing as f64 / all as f64
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ProfileError {
    #[error("profiles do not match: {0}")]
    Mismatch(String),
    #[error("profile: {0}")]
    Invalid(String),
}

/// One column of a reference profile: where it is, how it is binned, and its reference counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    #[serde(flatten)]
    pub at: ColumnRef,
    #[serde(flatten)]
    pub kind: Kind,
    pub counts: Counts,
    /// A calendar column (the delivery month): any window shorter than a year differs from a year-round
    /// reference, so it is scored and never judged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seasonal: bool,
    /// How much the column's own metric moves between chunks of the reference period, when it was
    /// measured: the drift threshold is never below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
}

/// The column's drift metric (PSI or JS, as [`crate::drift`] judges it) of each chunk of the reference
/// period (a calendar week) against the rest of the reference, that chunk left out (NannyML's rule: a
/// chunk scored against a reference that holds it looks too stable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub chunks: usize,
    pub mean: f64,
    pub std: f64,
    /// `mean + 3 std`.
    pub threshold: f64,
}

/// How many standard deviations above the chunks' mean a metric must go to be drift.
pub const CALIBRATION_SIGMAS: f64 = 3.0;

/// The calibration of `column` from its counts over each chunk; none below three chunks.
pub fn calibrate(column: &Column, chunks: &[Counts]) -> Option<Calibration> {
    let scores: Vec<f64> = chunks
        .iter()
        .filter_map(|chunk| {
            let mut rest = column.counts.clone();
            for (r, c) in rest.bins.iter_mut().zip(&chunk.bins) {
                *r = r.checked_sub(*c)?;
            }
            rest.count = rest.count.checked_sub(chunk.count)?;
            (rest.count > 0 && chunk.count > 0)
                .then(|| crate::drift::metric(&column.kind, &rest, chunk))
        })
        .collect();
    if scores.len() < 3 {
        return None;
    }
    let n = scores.len() as f64;
    let mean = scores.iter().sum::<f64>() / n;
    let std = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
    Some(Calibration {
        chunks: scores.len(),
        mean,
        std,
        threshold: mean + CALIBRATION_SIGMAS * std,
    })
}

/// The reference profile of a model version (`profile.json` beside its manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// What the reference rows were, in words (the file and the period).
    pub source: String,
    pub rows: u64,
    pub columns: Vec<Column>,
}

impl Profile {
    pub fn parse(bytes: &[u8]) -> Result<Profile, ProfileError> {
        let profile: Profile =
            serde_json::from_slice(bytes).map_err(|e| ProfileError::Invalid(e.to_string()))?;
        for c in &profile.columns {
            if c.counts.bins.len() != c.kind.bins() {
                return Err(ProfileError::Invalid(format!(
                    "column `{}` has {} bins for {} edges",
                    c.at.name,
                    c.counts.bins.len(),
                    c.kind.bins()
                )));
            }
            if let Kind::Numeric { edges } = &c.kind {
                if edges
                    .windows(2)
                    .any(|w| w[0].partial_cmp(&w[1]).is_none_or(|o| o.is_ge()))
                {
                    return Err(ProfileError::Invalid(format!(
                        "column `{}`: edges must be finite and ascending",
                        c.at.name
                    )));
                }
            }
        }
        Ok(profile)
    }

    /// Empty live counts shaped like this reference.
    pub fn empty(&self) -> Live {
        Live {
            rows: 0,
            flagged: Vec::new(),
            columns: self
                .columns
                .iter()
                .map(|c| Counts::empty(c.kind.bins()))
                .collect(),
        }
    }
}

/// A column's reference made from its values: quantile edges for a numeric column, the vocabulary for a
/// categorical one.
pub fn reference_column(at: ColumnRef, kind_of: KindOf, values: &[f64], bins: usize) -> Column {
    let kind = match kind_of {
        KindOf::Categorical(words) => Kind::Categorical {
            labels: std::iter::once("(unknown)".to_string())
                .chain(words)
                .collect(),
        },
        KindOf::Numeric => Kind::Numeric {
            edges: quantile_edges(values, bins),
        },
    };
    let mut counts = Counts::empty(kind.bins());
    for &x in values {
        counts.observe(&kind, x);
    }
    Column {
        at,
        kind,
        counts,
        seasonal: false,
        calibration: None,
    }
}

/// Whether a feature follows the calendar (see [`Column::seasonal`]).
pub fn seasonal(feature: &Feature) -> bool {
    matches!(feature, Feature::DeliveryMonth)
}

/// How to profile a column.
pub enum KindOf {
    Numeric,
    /// The vocabulary, in code order (code `i` is word `i - 1`).
    Categorical(Vec<String>),
}

/// How each feature of a spec is profiled: categorical for a vocabulary code, numeric otherwise.
pub fn kinds(spec: &FeatureSpec) -> Vec<KindOf> {
    spec.features
        .iter()
        .map(|f| match f {
            Feature::Category { vocabulary } | Feature::Supplier { vocabulary } => {
                KindOf::Categorical(vocabulary.clone())
            }
            _ => KindOf::Numeric,
        })
        .collect()
}

/// The distinct interior quantiles at `i / bins`, `i` in `1..bins`, of the present values (the lower of
/// the two order statistics). Fewer where they coincide; none for a constant column.
pub fn quantile_edges(values: &[f64], bins: usize) -> Vec<f32> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    let mut edges: Vec<f32> = Vec::new();
    if sorted.is_empty() {
        return edges;
    }
    let n = sorted.len();
    for i in 1..bins {
        let at = (i * n / bins).min(n - 1);
        let q = sorted[at] as f32;
        // An edge at the minimum would leave its bin below it empty.
        if q.is_finite() && f64::from(q) > sorted[0] && edges.last().is_none_or(|last| q > *last) {
            edges.push(q);
        }
    }
    edges
}

/// Counts of a live window, one per reference column, in the reference's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Live {
    pub rows: u64,
    pub columns: Vec<Counts>,
    /// Rows at or above each of the version's alert thresholds, when it has some (an anomaly model's low,
    /// medium and high).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flagged: Vec<u64>,
}

impl Live {
    /// Counts `rows` rows: `value(column, row)` gives each column's value in each row.
    pub fn observe_rows(
        &mut self,
        reference: &Profile,
        rows: usize,
        value: impl Fn(usize, usize) -> f64,
    ) {
        for c in 0..reference.columns.len() {
            self.observe_column(reference, c, (0..rows).map(|r| value(c, r)));
        }
        self.rows += rows as u64;
    }

    /// Counts column `c`'s values of a batch. A caller counting a batch column by column adds its rows
    /// with [`Live::add_rows`] once.
    pub fn observe_column(
        &mut self,
        reference: &Profile,
        c: usize,
        values: impl Iterator<Item = f64>,
    ) {
        if let (Some(column), Some(counts)) = (reference.columns.get(c), self.columns.get_mut(c)) {
            counts.observe_all(&column.kind, values);
        }
    }

    /// Counts `rows` more rows: after each column's values were counted with [`Live::observe_column`].
    pub fn add_rows(&mut self, rows: usize) {
        self.rows += rows as u64;
    }

    pub fn merge(&mut self, other: &Live) -> Result<(), ProfileError> {
        if self.columns.len() != other.columns.len() {
            return Err(ProfileError::Mismatch(format!(
                "{} columns merged with {}",
                self.columns.len(),
                other.columns.len()
            )));
        }
        for (a, b) in self.columns.iter_mut().zip(&other.columns) {
            a.merge(b)?;
        }
        if self.flagged.len() < other.flagged.len() {
            self.flagged.resize(other.flagged.len(), 0);
        }
        for (a, b) in self.flagged.iter_mut().zip(&other.flagged) {
            *a += b;
        }
        self.rows += other.rows;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(name: &str) -> ColumnRef {
        ColumnRef {
            name: name.into(),
            role: Role::Input,
            tensor: "x".into(),
            index: 0,
        }
    }

    #[test]
    fn edges_are_distinct_quantiles_and_values_fall_in_the_bins_around_them() {
        let values: Vec<f64> = (0..100).map(f64::from).collect();
        let edges = quantile_edges(&values, 4);
        assert_eq!(edges, [25.0, 50.0, 75.0]);
        let kind = Kind::Numeric { edges };
        assert_eq!(kind.bin(-1.0), 0);
        assert_eq!(kind.bin(24.9), 0);
        assert_eq!(kind.bin(25.0), 1);
        assert_eq!(kind.bin(99.0), 3);
        assert_eq!(kind.bin(1e9), 3);
        assert_eq!(kind.label(0), "< 25");
        assert_eq!(kind.label(3), ">= 75");
        // A feature of three values gets a bin per value; a constant one a single bin.
        let few: Vec<f64> = (0..90).map(|i| f64::from(i % 3)).collect();
        assert_eq!(quantile_edges(&few, 20), [1.0, 2.0]);
        assert!(quantile_edges(&[7.0; 50], 20).is_empty());
        assert!(quantile_edges(&[f64::NAN], 20).is_empty());
    }

    #[test]
    fn categorical_codes_outside_the_vocabulary_count_as_unknown_and_nan_as_missing() {
        let c = reference_column(
            at("category"),
            KindOf::Categorical(vec!["a".into(), "b".into()]),
            &[0.0, 1.0, 2.0, 2.0, 3.0, 1.5, -4.0, f64::NAN],
            20,
        );
        assert_eq!(c.counts.bins, [4, 1, 2]);
        assert_eq!(c.counts.missing, 1);
        assert_eq!(c.kind.label(2), "b");
    }

    #[test]
    fn a_column_counted_at_once_equals_the_hand_count_and_the_count_value_by_value() {
        let numeric = Kind::Numeric {
            edges: vec![1.0, 2.0, 3.0],
        };
        let categorical = Kind::Categorical {
            labels: vec!["(unknown)".into(), "a".into(), "b".into()],
        };
        for (kind, values, bins, sum, sum_sq) in [
            (
                &numeric,
                [0.5, 1.0, 2.5, 3.0, 7.0, f64::NAN],
                vec![1, 1, 1, 2],
                14.0,
                65.5,
            ),
            // 5 and 1.5 are no code: unknown.
            (
                &categorical,
                [1.0, 2.0, 2.0, 5.0, 1.5, f64::NAN],
                vec![2, 1, 2],
                11.5,
                36.25,
            ),
        ] {
            let mut at_once = Counts::empty(kind.bins());
            at_once.observe_all(kind, values.iter().copied());
            assert_eq!(at_once.bins, bins);
            assert_eq!((at_once.count, at_once.missing), (5, 1));
            assert_eq!((at_once.sum, at_once.sum_sq), (sum, sum_sq));
            let mut one_by_one = Counts::empty(kind.bins());
            for x in values {
                one_by_one.observe(kind, x);
            }
            assert_eq!(at_once, one_by_one);
            assert_eq!(at_once.min, values.iter().copied().reduce(f64::min));
        }
        let mut none = Counts::empty(2);
        none.observe_all(&numeric, [f64::NAN].into_iter());
        assert_eq!(
            (none.min, none.max, none.count, none.missing),
            (None, None, 0, 1)
        );
    }

    #[test]
    fn merged_counts_equal_the_counts_of_the_combined_stream_whatever_the_split() {
        let values: Vec<f64> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f64 / 10.0)
            .collect();
        let reference = Profile {
            source: "test".into(),
            rows: 1000,
            columns: vec![reference_column(at("x"), KindOf::Numeric, &values, 20)],
        };
        let stream: Vec<f64> = (0..777)
            .map(|i| {
                if i % 50 == 0 {
                    f64::NAN
                } else {
                    (i % 130) as f64 - 10.0
                }
            })
            .collect();
        let mut whole = reference.empty();
        whole.observe_rows(&reference, stream.len(), |_, r| stream[r]);
        for split in [0, 1, 400, 776, 777] {
            let (a, b) = stream.split_at(split);
            let (mut left, mut right) = (reference.empty(), reference.empty());
            left.observe_rows(&reference, a.len(), |_, r| a[r]);
            right.observe_rows(&reference, b.len(), |_, r| b[r]);
            right.merge(&left).unwrap();
            assert_eq!(right.rows, whole.rows);
            let (m, w) = (&right.columns[0], &whole.columns[0]);
            assert_eq!((m.count, m.missing, &m.bins), (w.count, w.missing, &w.bins));
            assert_eq!((m.min, m.max), (w.min, w.max));
            assert!((m.sum - w.sum).abs() < 1e-9 && (m.sum_sq - w.sum_sq).abs() < 1e-6);
        }
        let other = Live {
            rows: 1,
            columns: vec![Counts::empty(3)],
            flagged: vec![1],
        };
        assert!(whole.merge(&other).is_err());
    }

    #[test]
    fn a_profile_with_bins_that_do_not_fit_its_edges_is_refused() {
        let mut c = reference_column(at("x"), KindOf::Numeric, &[1.0, 2.0, 3.0, 4.0], 4);
        c.counts.bins.push(0);
        let bad = Profile {
            source: "t".into(),
            rows: 4,
            columns: vec![c],
        };
        let bytes = serde_json::to_vec(&bad).unwrap();
        assert!(Profile::parse(&bytes).is_err());
        assert!(Profile::parse(b"{").is_err());
    }
}
