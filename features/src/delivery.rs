//! Delivery features: what a supplier's order book says about the chance that a new order line arrives
//! late. One implementation, used to build the supplier-risk model's training frame
//! (`mercator features delivery-frame`) and to answer `GET /api/v1/suppliers/{id}/risk`.
//!
//! A line is *late* when the quantity delivered by its promised date (rejected units counted: lateness is
//! about arrival, quality has its own rate) is short of the quantity ordered. The as-of rule of the price
//! features holds: a row reads only what was known before its as-of day. A line's lateness is known once its
//! promised day is past (`promised < as_of`); a receipt is known from its day on (`day < as_of`).
//!
//! The spec (`features.toml` of a risk model):
//!
//! ```toml
//! name = "risk_v1"
//! kind = "delivery"
//! window_days = 365        # the supplier's lines promised (and receipts made) in the year before as-of
//! prior_late = 1.0         # the late rate is (late + prior_late) / (lines + prior_lines)
//! prior_lines = 5.0
//!
//! [[features]]
//! kind = "supplier_late_rate"
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::history::{date_of, Day};
use crate::FeatureError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySpec {
    pub name: String,
    /// Always `delivery`: tells this spec from a price spec at a glance.
    pub kind: String,
    pub window_days: u32,
    pub prior_late: f64,
    pub prior_lines: f64,
    pub features: Vec<DeliveryFeature>,
}

/// One input feature of a risk model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeliveryFeature {
    /// ln(quantity ordered).
    LogQuantity,
    /// Days from as-of to the promised date.
    LeadDays,
    /// Month of the promised date, 1 to 12.
    PromisedMonth,
    /// The material's category: its position in the vocabulary plus one; 0 for one not in it.
    Category { vocabulary: Vec<String> },
    /// (late + prior_late) / (known + prior_lines) over the supplier's lines promised in the window.
    SupplierLateRate,
    /// Mean days late (0 when on time) of the window's lines delivered in full before as-of; 0 without.
    SupplierMeanDelay,
    /// Mean days from order to delivery in full of those lines, minus this line's lead days: how much
    /// shorter the promise is than what the supplier has taken; 0 without.
    LeadShortfall,
    /// Sample standard deviation of those lines' days from order to delivery in full; 0 below two.
    SupplierLeadStd,
    /// Rejected ÷ delivered over the supplier's receipts in the window; 0 without.
    SupplierDefectRate,
    /// ln(1 + the lines whose lateness is known in the window).
    SupplierLines,
    /// ln(lead days / the median days from order to promise of the supplier's lines ordered in the window):
    /// below 0 when this promise is shorter than the supplier usually gives; 0 without lines.
    LeadToUsual,
    /// ln(quantity / the median quantity of the supplier's lines of this material ordered in the window);
    /// 0 without any.
    QuantityToUsual,
}

impl DeliveryFeature {
    pub fn name(&self) -> &'static str {
        match self {
            DeliveryFeature::LogQuantity => "log_quantity",
            DeliveryFeature::LeadDays => "lead_days",
            DeliveryFeature::PromisedMonth => "promised_month",
            DeliveryFeature::Category { .. } => "category",
            DeliveryFeature::SupplierLateRate => "supplier_late_rate",
            DeliveryFeature::SupplierMeanDelay => "supplier_mean_delay",
            DeliveryFeature::LeadShortfall => "lead_shortfall",
            DeliveryFeature::SupplierLeadStd => "supplier_lead_std",
            DeliveryFeature::SupplierDefectRate => "supplier_defect_rate",
            DeliveryFeature::SupplierLines => "supplier_lines",
            DeliveryFeature::LeadToUsual => "lead_to_usual",
            DeliveryFeature::QuantityToUsual => "quantity_to_usual",
        }
    }
}

impl DeliverySpec {
    pub fn parse(text: &str) -> Result<DeliverySpec, FeatureError> {
        let spec: DeliverySpec =
            toml::from_str(text).map_err(|e| FeatureError::Spec(e.to_string()))?;
        let fail = |m: &str| Err(FeatureError::Spec(m.into()));
        if spec.kind != "delivery" {
            return fail("kind must be \"delivery\"");
        }
        if spec.window_days == 0 || spec.window_days > 3660 {
            return fail("window_days must be 1 to 3660");
        }
        if !(spec.prior_late >= 0.0 && spec.prior_lines > spec.prior_late && spec.prior_lines < 1e6)
        {
            return fail("prior_lines must exceed prior_late, which is at least 0");
        }
        if spec.features.is_empty() {
            return fail("a spec lists at least one feature");
        }
        let mut names = spec.names();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(FeatureError::Spec(format!(
                "feature {} is listed twice",
                w[0]
            )));
        }
        Ok(spec)
    }

    pub fn from_file(path: &Path) -> Result<DeliverySpec, FeatureError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FeatureError::Spec(format!("{}: {e}", path.display())))?;
        DeliverySpec::parse(&text)
            .map_err(|e| FeatureError::Spec(format!("{}: {e}", path.display())))
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.features.iter().map(DeliveryFeature::name).collect()
    }
}

/// One receipt against a line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Receipt {
    pub day: Day,
    pub quantity: f64,
    pub rejected: f64,
}

/// One of the supplier's order lines and its receipts.
#[derive(Debug, Clone, PartialEq)]
pub struct BookLine {
    pub material: String,
    pub ordered: Day,
    pub promised: Day,
    pub quantity: f64,
    pub receipts: Vec<Receipt>,
}

impl BookLine {
    /// The day the quantity delivered (rejects counted) reached the quantity ordered, if it has.
    pub fn complete(&self) -> Option<Day> {
        let mut receipts: Vec<&Receipt> = self.receipts.iter().collect();
        receipts.sort_by_key(|r| r.day);
        let mut delivered = 0.0;
        for r in receipts {
            delivered += r.quantity;
            if delivered + 1e-9 >= self.quantity {
                return Some(r.day);
            }
        }
        None
    }

    /// Whether the line was late: short of its quantity at the end of its promised day.
    pub fn late(&self) -> bool {
        self.complete().is_none_or(|day| day > self.promised)
    }
}

/// The line a row describes.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned<'a> {
    pub quantity: f64,
    pub promised: Day,
    pub category: Option<&'a str>,
}

/// The supplier's book summarised as of a day: what the features are made of.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BookSummary {
    /// Lines whose lateness is known, and the late ones.
    pub known: u64,
    pub late: u64,
    /// Days late (0 when on time) and days from order to delivery in full, of the lines complete before
    /// as-of.
    pub delays: Vec<f64>,
    pub leads: Vec<f64>,
    pub delivered: f64,
    pub rejected: f64,
    /// Days from order to promise of the lines ordered in the window, and the quantities of those of the
    /// planned line's material.
    pub promised_leads: Vec<f64>,
    pub material_quantities: Vec<f64>,
}

/// The supplier's `book` as known before `as_of`, over the spec's window, for a line of `material`.
pub fn summarise(
    spec: &DeliverySpec,
    book: &[BookLine],
    as_of: Day,
    material: Option<&str>,
) -> BookSummary {
    let from = as_of.saturating_sub(spec.window_days as Day);
    let mut s = BookSummary::default();
    for line in book {
        if line.ordered >= from && line.ordered < as_of {
            s.promised_leads
                .push(f64::from(line.promised - line.ordered));
            if material == Some(line.material.as_str()) {
                s.material_quantities.push(line.quantity);
            }
        }
        for r in &line.receipts {
            if r.day >= from && r.day < as_of {
                s.delivered += r.quantity;
                s.rejected += r.rejected;
            }
        }
        if line.promised < from || line.promised >= as_of {
            continue;
        }
        // Known only from what had arrived before as-of.
        let known = BookLine {
            receipts: line
                .receipts
                .iter()
                .filter(|r| r.day < as_of)
                .copied()
                .collect(),
            ..line.clone()
        };
        s.known += 1;
        s.late += u64::from(known.late());
        if let Some(done) = known.complete() {
            s.delays.push(f64::from((done - line.promised).max(0)));
            s.leads.push(f64::from(done - line.ordered));
        }
    }
    s
}

/// The feature row of `planned`, ordered on `as_of`, from the supplier's book summary.
pub fn delivery_row(
    spec: &DeliverySpec,
    summary: &BookSummary,
    as_of: Day,
    planned: &Planned,
) -> Result<Vec<f32>, FeatureError> {
    if !(planned.quantity.is_finite() && planned.quantity > 0.0) {
        return Err(FeatureError::Quantity(planned.quantity));
    }
    let lead = f64::from(planned.promised - as_of);
    let mean = |v: &[f64]| {
        if v.is_empty() {
            None
        } else {
            Some(v.iter().sum::<f64>() / v.len() as f64)
        }
    };
    let row = spec
        .features
        .iter()
        .map(|f| match f {
            DeliveryFeature::LogQuantity => planned.quantity.ln(),
            DeliveryFeature::LeadDays => lead,
            DeliveryFeature::PromisedMonth => {
                f64::from(chrono::Datelike::month(&date_of(planned.promised)))
            }
            DeliveryFeature::Category { vocabulary } => planned
                .category
                .and_then(|c| vocabulary.iter().position(|v| v == c))
                .map_or(0.0, |i| (i + 1) as f64),
            DeliveryFeature::SupplierLateRate => {
                (summary.late as f64 + spec.prior_late) / (summary.known as f64 + spec.prior_lines)
            }
            DeliveryFeature::SupplierMeanDelay => mean(&summary.delays).unwrap_or(0.0),
            DeliveryFeature::LeadShortfall => mean(&summary.leads).map_or(0.0, |m| m - lead),
            DeliveryFeature::SupplierLeadStd => {
                let n = summary.leads.len();
                match mean(&summary.leads) {
                    Some(m) if n >= 2 => {
                        (summary.leads.iter().map(|x| (x - m).powi(2)).sum::<f64>()
                            / (n - 1) as f64)
                            .sqrt()
                    }
                    _ => 0.0,
                }
            }
            DeliveryFeature::SupplierDefectRate => {
                if summary.delivered > 0.0 {
                    summary.rejected / summary.delivered
                } else {
                    0.0
                }
            }
            DeliveryFeature::SupplierLines => (summary.known as f64).ln_1p(),
            DeliveryFeature::LeadToUsual => match median(&summary.promised_leads) {
                Some(usual) if usual > 0.0 => (lead.max(0.5) / usual).ln(),
                _ => 0.0,
            },
            DeliveryFeature::QuantityToUsual => match median(&summary.material_quantities) {
                Some(usual) if usual > 0.0 => (planned.quantity / usual).ln(),
                _ => 0.0,
            },
        })
        .map(|x| x as f32)
        .collect();
    Ok(row)
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The training frame of a risk model: one row per order line whose lateness is known by `end`, its
/// features as of the day it was ordered (from the supplier's book as then known), and the label.
pub struct Frame {
    pub columns: Vec<&'static str>,
    /// (reference, line, supplier, ordered, features, late)
    pub rows: Vec<FrameRow>,
}

pub struct FrameRow {
    pub reference: String,
    pub line: usize,
    pub supplier: String,
    pub ordered: Day,
    pub features: Vec<f32>,
    pub late: bool,
}

/// Reads an order book from CSV files as the fixture writes them: orders (one row per line: reference,
/// supplier_code, ordered_on, material_code, quantity, promised_date), deliveries (order_reference, line,
/// delivered_on, quantity, rejected_quantity) and the materials' categories (any CSV with material_code
/// and category columns, such as the price fixture). Lines promised on or after `end` are left out as
/// labels (their lateness is not known) but their receipts count.
pub fn frame(
    spec: &DeliverySpec,
    orders: &Path,
    deliveries: &Path,
    materials: &Path,
    end: Day,
) -> Result<Frame, FeatureError> {
    let fail =
        |path: &Path, e: String| FeatureError::Materialize(format!("{}: {e}", path.display()));
    let read = |path: &Path| -> Result<(csv::StringRecord, Vec<csv::StringRecord>), FeatureError> {
        let mut reader = csv::Reader::from_path(path).map_err(|e| fail(path, e.to_string()))?;
        let headers = reader
            .headers()
            .map_err(|e| fail(path, e.to_string()))?
            .clone();
        let records = reader
            .records()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(path, e.to_string()))?;
        Ok((headers, records))
    };
    let column = |path: &Path, headers: &csv::StringRecord, name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| fail(path, format!("no column `{name}`")))
    };
    let day = |path: &Path, text: &str| {
        text.parse::<chrono::NaiveDate>()
            .map(crate::day_of)
            .map_err(|e| fail(path, format!("`{text}`: {e}")))
    };
    let number = |path: &Path, text: &str| {
        text.parse::<f64>()
            .map_err(|e| fail(path, format!("`{text}`: {e}")))
    };

    let (headers, records) = read(materials)?;
    let (code, cat) = (
        column(materials, &headers, "material_code")?,
        column(materials, &headers, "category")?,
    );
    let categories: std::collections::HashMap<String, String> = records
        .iter()
        .map(|r| (r[code].to_string(), r[cat].to_string()))
        .collect();

    // Each line: (reference, line number, supplier, material, BookLine).
    let (headers, records) = read(orders)?;
    let [reference, supplier, ordered_on, material, quantity, promised] = [
        "reference",
        "supplier_code",
        "ordered_on",
        "material_code",
        "quantity",
        "promised_date",
    ]
    .map(|name| column(orders, &headers, name));
    let (reference, supplier, ordered_on, material, quantity, promised) = (
        reference?,
        supplier?,
        ordered_on?,
        material?,
        quantity?,
        promised?,
    );
    let mut lines: Vec<(String, usize, String, String, BookLine)> =
        Vec::with_capacity(records.len());
    let mut index: std::collections::HashMap<(String, usize), usize> = Default::default();
    let mut numbers: std::collections::HashMap<String, usize> = Default::default();
    for r in &records {
        let n = numbers.entry(r[reference].to_string()).or_default();
        *n += 1;
        index.insert((r[reference].to_string(), *n), lines.len());
        lines.push((
            r[reference].to_string(),
            *n,
            r[supplier].to_string(),
            r[material].to_string(),
            BookLine {
                material: r[material].to_string(),
                ordered: day(orders, &r[ordered_on])?,
                promised: day(orders, &r[promised])?,
                quantity: number(orders, &r[quantity])?,
                receipts: Vec::new(),
            },
        ));
    }
    let (headers, records) = read(deliveries)?;
    let [reference, line, delivered_on, quantity, rejected] = [
        "order_reference",
        "line",
        "delivered_on",
        "quantity",
        "rejected_quantity",
    ]
    .map(|name| column(deliveries, &headers, name));
    let (reference, line, delivered_on, quantity, rejected) =
        (reference?, line?, delivered_on?, quantity?, rejected?);
    for r in &records {
        let n: usize = r[line]
            .parse()
            .map_err(|e| fail(deliveries, format!("line `{}`: {e}", &r[line])))?;
        let Some(&i) = index.get(&(r[reference].to_string(), n)) else {
            return Err(fail(
                deliveries,
                format!("no order line {} {n}", &r[reference]),
            ));
        };
        lines[i].4.receipts.push(Receipt {
            day: day(deliveries, &r[delivered_on])?,
            quantity: number(deliveries, &r[quantity])?,
            rejected: if r[rejected].is_empty() {
                0.0
            } else {
                number(deliveries, &r[rejected])?
            },
        });
    }

    let mut books: std::collections::BTreeMap<&str, Vec<BookLine>> = Default::default();
    for (_, _, s, _, l) in &lines {
        books.entry(s.as_str()).or_default().push(l.clone());
    }
    let mut rows = Vec::new();
    for (reference, n, s, m, l) in &lines {
        // Known by the end: promised before it, with what arrived before it.
        if l.promised >= end {
            continue;
        }
        let known = BookLine {
            receipts: l.receipts.iter().filter(|r| r.day < end).copied().collect(),
            ..l.clone()
        };
        let summary = summarise(spec, &books[s.as_str()], l.ordered, Some(m));
        let planned = Planned {
            quantity: l.quantity,
            promised: l.promised,
            category: categories.get(m).map(String::as_str),
        };
        rows.push(FrameRow {
            reference: reference.clone(),
            line: *n,
            supplier: s.clone(),
            ordered: l.ordered,
            features: delivery_row(spec, &summary, l.ordered, &planned)?,
            late: known.late(),
        });
    }
    Ok(Frame {
        columns: spec.names(),
        rows,
    })
}

/// Writes a frame as CSV: reference, line, supplier_code, ordered_on, each feature, late (0 or 1).
pub fn write_frame(frame: &Frame, path: &Path) -> Result<(), FeatureError> {
    let fail = |e: String| FeatureError::Materialize(format!("{}: {e}", path.display()));
    let mut w = csv::Writer::from_path(path).map_err(|e| fail(e.to_string()))?;
    let mut header = vec!["reference", "line", "supplier_code", "ordered_on"];
    header.extend(&frame.columns);
    header.push("late");
    w.write_record(&header).map_err(|e| fail(e.to_string()))?;
    for r in &frame.rows {
        let mut record = vec![
            r.reference.clone(),
            r.line.to_string(),
            r.supplier.clone(),
            date_of(r.ordered).to_string(),
        ];
        // Shortest text that reads back to the same f32.
        record.extend(r.features.iter().map(|x| x.to_string()));
        record.push(u8::from(r.late).to_string());
        w.write_record(&record).map_err(|e| fail(e.to_string()))?;
    }
    w.flush().map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(features: &str) -> DeliverySpec {
        DeliverySpec::parse(&format!(
            "name = \"t\"\nkind = \"delivery\"\nwindow_days = 100\nprior_late = 1.0\nprior_lines = 5.0\n{features}"
        ))
        .unwrap()
    }

    fn line(ordered: Day, promised: Day, quantity: f64, receipts: &[(Day, f64, f64)]) -> BookLine {
        BookLine {
            material: if quantity == 10.0 { "m2" } else { "m1" }.into(),
            ordered,
            promised,
            quantity,
            receipts: receipts
                .iter()
                .map(|&(day, quantity, rejected)| Receipt {
                    day,
                    quantity,
                    rejected,
                })
                .collect(),
        }
    }

    #[test]
    fn a_book_summarised_by_hand() {
        let all = "[[features]]\nkind = \"supplier_late_rate\"\n[[features]]\nkind = \"supplier_mean_delay\"\n\
                   [[features]]\nkind = \"lead_shortfall\"\n[[features]]\nkind = \"supplier_lead_std\"\n\
                   [[features]]\nkind = \"supplier_defect_rate\"\n[[features]]\nkind = \"supplier_lines\"\n\
                   [[features]]\nkind = \"lead_days\"\n[[features]]\nkind = \"log_quantity\"\n\
                   [[features]]\nkind = \"promised_month\"\n[[features]]\nkind = \"category\"\nvocabulary = [\"a\", \"b\"]\n\
                   [[features]]\nkind = \"lead_to_usual\"\n[[features]]\nkind = \"quantity_to_usual\"\n";
        let spec = spec(all);
        let as_of = 1000;
        let book = [
            // On time: complete on day 950 (promised 950), ordered 940 → lead 10.
            line(940, 950, 100.0, &[(950, 100.0, 4.0)]),
            // Late by 6: half on 955, the rest on 961 (promised 955), ordered 941 → lead 20.
            line(941, 955, 100.0, &[(955, 50.0, 0.0), (961, 50.0, 1.0)]),
            // Late and still short at as-of: known late, no delay or lead yet.
            line(960, 970, 100.0, &[(965, 10.0, 0.0), (1001, 90.0, 0.0)]),
            // Promised on as-of: not known yet; its receipt before as-of counts for defects.
            line(980, 1000, 10.0, &[(990, 10.0, 5.0)]),
            // Outside the window (promised before day 900): ignored, receipts too.
            line(800, 850, 10.0, &[(850, 10.0, 10.0)]),
        ];
        let summary = summarise(&spec, &book, as_of, Some("m1"));
        assert_eq!((summary.known, summary.late), (3, 2));
        assert_eq!(summary.delays, [0.0, 6.0]);
        assert_eq!(summary.leads, [10.0, 20.0]);
        assert_eq!((summary.delivered, summary.rejected), (220.0, 10.0));
        // Ordered in the window: days 940, 941, 960 (m1, 100 each) and 980 (m2).
        assert_eq!(summary.promised_leads, [10.0, 14.0, 10.0, 20.0]);
        assert_eq!(summary.material_quantities, [100.0, 100.0, 100.0]);
        let planned = Planned {
            quantity: 50.0,
            promised: as_of + 12,
            category: Some("b"),
        };
        let row = delivery_row(&spec, &summary, as_of, &planned).unwrap();
        let expected = [
            3.0 / 8.0,
            3.0,
            15.0 - 12.0,
            50f64.sqrt(),
            10.0 / 220.0,
            4f64.ln(),
            12.0,
            50f64.ln(),
            // Day 1012 is 1972-10-09.
            10.0,
            2.0,
            // 12 days against the median promise of 12; 50 against the median 100 of m1.
            0.0,
            0.5f64.ln(),
        ];
        for (i, (got, want)) in row.iter().zip(expected).enumerate() {
            let name = spec.features[i].name();
            assert!(
                (f64::from(*got) - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{name}: {got} against {want}"
            );
        }
        // No book: the prior, zeros; an unknown category is 0; a quantity must be positive.
        let empty = summarise(&spec, &[], as_of, None);
        let row = delivery_row(
            &spec,
            &empty,
            as_of,
            &Planned {
                category: Some("z"),
                ..planned.clone()
            },
        )
        .unwrap();
        assert_eq!(&row[..6], &[0.2, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(&row[9..], &[0.0, 0.0, 0.0]);
        let bad = Planned {
            quantity: 0.0,
            ..planned
        };
        assert!(delivery_row(&spec, &empty, as_of, &bad).is_err());
    }

    #[test]
    fn specs_that_mean_nothing_are_refused() {
        let head = "name = \"t\"\nwindow_days = 100\nprior_late = 1.0\nprior_lines = 5.0\n";
        for text in [
            format!("{head}kind = \"price\"\n[[features]]\nkind = \"lead_days\"\n"),
            format!("{head}kind = \"delivery\"\nfeatures = []\n"),
            format!("{head}kind = \"delivery\"\n[[features]]\nkind = \"lead_days\"\n[[features]]\nkind = \"lead_days\"\n"),
            format!("{head}kind = \"delivery\"\n[[features]]\nkind = \"lag\"\ndays = 1\n"),
            "name = \"t\"\nkind = \"delivery\"\nwindow_days = 0\nprior_late = 1.0\nprior_lines = 5.0\n[[features]]\nkind = \"lead_days\"\n".into(),
            "name = \"t\"\nkind = \"delivery\"\nwindow_days = 10\nprior_late = 5.0\nprior_lines = 5.0\n[[features]]\nkind = \"lead_days\"\n".into(),
        ] {
            assert!(DeliverySpec::parse(&text).is_err(), "{text}");
        }
    }
}
