//! A supplier's scorecard over the orders placed in a period (`GET /api/v1/suppliers/{id}/scorecard`).
//!
//! - **On time in full (OTIF)**: of the lines due (promised on or before the period's end and today, on
//!   orders not cancelled), the share whose accepted quantity (delivered less rejected) reached the ordered
//!   quantity by the promised date.
//! - **Lead time**: for each line received in full, the days from the order's date to the delivery that
//!   completed it; mean and sample standard deviation.
//! - **Defect rate**: rejected ÷ delivered over every delivery against the period's orders (and in parts
//!   per million).
//! - **Price competitiveness**: over the supplier's current quotes submitted in the period, the mean
//!   percentile of its prices in the price model's predictive distribution and the mean of quoted ÷ fair
//!   − 1.
//! - **RFQ response rate**: of the RFQs that invited it and opened in the period, the share it quoted.
//!
//! Each figure comes with the count it rests on; a figure without any is null.

use chrono::{Duration, NaiveDate};
use mercator_store::{Order, OrderDelivery, OrderLine};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Supply, SupplyError};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Scorecard {
    pub supplier_id: String,
    #[schema(value_type = String, format = Date)]
    pub from: NaiveDate,
    #[schema(value_type = String, format = Date)]
    pub to: NaiveDate,
    pub orders: usize,
    pub otif: Option<f64>,
    pub lines_due: usize,
    pub lines_on_time_in_full: usize,
    pub lead_time_mean_days: Option<f64>,
    pub lead_time_std_days: Option<f64>,
    pub lines_received: usize,
    pub defect_rate: Option<f64>,
    pub defect_ppm: Option<f64>,
    pub delivered_quantity: f64,
    pub rejected_quantity: f64,
    pub deliveries: usize,
    /// Mean percentile (0–1) of its quoted prices in the fair price's distribution: lower is cheaper.
    pub quote_percentile_mean: Option<f64>,
    /// Mean of quoted ÷ fair − 1.
    pub quote_vs_fair_mean: Option<f64>,
    pub quote_lines_benchmarked: usize,
    pub rfq_response_rate: Option<f64>,
    pub rfqs_invited: usize,
    pub rfqs_responded: usize,
}

pub(super) fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

pub(super) fn sample_std(values: &[f64]) -> Option<f64> {
    let m = mean(values)?;
    (values.len() > 1).then(|| {
        (values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
    })
}

/// The day the accepted quantity (delivered less rejected) of `line` reached its ordered quantity, if it
/// did.
pub(super) fn received_in_full(
    order: &Order,
    line: &OrderLine,
    deliveries: &[OrderDelivery],
) -> Option<NaiveDate> {
    let mut received: Vec<&OrderDelivery> = deliveries
        .iter()
        .filter(|d| d.order_id == order.id && d.line_id == line.id)
        .collect();
    received.sort_by_key(|d| d.delivered_on);
    let mut accepted = 0.0;
    for d in received {
        accepted += d.quantity - d.rejected_quantity;
        if accepted + 1e-9 >= line.quantity {
            return Some(d.delivered_on);
        }
    }
    None
}

impl Supply {
    pub async fn scorecard(
        &self,
        org: &str,
        supplier_id: &str,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    ) -> Result<Scorecard, SupplyError> {
        self.store.supplier(org, supplier_id).await?;
        let today = self.clock.now().date_naive();
        let to = to.unwrap_or(today);
        let from = from.unwrap_or(to - Duration::days(365));
        if from > to {
            return Err(mercator_store::FieldErrors::one("from", "must not be after `to`").into());
        }
        let (orders, deliveries) = self
            .store
            .supplier_book(org, supplier_id, (from, to))
            .await?;
        let horizon = to.min(today);
        let (mut due, mut otif, mut lead) = (0, 0, Vec::new());
        for order in orders.iter().filter(|o| o.status != "cancelled") {
            for line in &order.lines {
                let complete_on = received_in_full(order, line, &deliveries);
                if let Some(day) = complete_on {
                    lead.push((day - order.ordered_on).num_days() as f64);
                }
                if line.promised_date <= horizon {
                    due += 1;
                    if complete_on.is_some_and(|day| day <= line.promised_date) {
                        otif += 1;
                    }
                }
            }
        }
        let delivered: f64 = deliveries.iter().map(|d| d.quantity).sum();
        let rejected: f64 = deliveries.iter().map(|d| d.rejected_quantity).sum();
        let defect_rate = (delivered > 0.0).then(|| rejected / delivered);
        let (percentiles, ratios, invited, responded) =
            self.sourcing_record(org, supplier_id, (from, to)).await?;
        Ok(Scorecard {
            supplier_id: supplier_id.to_string(),
            from,
            to,
            orders: orders.len(),
            otif: (due > 0).then(|| otif as f64 / due as f64),
            lines_due: due,
            lines_on_time_in_full: otif,
            lead_time_mean_days: mean(&lead),
            lead_time_std_days: sample_std(&lead),
            lines_received: lead.len(),
            defect_rate,
            defect_ppm: defect_rate.map(|r| r * 1e6),
            delivered_quantity: delivered,
            rejected_quantity: rejected,
            deliveries: deliveries.len(),
            quote_percentile_mean: mean(&percentiles),
            quote_vs_fair_mean: mean(&ratios),
            quote_lines_benchmarked: percentiles.len(),
            rfq_response_rate: (invited > 0).then(|| responded as f64 / invited as f64),
            rfqs_invited: invited,
            rfqs_responded: responded,
        })
    }

    /// The supplier's benchmarked quote lines (percentiles, quoted ÷ fair − 1) and its RFQ invitations
    /// and responses in the period.
    async fn sourcing_record(
        &self,
        org: &str,
        supplier_id: &str,
        (from, to): (NaiveDate, NaiveDate),
    ) -> Result<(Vec<f64>, Vec<f64>, usize, usize), SupplyError> {
        let start = from.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
        let end = (to + Duration::days(1))
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc();
        let rfqs = self
            .store
            .rfqs_inviting(org, supplier_id, (start, end))
            .await?;
        let (mut percentiles, mut ratios, mut responded) = (Vec::new(), Vec::new(), 0);
        for rfq in &rfqs {
            let quotes = self.store.quotes(org, rfq, false).await?;
            let mine: Vec<_> = quotes
                .iter()
                .filter(|q| q.supplier_id == supplier_id)
                .collect();
            responded += usize::from(!mine.is_empty());
            for line in mine.iter().flat_map(|q| &q.lines) {
                if let Some(b) = &line.benchmark {
                    percentiles.push(b.percentile);
                    ratios.push(line.unit_price / b.fair_price - 1.0);
                }
            }
        }
        Ok((percentiles, ratios, rfqs.len(), responded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_standard_deviation_divides_by_n_minus_one() {
        assert_eq!(mean(&[2.0, 4.0]), Some(3.0));
        assert_eq!(sample_std(&[2.0, 4.0]), Some(2f64.sqrt()));
        assert_eq!(sample_std(&[2.0]), None);
        assert_eq!(mean(&[]), None);
    }
}
