//! The bid comparison: the RFQ's lines × the suppliers' current quotes, each cell the quoted price with
//! its benchmark and deal score, the best offer per line by landed cost, and totals per supplier.
//!
//! Landed unit cost = unit price × (1 + `late_per_day` · days late + `unreliability` · p(late)), days late
//! being the promised date's days after the line's needed-by date (none when on time), p(late) the risk
//! model's chance the line arrives late when it was scored, else 1 − the supplier's reliability. An
//! expired quote is shown and never best. Ties go to the lower unit price, then the earlier quote.

use std::collections::HashMap;

use chrono::NaiveDate;
use mercator_store::{Benchmark, Quote, Rfq, RfqStatus, Supplier, Time};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Sourcing, SourcingError};

/// One supplier's offer for one line.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Offer {
    pub supplier_id: String,
    pub quote_id: String,
    pub unit_price: f64,
    pub quantity: f64,
    /// unit price × the line's quantity.
    pub extended: f64,
    #[schema(value_type = String, format = Date)]
    pub promised_date: NaiveDate,
    pub days_late: i64,
    pub landed_unit_cost: f64,
    /// The risk model's chance the line arrives late (null without one: 1 − reliability is used).
    pub p_late: Option<f64>,
    pub benchmark: Option<Benchmark>,
    pub deal_score: Option<f64>,
    /// Its quote's validity has passed: it cannot be awarded.
    pub expired: bool,
    pub best: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LineComparison {
    pub line_id: String,
    pub material_id: String,
    pub quantity: f64,
    #[schema(value_type = String, format = Date)]
    pub needed_by: NaiveDate,
    /// The quantity awarded so far.
    pub awarded: f64,
    /// By landed unit cost, lowest first.
    pub offers: Vec<Offer>,
    /// The supplier of the best offer, if any can be awarded.
    pub best_supplier_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SupplierTotal {
    pub supplier_id: String,
    pub code: String,
    pub name: String,
    pub reliability: f64,
    pub quote_id: String,
    pub lines_quoted: usize,
    /// It priced every line.
    pub complete: bool,
    /// Σ unit price × line quantity over the lines it priced.
    pub total: f64,
    pub landed_total: f64,
    /// Σ of its lines' savings against the fair price (negative: it asks more than fair).
    pub savings: f64,
    /// Lines whose best offer is its.
    pub best_lines: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Totals {
    /// Σ over lines of the best offer's extended price (a split award), and its landed cost.
    pub best_per_line: f64,
    pub best_per_line_landed: f64,
    /// Lines no awardable offer prices.
    pub lines_without_offer: usize,
    /// The complete supplier with the lowest landed total, when one priced every line.
    pub best_single_supplier: Option<String>,
    pub best_single_supplier_total: Option<f64>,
    pub best_single_supplier_landed: Option<f64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Comparison {
    pub rfq_id: String,
    pub title: String,
    pub currency: String,
    #[schema(value_type = String)]
    pub status: RfqStatus,
    /// When it was computed (quotes arriving later change it).
    #[schema(value_type = String, format = DateTime)]
    pub as_of: Time,
    pub lines: Vec<LineComparison>,
    pub suppliers: Vec<SupplierTotal>,
    pub totals: Totals,
}

impl Sourcing {
    /// The RFQ's current quotes side by side.
    pub async fn comparison(&self, org: &str, rfq_id: &str) -> Result<Comparison, SourcingError> {
        let rfq = self.get(org, rfq_id).await?;
        let quotes = self.store.quotes(org, rfq_id, false).await?;
        let mut suppliers = HashMap::new();
        for q in &quotes {
            let supplier = self.store.supplier(org, &q.supplier_id).await?;
            suppliers.insert(q.supplier_id.clone(), supplier);
        }
        let now = self.clock.now();
        Ok(compare(&rfq, &quotes, &suppliers, self, now))
    }
}

fn compare(
    rfq: &Rfq,
    quotes: &[Quote],
    suppliers: &HashMap<String, Supplier>,
    sourcing: &Sourcing,
    now: Time,
) -> Comparison {
    let landed = sourcing.config.landed;
    let today = now.date_naive();
    let mut lines: Vec<LineComparison> = rfq
        .lines
        .iter()
        .map(|line| {
            let mut offers: Vec<(usize, Offer)> = quotes
                .iter()
                .enumerate()
                .filter_map(|(order, q)| {
                    let l = q.lines.iter().find(|l| l.line_id == line.id)?;
                    let reliability = suppliers.get(&q.supplier_id).map_or(0.0, |s| s.reliability);
                    let p_late = l.p_late.unwrap_or(1.0 - reliability);
                    let days_late = (l.promised_date - line.needed_by).num_days().max(0);
                    Some((
                        order,
                        Offer {
                            supplier_id: q.supplier_id.clone(),
                            quote_id: q.id.clone(),
                            unit_price: l.unit_price,
                            quantity: l.quantity,
                            extended: l.unit_price * line.quantity,
                            promised_date: l.promised_date,
                            days_late,
                            landed_unit_cost: landed.unit(l.unit_price, days_late, p_late),
                            p_late: l.p_late,
                            benchmark: l.benchmark.clone(),
                            deal_score: l.deal.score,
                            expired: q.valid_until.is_some_and(|v| v < today),
                            best: false,
                        },
                    ))
                })
                .collect();
            offers.sort_by(|(a_order, a), (b_order, b)| {
                a.expired
                    .cmp(&b.expired)
                    .then(a.landed_unit_cost.total_cmp(&b.landed_unit_cost))
                    .then(a.unit_price.total_cmp(&b.unit_price))
                    .then(a_order.cmp(b_order))
            });
            let mut offers: Vec<Offer> = offers.into_iter().map(|(_, o)| o).collect();
            let best_supplier_id = match offers.first_mut() {
                Some(best) if !best.expired => {
                    best.best = true;
                    Some(best.supplier_id.clone())
                }
                _ => None,
            };
            LineComparison {
                line_id: line.id.clone(),
                material_id: line.material_id.clone(),
                quantity: line.quantity,
                needed_by: line.needed_by,
                awarded: rfq.awarded(&line.id),
                offers,
                best_supplier_id,
            }
        })
        .collect();
    let mut totals: Vec<SupplierTotal> = quotes
        .iter()
        .map(|q| {
            let supplier = suppliers.get(&q.supplier_id);
            let mut t = SupplierTotal {
                supplier_id: q.supplier_id.clone(),
                code: supplier.map(|s| s.code.clone()).unwrap_or_default(),
                name: supplier.map(|s| s.name.clone()).unwrap_or_default(),
                reliability: supplier.map_or(0.0, |s| s.reliability),
                quote_id: q.id.clone(),
                lines_quoted: 0,
                complete: false,
                total: 0.0,
                landed_total: 0.0,
                savings: 0.0,
                best_lines: 0,
            };
            for line in &mut lines {
                if let Some(o) = line.offers.iter().find(|o| o.quote_id == q.id) {
                    t.lines_quoted += 1;
                    t.total += o.extended;
                    t.landed_total += o.landed_unit_cost * line.quantity;
                    t.savings += o
                        .benchmark
                        .as_ref()
                        .map_or(0.0, |b| (b.fair_price - o.unit_price) * line.quantity);
                    t.best_lines += usize::from(o.best);
                }
            }
            t.complete = t.lines_quoted == rfq.lines.len();
            t
        })
        .collect();
    totals.sort_by(|a, b| a.landed_total.total_cmp(&b.landed_total));
    let (mut best_per_line, mut best_per_line_landed, mut lines_without_offer) = (0.0, 0.0, 0);
    for line in &lines {
        match line.offers.iter().find(|o| o.best) {
            Some(o) => {
                best_per_line += o.extended;
                best_per_line_landed += o.landed_unit_cost * line.quantity;
            }
            None => lines_without_offer += 1,
        }
    }
    let single = totals.iter().find(|t| {
        t.complete
            && lines.iter().all(|l| {
                l.offers
                    .iter()
                    .any(|o| o.quote_id == t.quote_id && !o.expired)
            })
    });
    Comparison {
        rfq_id: rfq.id.clone(),
        title: rfq.title.clone(),
        currency: rfq.currency.clone(),
        status: rfq.status,
        as_of: now,
        totals: Totals {
            best_per_line,
            best_per_line_landed,
            lines_without_offer,
            best_single_supplier: single.map(|t| t.supplier_id.clone()),
            best_single_supplier_total: single.map(|t| t.total),
            best_single_supplier_landed: single.map(|t| t.landed_total),
        },
        lines,
        suppliers: totals,
    }
}

/// The comparison as CSV: one row per line and offer (a line without offers has one row of its own).
pub fn to_csv(c: &Comparison) -> String {
    let mut out = String::from(
        "line_id,material_id,quantity,needed_by,awarded,supplier_id,quote_id,unit_price,extended,\
         promised_date,days_late,landed_unit_cost,fair_price,lower,upper,percentile,verdict,savings,\
         deal_score,expired,best\n",
    );
    let num = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for line in &c.lines {
        let head = format!(
            "{},{},{},{},{}",
            csv_field(&line.line_id),
            csv_field(&line.material_id),
            line.quantity,
            line.needed_by,
            line.awarded
        );
        if line.offers.is_empty() {
            out.push_str(&head);
            out.push_str(&",".repeat(16));
            out.push('\n');
        }
        for o in &line.offers {
            let b = o.benchmark.as_ref();
            out.push_str(&format!(
                "{head},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                csv_field(&o.supplier_id),
                csv_field(&o.quote_id),
                o.unit_price,
                o.extended,
                o.promised_date,
                o.days_late,
                o.landed_unit_cost,
                num(b.map(|b| b.fair_price)),
                num(b.map(|b| b.lower)),
                num(b.map(|b| b.upper)),
                num(b.map(|b| b.percentile)),
                b.map(|b| b.verdict.as_str()).unwrap_or_default(),
                num(b.map(|b| (b.fair_price - o.unit_price) * line.quantity)),
                num(o.deal_score),
                o.expired,
                o.best,
            ));
        }
    }
    out
}

/// A CSV field: quoted when it holds a comma, a quote or a line break; a leading `=`, `+`, `-` or `@`
/// prefixed with `'` so a spreadsheet does not run it as a formula.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}
