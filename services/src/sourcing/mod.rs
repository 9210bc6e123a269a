//! Sourcing: requests for quotation (RFQs) sent to invited suppliers, their quotes judged against the
//! price model's fair price as they arrive, compared, and awarded.
//!
//! - this file: the RFQ's life. draft → open (needs a line, an invited supplier and a deadline still to
//!   come) → closed (by hand, or when its deadline passes) → partially_awarded → awarded; draft, open and
//!   closed → cancelled; closed → open again with a new deadline. Any other move is refused (409
//!   `invalid_state`). Every change names the version it read, so two buyers cannot both act on one state.
//! - [`quotes`]: a quote accepted only from an invited supplier while the RFQ is open and before its
//!   deadline; each line benchmarked, scored and written as a price observation (type `quote`).
//! - [`compare`]: lines × suppliers, the best offer per line by landed cost, totals per supplier.
//! - [`award`]: whole or per line (split by quantity), partial until every line is awarded or the award
//!   is final.
//! - [`benchmarks`]: a material's prices against its category and the market, with its fair price today.
//! - [`score`]: the arithmetic (percentile in the predictive distribution, deal score, landed cost).
//!
//! Events on `/ws/notifications`: `rfq.opened`, `rfq.closed`, `rfq.cancelled`, `quote.received`,
//! `rfq.awarded`; and to the webhooks of the organization's `sourcing` alert rules that name them.

pub mod award;
pub mod benchmarks;
pub mod compare;
pub mod quotes;
pub mod score;

use std::sync::Arc;

use mercator_store::{
    checked_lines, checked_suppliers, invites, FieldErrors, ListParams, Listed, NewRfq, Rfq,
    RfqFilter, RfqPatch, RfqStatus, Store, StoreError, Time,
};
use serde_json::json;

use crate::alerts::Alerts;
use crate::clock::Clock;
use crate::events::{Fanout, Notification};
use crate::ingest::Ingest;
use crate::predict::Predictions;
use score::{DealWeights, LandedCost};

/// How quotes are judged and offers ranked.
#[derive(Debug, Clone, Copy)]
pub struct SourcingConfig {
    pub deal: DealWeights,
    pub landed: LandedCost,
    /// The level of the fair price's interval a quote is judged against (one the price model calibrated).
    pub interval_level: f64,
}

impl Default for SourcingConfig {
    fn default() -> Self {
        SourcingConfig {
            deal: DealWeights::default(),
            landed: LandedCost::default(),
            interval_level: crate::predict::DEFAULT_LEVEL,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourcingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The RFQ's state does not allow it.
    #[error("{0}")]
    State(String),
    #[error("the RFQ's deadline ({0}) has passed: quotes are no longer taken")]
    DeadlinePassed(Time),
    #[error("supplier {0} is not invited to this RFQ")]
    NotInvited(String),
    /// Fields that break a rule, by field.
    #[error("{message}")]
    Invalid {
        message: String,
        details: FieldErrors,
    },
}

impl SourcingError {
    pub fn code(&self) -> &'static str {
        match self {
            SourcingError::Store(e) => e.code(),
            SourcingError::State(_) => "invalid_state",
            SourcingError::DeadlinePassed(_) => "deadline_passed",
            SourcingError::NotInvited(_) => "supplier_not_invited",
            SourcingError::Invalid { .. } => "validation_error",
        }
    }

    fn invalid(details: FieldErrors) -> SourcingError {
        SourcingError::Invalid {
            message: format!(
                "invalid values: {}",
                details.0.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            details,
        }
    }

    fn field(field: &str, message: impl Into<String>) -> SourcingError {
        SourcingError::invalid(FieldErrors::one(field, message))
    }
}

impl From<FieldErrors> for SourcingError {
    fn from(details: FieldErrors) -> SourcingError {
        SourcingError::invalid(details)
    }
}

/// A move of an RFQ's state asked for by its owner.
#[derive(Debug, Clone)]
pub enum Action {
    Open,
    Close,
    /// A closed RFQ takes quotes again until the new deadline.
    Reopen {
        deadline: Time,
    },
    Cancel,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Open => "open",
            Action::Close => "close",
            Action::Reopen { .. } => "reopen",
            Action::Cancel => "cancel",
        }
    }
}

/// A change made: the RFQ before and after (for the audit log).
pub struct Changed {
    pub before: Rfq,
    pub after: Rfq,
}

pub struct Sourcing {
    store: Store,
    predictions: Arc<Predictions>,
    ingest: Arc<Ingest>,
    notifications: Arc<Fanout<Notification>>,
    /// Where `sourcing` rules' webhooks are served.
    alerts: Arc<Alerts>,
    clock: Arc<Clock>,
    config: SourcingConfig,
}

impl Sourcing {
    pub fn new(
        store: Store,
        predictions: Arc<Predictions>,
        ingest: Arc<Ingest>,
        notifications: Arc<Fanout<Notification>>,
        alerts: Arc<Alerts>,
        clock: Arc<Clock>,
        config: SourcingConfig,
    ) -> Sourcing {
        Sourcing {
            store,
            predictions,
            ingest,
            notifications,
            alerts,
            clock,
            config,
        }
    }

    pub fn config(&self) -> &SourcingConfig {
        &self.config
    }

    /// Open RFQs whose deadline passed are closed (at their deadline) before anything reads or changes
    /// them: written when a read finds one, so reads of RFQs not due never write.
    fn due(&self, rfq: &Rfq) -> bool {
        rfq.status == RfqStatus::Open && rfq.deadline <= self.clock.now()
    }

    async fn close_due(&self, org: &str) -> Result<(), SourcingError> {
        self.store.close_due_rfqs(org, self.clock.now()).await?;
        Ok(())
    }

    pub async fn list(
        &self,
        org: &str,
        filter: &RfqFilter,
        page: &ListParams,
    ) -> Result<Listed<Rfq>, SourcingError> {
        let listed = self.store.rfqs(org, filter, page).await?;
        if !listed.items.iter().any(|r| self.due(r)) {
            return Ok(listed);
        }
        self.close_due(org).await?;
        Ok(self.store.rfqs(org, filter, page).await?)
    }

    pub async fn get(&self, org: &str, id: &str) -> Result<Rfq, SourcingError> {
        let rfq = self.store.rfq(org, id).await?;
        if !self.due(&rfq) {
            return Ok(rfq);
        }
        self.close_due(org).await?;
        Ok(self.store.rfq(org, id).await?)
    }

    /// A new RFQ, in draft.
    pub async fn create(&self, org: &str, new: NewRfq) -> Result<Rfq, SourcingError> {
        Ok(self.store.create_rfq(org, new, self.clock.now()).await?)
    }

    /// The RFQ at `version` (when one is named), as read now.
    async fn read(&self, org: &str, id: &str, version: Option<i64>) -> Result<Rfq, SourcingError> {
        let rfq = self.get(org, id).await?;
        match version {
            Some(v) if v != rfq.version => {
                Err(SourcingError::Store(StoreError::Conflict(format!(
                    "the RFQ is at version {}, not {v}: read it again",
                    rfq.version
                ))))
            }
            _ => Ok(rfq),
        }
    }

    /// Changes a draft's fields, or an open RFQ's title, notes, deadline (a later one still to come) and
    /// invitations (added, never withdrawn).
    pub async fn update(
        &self,
        org: &str,
        id: &str,
        version: Option<i64>,
        patch: RfqPatch,
    ) -> Result<Changed, SourcingError> {
        let before = self.read(org, id, version).await?;
        let now = self.clock.now();
        let mut after = before.clone();
        let open = before.status == RfqStatus::Open;
        if !matches!(before.status, RfqStatus::Draft | RfqStatus::Open) {
            return Err(SourcingError::State(format!(
                "the RFQ is {}: only a draft or an open RFQ changes",
                before.status.as_str()
            )));
        }
        if open
            && (patch.lines.is_some() || patch.incoterm.is_some() || patch.named_place.is_some())
        {
            return Err(SourcingError::State(
                "the RFQ is open: its lines and terms are fixed (cancel it and send another, or change the deadline, notes or invitations)"
                    .into(),
            ));
        }
        if let Some(title) = patch.title {
            after.title = title;
        }
        if let Some(notes) = patch.notes {
            after.notes = notes;
        }
        if let Some(incoterm) = patch.incoterm {
            after.incoterm = incoterm;
        }
        if let Some(place) = patch.named_place {
            after.named_place = place;
        }
        if let Some(deadline) = patch.deadline {
            if open && deadline <= now {
                return Err(SourcingError::field(
                    "deadline",
                    "an open RFQ's deadline must be still to come",
                ));
            }
            after.deadline = deadline;
        }
        if let Some(lines) = patch.lines {
            after.lines = checked_lines(lines)?;
        }
        if let Some(suppliers) = patch.suppliers {
            checked_suppliers(&suppliers)?;
            if open {
                if let Some(dropped) = before
                    .suppliers
                    .iter()
                    .find(|i| !suppliers.contains(&i.supplier_id))
                {
                    return Err(SourcingError::field(
                        "suppliers",
                        format!(
                            "an open RFQ's invitations are only added to: {} is invited",
                            dropped.supplier_id
                        ),
                    ));
                }
            }
            after.suppliers = invites(suppliers);
        }
        after.updated_at = now;
        let after = self.store.write_rfq(org, &after, before.version).await?;
        Ok(Changed { before, after })
    }

    /// Deletes a draft or a cancelled RFQ.
    pub async fn delete(
        &self,
        org: &str,
        id: &str,
        version: Option<i64>,
    ) -> Result<Rfq, SourcingError> {
        let rfq = self.read(org, id, version).await?;
        if !matches!(rfq.status, RfqStatus::Draft | RfqStatus::Cancelled) {
            return Err(SourcingError::State(format!(
                "the RFQ is {}: only a draft or a cancelled RFQ is deleted (cancel it first)",
                rfq.status.as_str()
            )));
        }
        Ok(self.store.delete_rfq(org, id, Some(rfq.version)).await?)
    }

    /// Moves the RFQ's state, if the move is allowed from where it is.
    pub async fn act(
        &self,
        org: &str,
        id: &str,
        version: Option<i64>,
        action: Action,
    ) -> Result<Changed, SourcingError> {
        let before = self.read(org, id, version).await?;
        let now = self.clock.now();
        let mut after = before.clone();
        let refused = || {
            SourcingError::State(format!(
                "an RFQ that is {} cannot {}",
                before.status.as_str(),
                action.name()
            ))
        };
        match (&action, before.status) {
            (Action::Open, RfqStatus::Draft) => {
                let mut e = FieldErrors::default();
                if before.suppliers.is_empty() {
                    e.add("suppliers", "invite at least one supplier before opening");
                }
                if before.deadline <= now {
                    e.add(
                        "deadline",
                        "the deadline must be still to come when the RFQ opens",
                    );
                }
                e.into_result()?;
                after.status = RfqStatus::Open;
                after.opened_at = Some(now);
            }
            (Action::Close, RfqStatus::Open) => {
                after.status = RfqStatus::Closed;
                after.closed_at = Some(now);
            }
            (Action::Reopen { deadline }, RfqStatus::Closed) => {
                if *deadline <= now {
                    return Err(SourcingError::field(
                        "deadline",
                        "a reopened RFQ's deadline must be still to come",
                    ));
                }
                after.status = RfqStatus::Open;
                after.deadline = *deadline;
                after.closed_at = None;
            }
            (Action::Cancel, RfqStatus::Draft | RfqStatus::Open | RfqStatus::Closed) => {
                after.status = RfqStatus::Cancelled;
                after.decided_at = Some(now);
            }
            _ => return Err(refused()),
        }
        after.updated_at = now;
        let after = self.store.write_rfq(org, &after, before.version).await?;
        let event = match action {
            Action::Open | Action::Reopen { .. } => "rfq.opened",
            Action::Close => "rfq.closed",
            Action::Cancel => "rfq.cancelled",
        };
        let id = format!("{event}:{}:{}", after.id, after.version);
        self.announce(org, event, &id, rfq_summary(&after)).await;
        Ok(Changed { before, after })
    }

    /// `{"type": event, "id", "at", ...fields}` to the organization's `/ws/notifications` listeners, and
    /// to the webhooks of its `sourcing` rules that name the event.
    async fn announce(&self, org: &str, event: &str, id: &str, fields: serde_json::Value) {
        let mut body = json!({"type": event, "id": id, "at": self.clock.now()});
        if let (Some(body), serde_json::Value::Object(fields)) = (body.as_object_mut(), fields) {
            body.extend(fields);
        }
        self.alerts.deliver_event(org, event, id, &body).await;
        self.notifications.send(org, [Arc::new(body)]);
    }
}

/// What an RFQ event says of it.
fn rfq_summary(rfq: &Rfq) -> serde_json::Value {
    json!({
        "rfq": {
            "id": rfq.id, "title": rfq.title, "status": rfq.status, "deadline": rfq.deadline,
            "lines": rfq.lines.len(), "suppliers": rfq.suppliers.len(), "version": rfq.version,
        }
    })
}
