//! Awards: a closed RFQ's lines given to suppliers at their quoted prices, whole (every line a supplier
//! priced) or line by line, a line split between suppliers by quantity. The RFQ is `awarded` once every
//! line is awarded in full, or when the award says it is final (the rest left unawarded); until then
//! `partially_awarded`. An expired quote cannot be awarded; nothing is awarded twice beyond a line's
//! quantity.

use mercator_store::{Award, FieldErrors, RfqStatus};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use super::{Changed, Sourcing, SourcingError};

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AwardLine {
    pub line_id: String,
    pub supplier_id: String,
    /// Default: what is left of the line.
    pub quantity: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AwardRequest {
    /// Every line this supplier's current quote prices, each for what is left of it.
    pub supplier_id: Option<String>,
    /// Or line by line.
    pub lines: Option<Vec<AwardLine>>,
    /// The RFQ is decided with this award: lines left are not awarded.
    #[serde(default, rename = "final")]
    pub last: bool,
}

/// Tolerance on quantities (they are f64 sums).
const EPSILON: f64 = 1e-9;

impl Sourcing {
    pub async fn award(
        &self,
        org: &str,
        rfq_id: &str,
        version: Option<i64>,
        request: AwardRequest,
    ) -> Result<(Changed, Vec<Award>), SourcingError> {
        let before = self.read(org, rfq_id, version).await?;
        if !matches!(
            before.status,
            RfqStatus::Closed | RfqStatus::PartiallyAwarded
        ) {
            return Err(SourcingError::State(format!(
                "the RFQ is {}: a closed RFQ is awarded (close it first)",
                before.status.as_str()
            )));
        }
        let quotes = self.store.quotes(org, rfq_id, false).await?;
        let now = self.clock.now();
        let today = now.date_naive();
        let asked: Vec<AwardLine> = match (request.supplier_id, request.lines) {
            (Some(supplier), None) => {
                let quote = quotes
                    .iter()
                    .find(|q| q.supplier_id == supplier)
                    .ok_or_else(|| {
                        SourcingError::field("supplier_id", "this supplier has not quoted")
                    })?;
                quote
                    .lines
                    .iter()
                    .filter(|l| {
                        before.awarded(&l.line_id) + EPSILON
                            < before.line(&l.line_id).map_or(0.0, |r| r.quantity)
                    })
                    .map(|l| AwardLine {
                        line_id: l.line_id.clone(),
                        supplier_id: supplier.clone(),
                        quantity: None,
                    })
                    .collect()
            }
            (None, Some(lines)) => lines,
            _ => {
                return Err(SourcingError::field(
                    "supplier_id",
                    "name a supplier (every line it priced) or the lines, not both",
                ))
            }
        };
        if asked.is_empty() && !request.last {
            return Err(SourcingError::field("lines", "nothing left to award"));
        }
        let mut e = FieldErrors::default();
        let mut awards = Vec::new();
        for (i, a) in asked.iter().enumerate() {
            let field = |name: &str| format!("lines[{i}].{name}");
            let Some(line) = before.line(&a.line_id) else {
                e.add(
                    &field("line_id"),
                    format!("the RFQ has no line `{}`", a.line_id),
                );
                continue;
            };
            let Some((quote, offered)) = quotes.iter().find_map(|q| {
                (q.supplier_id == a.supplier_id)
                    .then(|| {
                        q.lines
                            .iter()
                            .find(|l| l.line_id == a.line_id)
                            .map(|l| (q, l))
                    })
                    .flatten()
            }) else {
                e.add(
                    &field("supplier_id"),
                    format!(
                        "supplier {} has not priced line {}",
                        a.supplier_id, a.line_id
                    ),
                );
                continue;
            };
            if quote.valid_until.is_some_and(|v| v < today) {
                return Err(SourcingError::State(format!(
                    "the quote of supplier {} expired on {}: it cannot be awarded",
                    a.supplier_id,
                    quote.valid_until.unwrap_or_default()
                )));
            }
            let given: f64 = before.awarded(&a.line_id)
                + awards
                    .iter()
                    .filter(|w: &&Award| w.line_id == a.line_id)
                    .map(|w| w.quantity)
                    .sum::<f64>();
            let left = line.quantity - given;
            let quantity = a.quantity.unwrap_or(left);
            if !(quantity.is_finite() && quantity > 0.0) {
                e.add(&field("quantity"), "must be a number greater than 0");
                continue;
            }
            if quantity > left + EPSILON {
                e.add(
                    &field("quantity"),
                    format!(
                        "line {} has {left} left to award of {}",
                        a.line_id, line.quantity
                    ),
                );
                continue;
            }
            awards.push(Award {
                id: String::new(),
                line_id: a.line_id.clone(),
                quote_id: quote.id.clone(),
                supplier_id: a.supplier_id.clone(),
                quantity,
                unit_price: offered.unit_price,
                awarded_at: now,
            });
        }
        e.into_result()?;
        let mut after = before.clone();
        let complete = after.lines.iter().all(|l| {
            let given = before.awarded(&l.id)
                + awards
                    .iter()
                    .filter(|w| w.line_id == l.id)
                    .map(|w| w.quantity)
                    .sum::<f64>();
            given + EPSILON >= l.quantity
        });
        if complete || request.last {
            after.status = RfqStatus::Awarded;
            after.decided_at = Some(now);
        } else {
            after.status = RfqStatus::PartiallyAwarded;
        }
        after.updated_at = now;
        let after = self
            .store
            .insert_awards(org, &after, before.version, &awards)
            .await?;
        let made: Vec<Award> = after
            .awards
            .iter()
            .skip(before.awards.len())
            .cloned()
            .collect();
        let id = format!("rfq.awarded:{}:{}", after.id, after.version);
        self.announce(
            org,
            "rfq.awarded",
            &id,
            json!({
                "rfq": {"id": after.id, "title": after.title, "status": after.status, "version": after.version},
                "awards": made,
            }),
        )
        .await;
        Ok((Changed { before, after }, made))
    }
}
