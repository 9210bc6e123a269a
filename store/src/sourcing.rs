//! Sourcing records: requests for quotation (RFQs) with their lines and invited suppliers, the quotes
//! suppliers send (each line with the benchmark it was judged by when it arrived), and the awards.
//!
//! The store keeps them and fences their changes; which changes are allowed (the RFQ's states, who may
//! quote and when) is the sourcing service's to decide. Every change of an RFQ names the `version` it
//! read: a writer that lost a race gets a conflict, never a silent overwrite.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::{
    from_ms, like_escaped, new_id, order_by, FieldErrors, ListParams, Listed, Result, Sql, Store,
    StoreError, Time, Value,
};

/// Lines one RFQ may have at most.
pub const MAX_RFQ_LINES: usize = 5000;
/// Suppliers one RFQ may invite at most.
pub const MAX_RFQ_SUPPLIERS: usize = 200;

/// Where an RFQ is: draft → open → closed → partially_awarded → awarded, or cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RfqStatus {
    Draft,
    Open,
    Closed,
    PartiallyAwarded,
    Awarded,
    Cancelled,
}

impl RfqStatus {
    pub const ALL: [RfqStatus; 6] = [
        RfqStatus::Draft,
        RfqStatus::Open,
        RfqStatus::Closed,
        RfqStatus::PartiallyAwarded,
        RfqStatus::Awarded,
        RfqStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RfqStatus::Draft => "draft",
            RfqStatus::Open => "open",
            RfqStatus::Closed => "closed",
            RfqStatus::PartiallyAwarded => "partially_awarded",
            RfqStatus::Awarded => "awarded",
            RfqStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<RfqStatus> {
        RfqStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One thing an RFQ asks a price for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RfqLine {
    /// `1`, `2`, ... in the order the lines were given.
    pub id: String,
    pub material_id: String,
    /// In `unit` (the material's unit when none is given).
    pub quantity: f64,
    pub unit: Option<String>,
    pub needed_by: NaiveDate,
}

/// An invited supplier, and whether it has quoted.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Invite {
    pub supplier_id: String,
    /// `invited` until the supplier quotes, then `responded`.
    pub status: &'static str,
    /// Its current quote, once it has quoted.
    pub quote_id: Option<String>,
}

/// An award: a quantity of a line given to a supplier at the price of its quote.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Award {
    pub id: String,
    pub line_id: String,
    pub quote_id: String,
    pub supplier_id: String,
    pub quantity: f64,
    pub unit_price: f64,
    pub awarded_at: DateTime<Utc>,
}

/// A request for quotation.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rfq {
    pub id: String,
    pub title: String,
    /// ISO 4217; quotes are in it.
    pub currency: String,
    pub incoterm: Option<String>,
    pub named_place: Option<String>,
    pub notes: Option<String>,
    /// Quotes are taken until then; an open RFQ is closed when it passes.
    pub deadline: DateTime<Utc>,
    pub status: RfqStatus,
    pub lines: Vec<RfqLine>,
    pub suppliers: Vec<Invite>,
    pub awards: Vec<Award>,
    /// Changes with every write; a change names the version it read (`If-Match` on the API).
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub opened_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    /// When it was awarded in full or cancelled.
    pub decided_at: Option<DateTime<Utc>>,
}

impl Rfq {
    pub fn line(&self, id: &str) -> Option<&RfqLine> {
        self.lines.iter().find(|l| l.id == id)
    }

    pub fn invites(&self, supplier_id: &str) -> bool {
        self.suppliers.iter().any(|i| i.supplier_id == supplier_id)
    }

    /// The quantity of a line awarded so far.
    pub fn awarded(&self, line_id: &str) -> f64 {
        self.awards
            .iter()
            .filter(|a| a.line_id == line_id)
            .map(|a| a.quantity)
            .sum()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewRfqLine {
    pub material_id: String,
    pub quantity: f64,
    pub unit: Option<String>,
    #[serde(deserialize_with = "crate::validate::date")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Date))]
    pub needed_by: NaiveDate,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewRfq {
    pub title: String,
    pub currency: String,
    pub incoterm: Option<String>,
    pub named_place: Option<String>,
    pub notes: Option<String>,
    /// RFC 3339, or a date (its midnight UTC).
    #[serde(deserialize_with = "crate::validate::time")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub deadline: DateTime<Utc>,
    pub lines: Vec<NewRfqLine>,
    /// Supplier ids of the organization.
    #[serde(default)]
    pub suppliers: Vec<String>,
}

/// What an RFQ's owner may change (the service says in which states).
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RfqPatch {
    pub title: Option<String>,
    #[serde(default, deserialize_with = "crate::validate::present")]
    pub notes: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::validate::present")]
    pub incoterm: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::validate::present")]
    pub named_place: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::validate::opt_time")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub deadline: Option<DateTime<Utc>>,
    /// Replaces the lines (a draft's only).
    pub lines: Option<Vec<NewRfqLine>>,
    /// Replaces the invited suppliers (a draft's; an open RFQ may only add).
    pub suppliers: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default)]
pub struct RfqFilter {
    pub status: Option<RfqStatus>,
    /// A case-insensitive substring of the title.
    pub q: Option<String>,
    /// RFQs that invite this supplier.
    pub supplier_id: Option<String>,
}

/// Where a quoted price falls against the price model's fair price for the same purchase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Benchmark {
    /// The price model's predicted unit price at the line's quantity, supplier and delivery date.
    pub fair_price: f64,
    pub lower: f64,
    pub upper: f64,
    /// The interval's nominal level (0.8: lower and upper are the 10th and 90th percentiles).
    pub level: f64,
    /// Where the quote falls in the predictive distribution (a split normal through the interval), 0–1.
    pub percentile: f64,
    /// The quote's standard score on its side of the fair price.
    pub z: f64,
    /// (fair price − unit price) × quantity: positive is a saving against the fair price, negative an
    /// overpayment.
    pub savings: f64,
    /// `below`, `within` or `above` the interval.
    pub verdict: String,
    pub model: String,
    pub model_version: u64,
    /// The day the fair price was asked for.
    pub as_of: NaiveDate,
    /// The delivery date the fair price is for.
    pub delivery_date: NaiveDate,
}

/// A 0–100 score of a quote line; each component 0–100 and the weights they had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DealScore {
    /// The weighted mean of the components present, rounded half away from zero; null when a gate
    /// failed (`reason` says which).
    pub score: Option<f64>,
    /// price, reliability, lead_time, risk: each null when it cannot be computed.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub components: serde_json::Map<String, serde_json::Value>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub weights: serde_json::Map<String, serde_json::Value>,
    /// Components left out (their weight shared among the others).
    pub missing: Vec<String>,
    pub reason: Option<String>,
}

/// One line of a quote, as it was judged when it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuoteLine {
    pub line_id: String,
    pub material_id: String,
    pub unit_price: f64,
    /// The quantity offered (the line's when none was given).
    pub quantity: f64,
    pub lead_time_days: Option<u32>,
    /// When the supplier promises delivery: given, or the quote's day plus the lead time, or the line's
    /// needed-by date.
    pub promised_date: NaiveDate,
    /// Null when the price model could not judge it (`benchmark_error` says why).
    pub benchmark: Option<Benchmark>,
    pub benchmark_error: Option<String>,
    /// The anomaly model's score of the quote as a price observation, and its level.
    pub anomaly_score: Option<f64>,
    pub anomaly_severity: Option<String>,
    /// The risk model's chance the line arrives late, when a risk model answered.
    #[serde(default)]
    pub p_late: Option<f64>,
    pub deal: DealScore,
    /// The price observation (type `quote`) it became.
    pub price_id: Option<String>,
}

/// A supplier's answer to an RFQ.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Quote {
    pub id: String,
    pub rfq_id: String,
    pub supplier_id: String,
    /// 1 for the supplier's first quote; a later one supersedes it.
    pub revision: i64,
    /// `submitted`, or `superseded` by the supplier's later quote.
    pub status: String,
    pub currency: String,
    pub incoterm: Option<String>,
    /// The last day its prices hold; an expired quote cannot be awarded.
    pub valid_until: Option<NaiveDate>,
    pub submitted_at: DateTime<Utc>,
    pub lines: Vec<QuoteLine>,
}

const RFQ_COLUMNS: &str = "id, title, currency, incoterm, named_place, notes, deadline, status, lines, \
                           suppliers, version, created_at, updated_at, opened_at, closed_at, decided_at";
const RFQ_SORTS: &[(&str, &str)] = &[
    ("created_at", "created_at"),
    ("deadline", "deadline"),
    ("title", "title"),
    ("status", "status"),
];
const QUOTE_COLUMNS: &str = "id, rfq_id, supplier_id, revision, status, currency, incoterm, \
                             valid_until, submitted_at, lines";

/// An RFQ row before its invitations' answers and its awards are read.
struct RfqRow(Rfq, Vec<String>);

impl<'r> FromRow<'r, AnyRow> for RfqRow {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        let decode = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
        let status: String = row.try_get("status")?;
        let suppliers: Vec<String> =
            serde_json::from_str(&row.try_get::<String, _>("suppliers")?).map_err(decode)?;
        let time = |column: &str| -> sqlx::Result<Option<Time>> {
            Ok(row.try_get::<Option<i64>, _>(column)?.map(from_ms))
        };
        Ok(RfqRow(
            Rfq {
                id: row.try_get("id")?,
                title: row.try_get("title")?,
                currency: row.try_get("currency")?,
                incoterm: row.try_get("incoterm")?,
                named_place: row.try_get("named_place")?,
                notes: row.try_get("notes")?,
                deadline: from_ms(row.try_get("deadline")?),
                status: RfqStatus::parse(&status).ok_or_else(|| {
                    sqlx::Error::Decode(format!("an RFQ status `{status}`").into())
                })?,
                lines: serde_json::from_str(&row.try_get::<String, _>("lines")?).map_err(decode)?,
                suppliers: Vec::new(),
                awards: Vec::new(),
                version: row.try_get("version")?,
                created_at: from_ms(row.try_get("created_at")?),
                updated_at: from_ms(row.try_get("updated_at")?),
                opened_at: time("opened_at")?,
                closed_at: time("closed_at")?,
                decided_at: time("decided_at")?,
            },
            suppliers,
        ))
    }
}

impl<'r> FromRow<'r, AnyRow> for Quote {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        let decode = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
        Ok(Quote {
            id: row.try_get("id")?,
            rfq_id: row.try_get("rfq_id")?,
            supplier_id: row.try_get("supplier_id")?,
            revision: row.try_get("revision")?,
            status: row.try_get("status")?,
            currency: row.try_get("currency")?,
            incoterm: row.try_get("incoterm")?,
            valid_until: row
                .try_get::<Option<String>, _>("valid_until")?
                .and_then(|d| d.parse().ok()),
            submitted_at: from_ms(row.try_get("submitted_at")?),
            lines: serde_json::from_str(&row.try_get::<String, _>("lines")?).map_err(decode)?,
        })
    }
}

/// The lines checked and numbered.
fn check_lines(e: &mut FieldErrors, lines: Vec<NewRfqLine>) -> Vec<RfqLine> {
    if lines.is_empty() {
        e.add("lines", "an RFQ needs at least one line");
    } else if lines.len() > MAX_RFQ_LINES {
        e.add("lines", format!("at most {MAX_RFQ_LINES} lines"));
    }
    lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            e.positive(&format!("lines[{i}].quantity"), l.quantity);
            if l.material_id.is_empty() {
                e.add(&format!("lines[{i}].material_id"), "must not be empty");
            }
            if let Some(unit) = &l.unit {
                e.text(&format!("lines[{i}].unit"), unit, 20);
            }
            RfqLine {
                id: (i + 1).to_string(),
                material_id: l.material_id,
                quantity: l.quantity,
                unit: l.unit,
                needed_by: l.needed_by,
            }
        })
        .collect()
}

fn check_suppliers(e: &mut FieldErrors, suppliers: &[String]) {
    if suppliers.len() > MAX_RFQ_SUPPLIERS {
        e.add(
            "suppliers",
            format!("at most {MAX_RFQ_SUPPLIERS} suppliers"),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for s in suppliers {
        if !seen.insert(s) {
            e.add("suppliers", format!("`{s}` is named twice"));
        }
    }
}

fn check_text(e: &mut FieldErrors, rfq: &Rfq) {
    e.text("title", &rfq.title, 200);
    e.code("currency", &rfq.currency, 3, "ISO 4217");
    if let Some(incoterm) = &rfq.incoterm {
        e.code(
            "incoterm",
            incoterm,
            3,
            "an Incoterms 2020 rule, such as FCA or DDP",
        );
    }
    if let Some(place) = &rfq.named_place {
        e.text("named_place", place, 200);
    }
    if let Some(notes) = &rfq.notes {
        if notes.chars().count() > 10_000 {
            e.add("notes", "must be at most 10000 characters");
        }
    }
}

impl Store {
    /// Ids among `ids` that are not the organization's rows of `table`.
    pub(crate) async fn foreign_ids(
        &self,
        org: &str,
        table: &str,
        ids: &[&str],
    ) -> Result<Vec<String>> {
        let mut unknown = Vec::new();
        let mut distinct: Vec<&str> = ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        for chunk in distinct.chunks(500) {
            let mut sql = Sql::new(format!("SELECT id FROM {table} WHERE organization_id = "));
            sql.bind(Value::Text(Some(org.into()))).push(" AND id IN (");
            for (i, id) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.bind(Value::Text(Some(id.to_string())));
            }
            sql.push(")");
            let found: std::collections::HashSet<String> = sql
                .query()
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<sqlx::Result<_>>()?;
            unknown.extend(
                chunk
                    .iter()
                    .filter(|id| !found.contains(**id))
                    .map(|id| id.to_string()),
            );
        }
        Ok(unknown)
    }

    /// Refuses lines naming another organization's (or no) material and invitations of unknown suppliers.
    async fn check_references(&self, org: &str, rfq: &Rfq) -> Result<()> {
        let mut e = FieldErrors::default();
        let materials: Vec<&str> = rfq.lines.iter().map(|l| l.material_id.as_str()).collect();
        for id in self.foreign_ids(org, "materials", &materials).await? {
            e.add("lines", format!("no material `{id}` in the organization"));
        }
        let suppliers: Vec<&str> = rfq
            .suppliers
            .iter()
            .map(|s| s.supplier_id.as_str())
            .collect();
        for id in self.foreign_ids(org, "suppliers", &suppliers).await? {
            e.add(
                "suppliers",
                format!("no supplier `{id}` in the organization"),
            );
        }
        e.into_result()
    }

    /// A new RFQ, in draft.
    pub async fn create_rfq(&self, org: &str, new: NewRfq, now: Time) -> Result<Rfq> {
        let mut e = FieldErrors::default();
        let lines = check_lines(&mut e, new.lines);
        check_suppliers(&mut e, &new.suppliers);
        let rfq = Rfq {
            id: new_id(),
            title: new.title,
            currency: new.currency,
            incoterm: new.incoterm,
            named_place: new.named_place,
            notes: new.notes,
            deadline: new.deadline,
            status: RfqStatus::Draft,
            lines,
            suppliers: invites(new.suppliers),
            awards: Vec::new(),
            version: 1,
            created_at: now,
            updated_at: now,
            opened_at: None,
            closed_at: None,
            decided_at: None,
        };
        check_text(&mut e, &rfq);
        e.into_result()?;
        self.check_references(org, &rfq).await?;
        // A new RFQ has not opened, closed or been decided: those columns stay NULL.
        let mut sql = Sql::new(
            "INSERT INTO rfqs (organization_id, id, title, currency, incoterm, named_place, notes, deadline, \
             status, lines, suppliers, version, created_at, updated_at) VALUES ",
        );
        sql.values_row(true, rfq_values(org, &rfq));
        sql.query().execute(&self.pool).await?;
        Ok(rfq)
    }

    /// Closes the organization's open RFQs whose deadline has passed (at their deadline).
    pub async fn close_due_rfqs(&self, org: &str, now: Time) -> Result<u64> {
        let closed = sqlx::query(
            "UPDATE rfqs SET status = 'closed', closed_at = deadline, updated_at = $1, version = version + 1 \
             WHERE organization_id = $2 AND status = 'open' AND deadline <= $3",
        )
        .bind(now.timestamp_millis())
        .bind(org)
        .bind(now.timestamp_millis())
        .execute(&self.pool)
        .await?;
        Ok(closed.rows_affected())
    }

    pub async fn rfq(&self, org: &str, id: &str) -> Result<Rfq> {
        let row: Option<RfqRow> = sqlx::query_as(&format!(
            "SELECT {RFQ_COLUMNS} FROM rfqs WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let row = row.ok_or(StoreError::NotFound("RFQ"))?;
        self.completed(org, row).await
    }

    /// The RFQ with its invitations' answers and its awards.
    async fn completed(&self, org: &str, RfqRow(mut rfq, suppliers): RfqRow) -> Result<Rfq> {
        let quoted: Vec<(String, String)> = sqlx::query_as(
            "SELECT supplier_id, id FROM quotes \
             WHERE organization_id = $1 AND rfq_id = $2 AND status = 'submitted'",
        )
        .bind(org)
        .bind(&rfq.id)
        .fetch_all(&self.pool)
        .await?;
        rfq.suppliers = suppliers
            .into_iter()
            .map(|supplier_id| {
                let quote_id = quoted
                    .iter()
                    .find(|(s, _)| *s == supplier_id)
                    .map(|(_, q)| q.clone());
                Invite {
                    status: if quote_id.is_some() {
                        "responded"
                    } else {
                        "invited"
                    },
                    supplier_id,
                    quote_id,
                }
            })
            .collect();
        rfq.awards = self.awards(org, &rfq.id).await?;
        Ok(rfq)
    }

    pub async fn rfqs(
        &self,
        org: &str,
        filter: &RfqFilter,
        page: &ListParams,
    ) -> Result<Listed<Rfq>> {
        let mut wher = Sql::new(" WHERE organization_id = ");
        wher.bind(Value::Text(Some(org.into())));
        if let Some(status) = filter.status {
            wher.push(" AND status = ")
                .bind(Value::Text(Some(status.as_str().into())));
        }
        if let Some(q) = &filter.q {
            wher.push(" AND LOWER(title) LIKE ")
                .bind(Value::Text(Some(format!(
                    "%{}%",
                    like_escaped(&q.to_lowercase())
                ))))
                .push(" ESCAPE '\\'");
        }
        if let Some(supplier) = &filter.supplier_id {
            // Supplier ids are hex: quoted in the JSON array exactly as written.
            wher.push(" AND suppliers LIKE ")
                .bind(Value::Text(Some(format!(
                    "%\"{}\"%",
                    like_escaped(supplier)
                ))))
                .push(" ESCAPE '\\'");
        }
        let order = order_by(page.sort.as_deref(), RFQ_SORTS, "created_at DESC, id DESC")?;
        let listed: Listed<RfqRow> = self.list("rfqs", RFQ_COLUMNS, wher, &order, page).await?;
        let mut items = Vec::with_capacity(listed.items.len());
        for row in listed.items {
            items.push(self.completed(org, row).await?);
        }
        Ok(Listed {
            items,
            has_more: listed.has_more,
            total: listed.total,
            limit: listed.limit,
            offset: listed.offset,
        })
    }

    /// The ids of the RFQs that invite `supplier_id` and opened in `[from, to)`.
    pub async fn rfqs_inviting(
        &self,
        org: &str,
        supplier_id: &str,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM rfqs WHERE organization_id = $1 AND opened_at >= $2 AND opened_at < $3 \
             AND suppliers LIKE $4 ESCAPE '\\' ORDER BY opened_at, id",
        )
        .bind(org)
        .bind(from.timestamp_millis())
        .bind(to.timestamp_millis())
        .bind(format!("%\"{}\"%", like_escaped(supplier_id)))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Writes an RFQ's changed fields (lines and invitations checked again), if it is still at `version`;
    /// answers it at its new version.
    pub async fn write_rfq(&self, org: &str, rfq: &Rfq, version: i64) -> Result<Rfq> {
        let mut e = FieldErrors::default();
        check_text(&mut e, rfq);
        e.into_result()?;
        self.check_references(org, rfq).await?;
        let mut tx = self.write_tx().await?;
        self.fenced_write(&mut tx, org, rfq, version).await?;
        tx.commit().await?;
        self.rfq(org, &rfq.id).await
    }

    async fn fenced_write(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        org: &str,
        rfq: &Rfq,
        version: i64,
    ) -> Result<()> {
        let ms = |t: Option<Time>| t.map(|t| t.timestamp_millis());
        let suppliers: Vec<&str> = rfq
            .suppliers
            .iter()
            .map(|s| s.supplier_id.as_str())
            .collect();
        let written = sqlx::query(
            "UPDATE rfqs SET title = $1, incoterm = $2, named_place = $3, notes = $4, deadline = $5, \
             status = $6, lines = $7, suppliers = $8, updated_at = $9, opened_at = $10, closed_at = $11, \
             decided_at = $12, version = version + 1 \
             WHERE organization_id = $13 AND id = $14 AND version = $15",
        )
        .bind(&rfq.title)
        .bind(&rfq.incoterm)
        .bind(&rfq.named_place)
        .bind(&rfq.notes)
        .bind(rfq.deadline.timestamp_millis())
        .bind(rfq.status.as_str())
        .bind(serde_json::to_string(&rfq.lines).unwrap_or_default())
        .bind(serde_json::to_string(&suppliers).unwrap_or_default())
        .bind(rfq.updated_at.timestamp_millis())
        .bind(ms(rfq.opened_at))
        .bind(ms(rfq.closed_at))
        .bind(ms(rfq.decided_at))
        .bind(org)
        .bind(&rfq.id)
        .bind(version)
        .execute(&mut **tx)
        .await?;
        if written.rows_affected() == 0 {
            // Gone, or changed since it was read.
            let exists: Option<i64> = sqlx::query_scalar(
                "SELECT version FROM rfqs WHERE organization_id = $1 AND id = $2",
            )
            .bind(org)
            .bind(&rfq.id)
            .fetch_optional(&mut **tx)
            .await?;
            return Err(match exists {
                None => StoreError::NotFound("RFQ"),
                Some(now) => StoreError::Conflict(format!(
                    "the RFQ changed since version {version} was read (it is at version {now}); read it again"
                )),
            });
        }
        Ok(())
    }

    /// Deletes an RFQ at `version` with its quotes and awards; answers it as it was.
    pub async fn delete_rfq(&self, org: &str, id: &str, version: Option<i64>) -> Result<Rfq> {
        let before = self.rfq(org, id).await?;
        let version = version.unwrap_or(before.version);
        let mut tx = self.write_tx().await?;
        for table in ["rfq_awards", "quotes"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE organization_id = $1 AND rfq_id = $2"
            ))
            .bind(org)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        let deleted =
            sqlx::query("DELETE FROM rfqs WHERE organization_id = $1 AND id = $2 AND version = $3")
                .bind(org)
                .bind(id)
                .bind(version)
                .execute(&mut *tx)
                .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "the RFQ changed since version {version} was read; read it again"
            )));
        }
        tx.commit().await?;
        Ok(before)
    }

    /// Writes a quote (given its id here) as the supplier's current one (its earlier quote superseded), if the RFQ is still
    /// at `rfq_version`: a quote never lands on an RFQ closed or changed since it was judged. Answers the
    /// quote with its revision.
    pub async fn insert_quote(
        &self,
        org: &str,
        mut quote: Quote,
        rfq_version: i64,
    ) -> Result<Quote> {
        let mut tx = self.write_tx().await?;
        // A write first: on SQLite it takes the write lock now (waiting its turn), where a read first would
        // hold a snapshot that another writer's commit makes stale (SQLITE_BUSY_SNAPSHOT, no retry).
        let fenced = sqlx::query(
            "UPDATE rfqs SET updated_at = updated_at \
             WHERE organization_id = $1 AND id = $2 AND status = 'open' AND version = $3",
        )
        .bind(org)
        .bind(&quote.rfq_id)
        .bind(rfq_version)
        .execute(&mut *tx)
        .await?;
        if fenced.rows_affected() == 0 {
            return Err(StoreError::Conflict(
                "the RFQ changed while the quote was judged (closed, or its lines or deadline changed); send the quote again"
                    .into(),
            ));
        }
        let previous: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(revision) FROM quotes WHERE organization_id = $1 AND rfq_id = $2 AND supplier_id = $3",
        )
        .bind(org)
        .bind(&quote.rfq_id)
        .bind(&quote.supplier_id)
        .fetch_one(&mut *tx)
        .await?;
        quote.revision = previous.unwrap_or(0) + 1;
        quote.id = new_id();
        sqlx::query(
            "UPDATE quotes SET status = 'superseded' \
             WHERE organization_id = $1 AND rfq_id = $2 AND supplier_id = $3 AND status = 'submitted'",
        )
        .bind(org)
        .bind(&quote.rfq_id)
        .bind(&quote.supplier_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO quotes (organization_id, {QUOTE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(org)
        .bind(&quote.id)
        .bind(&quote.rfq_id)
        .bind(&quote.supplier_id)
        .bind(quote.revision)
        .bind(&quote.status)
        .bind(&quote.currency)
        .bind(&quote.incoterm)
        .bind(quote.valid_until.map(|d| d.to_string()))
        .bind(quote.submitted_at.timestamp_millis())
        .bind(serde_json::to_string(&quote.lines).unwrap_or_default())
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::from_write(e, "another quote of this supplier arrived at the same time; send it again"))?;
        tx.commit().await?;
        Ok(quote)
    }

    /// Replaces a quote's lines (what its price observations were scored, once written).
    pub async fn set_quote_lines(&self, org: &str, id: &str, lines: &[QuoteLine]) -> Result<()> {
        sqlx::query("UPDATE quotes SET lines = $1 WHERE organization_id = $2 AND id = $3")
            .bind(serde_json::to_string(lines).unwrap_or_default())
            .bind(org)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// An RFQ's quotes, current ones only unless `superseded`, by supplier and revision.
    pub async fn quotes(&self, org: &str, rfq_id: &str, superseded: bool) -> Result<Vec<Quote>> {
        let status = if superseded {
            ""
        } else {
            " AND status = 'submitted'"
        };
        Ok(sqlx::query_as(&format!(
            "SELECT {QUOTE_COLUMNS} FROM quotes WHERE organization_id = $1 AND rfq_id = $2{status} \
             ORDER BY supplier_id, revision"
        ))
        .bind(org)
        .bind(rfq_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn quote(&self, org: &str, rfq_id: &str, id: &str) -> Result<Quote> {
        let quote: Option<Quote> = sqlx::query_as(&format!(
            "SELECT {QUOTE_COLUMNS} FROM quotes WHERE organization_id = $1 AND rfq_id = $2 AND id = $3"
        ))
        .bind(org)
        .bind(rfq_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        quote.ok_or(StoreError::NotFound("quote"))
    }

    /// Writes awards (each given its id here) and the RFQ's new state together, if the RFQ is still at
    /// `version`.
    pub async fn insert_awards(
        &self,
        org: &str,
        rfq: &Rfq,
        version: i64,
        awards: &[Award],
    ) -> Result<Rfq> {
        let mut tx = self.write_tx().await?;
        self.fenced_write(&mut tx, org, rfq, version).await?;
        for a in awards {
            sqlx::query(
                "INSERT INTO rfq_awards (id, organization_id, rfq_id, line_id, quote_id, supplier_id, \
                 quantity, unit_price, awarded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(new_id())
            .bind(org)
            .bind(&rfq.id)
            .bind(&a.line_id)
            .bind(&a.quote_id)
            .bind(&a.supplier_id)
            .bind(a.quantity)
            .bind(a.unit_price)
            .bind(a.awarded_at.timestamp_millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.rfq(org, &rfq.id).await
    }

    pub async fn awards(&self, org: &str, rfq_id: &str) -> Result<Vec<Award>> {
        let rows = sqlx::query(
            "SELECT id, line_id, quote_id, supplier_id, quantity, unit_price, awarded_at FROM rfq_awards \
             WHERE organization_id = $1 AND rfq_id = $2 ORDER BY awarded_at, id",
        )
        .bind(org)
        .bind(rfq_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Award {
                    id: r.try_get("id")?,
                    line_id: r.try_get("line_id")?,
                    quote_id: r.try_get("quote_id")?,
                    supplier_id: r.try_get("supplier_id")?,
                    quantity: r.try_get("quantity")?,
                    unit_price: r.try_get("unit_price")?,
                    awarded_at: from_ms(r.try_get("awarded_at")?),
                })
            })
            .collect()
    }
}

/// New invitations, none answered.
pub fn invites(suppliers: Vec<String>) -> Vec<Invite> {
    suppliers
        .into_iter()
        .map(|supplier_id| Invite {
            supplier_id,
            status: "invited",
            quote_id: None,
        })
        .collect()
}

/// Checks lines for an RFQ's change, numbered as a new RFQ's are.
pub fn checked_lines(lines: Vec<NewRfqLine>) -> Result<Vec<RfqLine>> {
    let mut e = FieldErrors::default();
    let lines = check_lines(&mut e, lines);
    e.into_result()?;
    Ok(lines)
}

/// Checks a list of suppliers to invite.
pub fn checked_suppliers(suppliers: &[String]) -> Result<()> {
    let mut e = FieldErrors::default();
    check_suppliers(&mut e, suppliers);
    e.into_result()
}

fn rfq_values(org: &str, rfq: &Rfq) -> Vec<Value> {
    let text = |s: &str| Value::Text(Some(s.to_string()));
    let opt = |s: &Option<String>| Value::Text(s.clone());
    let suppliers: Vec<&str> = rfq
        .suppliers
        .iter()
        .map(|s| s.supplier_id.as_str())
        .collect();
    vec![
        text(org),
        text(&rfq.id),
        text(&rfq.title),
        text(&rfq.currency),
        opt(&rfq.incoterm),
        opt(&rfq.named_place),
        opt(&rfq.notes),
        Value::Int(rfq.deadline.timestamp_millis()),
        text(rfq.status.as_str()),
        text(&serde_json::to_string(&rfq.lines).unwrap_or_default()),
        text(&serde_json::to_string(&suppliers).unwrap_or_default()),
        Value::Int(rfq.version),
        Value::Int(rfq.created_at.timestamp_millis()),
        Value::Int(rfq.updated_at.timestamp_millis()),
    ]
}
