//! A supplier's quote: accepted while the RFQ is open and before its deadline, from an invited supplier,
//! in the RFQ's currency. Each line is benchmarked when it arrives (the price model's fair price for the
//! same material, supplier, quantity and delivery date, and where the quote falls in its predictive
//! distribution), scored, stored with its quote, and written as a price observation of type `quote`, so
//! it joins the history, is scored for anomalies and meets the alert rules (`quote_above_prediction`).

use std::collections::HashSet;

use chrono::NaiveDate;
use mercator_store::{
    Benchmark, FieldErrors, NewPrice, PriceType, Quote, QuoteLine, RfqStatus, StoreError,
};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use super::score::{self, DealInputs};
use super::{Sourcing, SourcingError};
use crate::predict::{PricePrediction, PriceRequest};

/// Days of lead time a quote line may state at most.
const MAX_LEAD_DAYS: u32 = 3650;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewQuoteLine {
    /// The RFQ line it prices (`1`, `2`, ...).
    pub line_id: String,
    /// In the RFQ's currency, per unit of the line.
    pub unit_price: f64,
    /// Default: the line's quantity.
    pub quantity: Option<f64>,
    pub lead_time_days: Option<u32>,
    /// Default: the quote's day plus the lead time, or the line's needed-by date.
    #[serde(default, deserialize_with = "mercator_store::opt_date")]
    #[schema(value_type = Option<String>, format = Date)]
    pub promised_date: Option<NaiveDate>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewQuote {
    pub supplier_id: String,
    /// Default and only choice: the RFQ's currency.
    pub currency: Option<String>,
    pub incoterm: Option<String>,
    /// The last day the prices hold.
    #[serde(default, deserialize_with = "mercator_store::opt_date")]
    #[schema(value_type = Option<String>, format = Date)]
    pub valid_until: Option<NaiveDate>,
    /// One or more of the RFQ's lines, each at most once.
    pub lines: Vec<NewQuoteLine>,
}

impl Sourcing {
    /// Judges and writes a quote; answers it as stored.
    pub async fn submit_quote(
        &self,
        org: &str,
        rfq_id: &str,
        new: NewQuote,
    ) -> Result<Quote, SourcingError> {
        let rfq = self.get(org, rfq_id).await?;
        let now = self.clock.now();
        let today = now.date_naive();
        if rfq.status != RfqStatus::Open || rfq.deadline <= now {
            if rfq.deadline <= now && matches!(rfq.status, RfqStatus::Open | RfqStatus::Closed) {
                return Err(SourcingError::DeadlinePassed(rfq.deadline));
            }
            return Err(SourcingError::State(format!(
                "the RFQ is {}: quotes are taken while it is open",
                rfq.status.as_str()
            )));
        }
        if !rfq.invites(&new.supplier_id) {
            return Err(SourcingError::NotInvited(new.supplier_id));
        }
        let supplier = self
            .store
            .supplier(org, &new.supplier_id)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => SourcingError::NotInvited(new.supplier_id.clone()),
                e => e.into(),
            })?;
        let mut e = FieldErrors::default();
        let currency = new.currency.unwrap_or_else(|| rfq.currency.clone());
        if currency != rfq.currency {
            e.add(
                "currency",
                format!(
                    "quotes to this RFQ are in {}; no exchange rates are kept to convert {currency}",
                    rfq.currency
                ),
            );
        }
        if let Some(incoterm) = &new.incoterm {
            if incoterm.len() != 3 || !incoterm.chars().all(|c| c.is_ascii_uppercase()) {
                e.add(
                    "incoterm",
                    "must be 3 upper-case letters (an Incoterms 2020 rule)",
                );
            }
        }
        if let Some(valid) = new.valid_until {
            if valid < today {
                e.add("valid_until", "the quote would already have expired");
            }
        }
        if new.lines.is_empty() {
            e.add("lines", "a quote prices at least one line");
        }
        let mut seen = HashSet::new();
        let mut lines = Vec::with_capacity(new.lines.len());
        for (i, l) in new.lines.into_iter().enumerate() {
            let field = |name: &str| format!("lines[{i}].{name}");
            let Some(line) = rfq.line(&l.line_id) else {
                e.add(
                    &field("line_id"),
                    format!("the RFQ has no line `{}`", l.line_id),
                );
                continue;
            };
            if !seen.insert(l.line_id.clone()) {
                e.add(&field("line_id"), "a line is priced once per quote");
            }
            if !(mercator_store::MIN_PRICE..=mercator_store::MAX_PRICE).contains(&l.unit_price) {
                e.add(
                    &field("unit_price"),
                    format!(
                        "must be a number from {} to {:e}",
                        mercator_store::MIN_PRICE,
                        mercator_store::MAX_PRICE
                    ),
                );
            }
            let quantity = l.quantity.unwrap_or(line.quantity);
            if !(quantity.is_finite() && quantity > 0.0) {
                e.add(&field("quantity"), "must be a number greater than 0");
            }
            if l.lead_time_days.is_some_and(|d| d > MAX_LEAD_DAYS) {
                e.add(
                    &field("lead_time_days"),
                    format!("at most {MAX_LEAD_DAYS} days"),
                );
            }
            let promised_date = l
                .promised_date
                .or_else(|| {
                    l.lead_time_days
                        .and_then(|d| today.checked_add_days(chrono::Days::new(u64::from(d))))
                })
                .unwrap_or(line.needed_by);
            lines.push((
                line.clone(),
                QuoteLine {
                    line_id: l.line_id,
                    material_id: line.material_id.clone(),
                    unit_price: l.unit_price,
                    quantity,
                    lead_time_days: l.lead_time_days,
                    promised_date,
                    benchmark: None,
                    benchmark_error: None,
                    anomaly_score: None,
                    anomaly_severity: None,
                    p_late: None,
                    deal: score::deal_score(&DealInputs::default(), &self.config.deal),
                    price_id: None,
                },
            ));
        }
        e.into_result()?;

        // The fair price of each line: one batch through the price model.
        let requests: Vec<PriceRequest> = lines
            .iter()
            .map(|(_, q)| PriceRequest {
                material_id: q.material_id.clone(),
                quantity: q.quantity,
                supplier_id: Some(supplier.id.clone()),
                delivery_date: Some(q.promised_date),
                as_of: Some(today),
                interval_level: Some(self.config.interval_level),
            })
            .collect();
        let predicted = self.predictions.price_batch(org, &requests).await;
        // The chance each line arrives late: one batch through the risk model, when one is served (the
        // deal score leaves risk out otherwise, and says so).
        let planned: Vec<(&str, f64, chrono::NaiveDate)> = lines
            .iter()
            .map(|(_, q)| (q.material_id.as_str(), q.quantity, q.promised_date))
            .collect();
        let risks = match self
            .predictions
            .p_late_batch(org, &supplier.id, &planned, today)
            .await
        {
            Ok(p) if p.len() == lines.len() => p.into_iter().map(Some).collect(),
            Ok(_) => vec![None; lines.len()],
            Err(e) => {
                tracing::debug!(error = %e, "no late-delivery risk for the quote's lines");
                vec![None; lines.len()]
            }
        };
        let expired = new.valid_until.is_some_and(|v| v < today);
        for (i, (line, quote_line)) in lines.iter_mut().enumerate() {
            let answer = match &predicted {
                Ok(answers) => match answers.get(i) {
                    Some(answer) => answer.as_ref().map_err(|e| e.to_string()),
                    None => Err("the price model gave no answer for this line".to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            match answer {
                Ok(p) => quote_line.benchmark = Some(benchmark(quote_line, p, today)),
                Err(e) => quote_line.benchmark_error = Some(e),
            }
            let gate = if expired {
                Some("the quote has expired")
            } else if supplier.status != "active" {
                Some("the supplier is inactive")
            } else if quote_line.quantity < line.quantity {
                Some("the quantity offered is short of the line's")
            } else {
                None
            };
            quote_line.p_late = risks.get(i).copied().flatten();
            quote_line.deal = score::deal_score(
                &DealInputs {
                    z: quote_line.benchmark.as_ref().map(|b| b.z),
                    reliability: Some(supplier.reliability),
                    days_late: Some((quote_line.promised_date - line.needed_by).num_days()),
                    p_late: quote_line.p_late,
                    gate,
                },
                &self.config.deal,
            );
        }
        let quote = Quote {
            // The store gives it its id.
            id: String::new(),
            rfq_id: rfq.id.clone(),
            supplier_id: supplier.id.clone(),
            revision: 0,
            status: "submitted".into(),
            currency,
            incoterm: new.incoterm,
            valid_until: new.valid_until,
            submitted_at: now,
            lines: lines.into_iter().map(|(_, q)| q).collect(),
        };
        let mut quote = self.store.insert_quote(org, quote, rfq.version).await?;
        self.observe(org, &rfq.id, &mut quote).await;
        let id = format!("quote.received:{}", quote.id);
        self.announce(
            org,
            "quote.received",
            &id,
            json!({
                "rfq": {"id": rfq.id, "title": rfq.title},
                "quote": {
                    "id": quote.id, "supplier_id": quote.supplier_id, "revision": quote.revision,
                    "lines": quote.lines.len(),
                    "total": quote.lines.iter().map(|l| l.unit_price * l.quantity).sum::<f64>(),
                    "above_interval": quote.lines.iter()
                        .filter(|l| l.benchmark.as_ref().is_some_and(|b| b.verdict == "above")).count(),
                },
            }),
        )
        .await;
        Ok(quote)
    }

    /// Writes the quote's lines as price observations (scored, judged by the alert rules, announced) and
    /// keeps their ids and anomaly scores with the quote. A failure here leaves the quote as it is.
    async fn observe(&self, org: &str, rfq_id: &str, quote: &mut Quote) {
        let prices: Vec<NewPrice> = quote
            .lines
            .iter()
            .map(|l| NewPrice {
                time: quote.submitted_at,
                material_id: l.material_id.clone(),
                supplier_id: Some(quote.supplier_id.clone()),
                price: l.unit_price,
                currency: quote.currency.clone(),
                quantity: Some(l.quantity),
                price_type: PriceType::Quote,
                source: Some(format!("rfq:{rfq_id}")),
            })
            .collect();
        match self.ingest.write(org, prices).await {
            Ok(written) => {
                for (line, price) in quote.lines.iter_mut().zip(written) {
                    line.price_id = Some(price.id);
                    if let Some(a) = price.anomaly {
                        line.anomaly_score = Some(a.score);
                        line.anomaly_severity = a.severity.map(|s| s.as_str().to_string());
                    }
                }
                if let Err(e) = self
                    .store
                    .set_quote_lines(org, &quote.id, &quote.lines)
                    .await
                {
                    tracing::warn!(quote = %quote.id, error = %e, "a quote's price observations are not linked to it");
                }
            }
            Err(e) => {
                tracing::warn!(quote = %quote.id, error = %e, "a quote's lines were not written as price observations")
            }
        }
    }

    /// An RFQ's quotes: the current one of each supplier, or every revision.
    pub async fn quotes(
        &self,
        org: &str,
        rfq_id: &str,
        every_revision: bool,
    ) -> Result<Vec<Quote>, SourcingError> {
        self.store.rfq(org, rfq_id).await?;
        Ok(self.store.quotes(org, rfq_id, every_revision).await?)
    }

    pub async fn quote(&self, org: &str, rfq_id: &str, id: &str) -> Result<Quote, SourcingError> {
        Ok(self.store.quote(org, rfq_id, id).await?)
    }
}

/// A quote line against the price model's answer for it.
fn benchmark(line: &QuoteLine, p: &PricePrediction, as_of: NaiveDate) -> Benchmark {
    let (m, lower, upper, level) = (
        p.predicted_price,
        p.prediction_interval.lower,
        p.prediction_interval.upper,
        p.prediction_interval.level,
    );
    let (z, percentile) = score::position(line.unit_price, m, lower, upper, level);
    // Kept finite (JSON has no infinity): beyond ±50 σ the percentile is 0 or 1 anyway.
    let z = z.clamp(-50.0, 50.0);
    Benchmark {
        fair_price: m,
        lower,
        upper,
        level,
        percentile,
        z,
        savings: (m - line.unit_price) * line.quantity,
        verdict: score::verdict(line.unit_price, lower, upper).to_string(),
        model: p.model.name.clone(),
        model_version: p.model.version,
        as_of,
        delivery_date: line.promised_date,
    }
}
