//! Price observations: the time series every prediction reads.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, FromRow, Row};

use crate::changes::{Changed, Observed, PriceMoves};
use crate::validate::{present, time};
use crate::{
    from_ms, new_id, now_ms, order_by, FieldErrors, ListParams, Listed, Result, RowError, Sql,
    Store, StoreError, Time, Value,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PriceType {
    Quote,
    Contract,
    Market,
    Invoice,
}

impl PriceType {
    pub fn as_str(self) -> &'static str {
        match self {
            PriceType::Quote => "quote",
            PriceType::Contract => "contract",
            PriceType::Market => "market",
            PriceType::Invoice => "invoice",
        }
    }

    fn parse(s: &str) -> Option<PriceType> {
        Some(match s {
            "quote" => PriceType::Quote,
            "contract" => PriceType::Contract,
            "market" => PriceType::Market,
            "invoice" => PriceType::Invoice,
            _ => return None,
        })
    }
}

/// What the feature history keeps of an observation.
#[derive(Debug, Clone, PartialEq)]
pub struct PricePoint {
    pub id: String,
    pub organization_id: String,
    pub material_id: String,
    pub supplier_id: Option<String>,
    pub observed_at_ms: i64,
    pub price: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Price {
    pub id: String,
    /// When the price was observed (quoted, contracted, invoiced).
    pub time: DateTime<Utc>,
    pub material_id: String,
    pub supplier_id: Option<String>,
    /// Per unit of the material.
    pub price: f64,
    /// ISO 4217.
    pub currency: String,
    pub quantity: Option<f64>,
    pub price_type: PriceType,
    pub source: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The anomaly model's judgement at ingest (or the last correction); null when not scored.
    pub anomaly: Option<PriceAnomaly>,
}

/// How unusual a price is, as the anomaly model scored it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            _ => return None,
        })
    }
}

/// An observation's anomaly score as stored with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PriceAnomaly {
    /// 0 to 1, higher is stranger.
    pub score: f64,
    pub is_anomaly: bool,
    /// Set when flagged.
    pub severity: Option<Severity>,
    /// The model version that scored it, `name:version`.
    pub model: String,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewPrice {
    /// RFC 3339, or a date (its midnight, UTC).
    #[serde(deserialize_with = "time")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "2025-03-01T00:00:00Z"))]
    pub time: DateTime<Utc>,
    pub material_id: String,
    #[serde(default)]
    pub supplier_id: Option<String>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0001, maximum = 1e12))]
    pub price: f64,
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Z]{3}$"))]
    pub currency: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0.0))]
    pub quantity: Option<f64>,
    pub price_type: PriceType,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 200))]
    pub source: Option<String>,
}

/// One observation of a category's benchmark.
#[derive(Debug, Clone)]
pub struct CategoryPrice {
    pub material_id: String,
    pub price_type: PriceType,
    pub price: f64,
    pub quantity: Option<f64>,
    /// Milliseconds since the epoch.
    pub at: i64,
}

/// A correction: absent fields stay; `quantity`, `source` and `supplier_id` may be set to null.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PricePatch {
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0001, maximum = 1e12))]
    pub price: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Z]{3}$"))]
    pub currency: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0.0))]
    pub quantity: Option<Option<f64>>,
    pub price_type: Option<PriceType>,
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "openapi", schema(max_length = 200))]
    pub source: Option<Option<String>>,
}

/// Which observations to list.
#[derive(Debug, Clone, Default)]
pub struct PriceQuery {
    pub material_id: Option<String>,
    pub supplier_id: Option<String>,
    pub price_type: Option<PriceType>,
    /// Inclusive.
    pub from: Option<Time>,
    /// Exclusive.
    pub to: Option<Time>,
}

fn anomaly(row: &AnyRow) -> sqlx::Result<Option<PriceAnomaly>> {
    let Some(score) = row.try_get::<Option<f64>, _>("anomaly_score")? else {
        return Ok(None);
    };
    let severity: Option<String> = row.try_get("anomaly_severity")?;
    let severity = severity
        .map(|s| {
            Severity::parse(&s)
                .ok_or_else(|| sqlx::Error::Decode(format!("unknown severity {s}").into()))
        })
        .transpose()?;
    Ok(Some(PriceAnomaly {
        score,
        is_anomaly: severity.is_some(),
        severity,
        model: row
            .try_get::<Option<String>, _>("anomaly_model")?
            .unwrap_or_default(),
    }))
}

impl<'r> FromRow<'r, AnyRow> for Price {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        let price_type: String = row.try_get("price_type")?;
        Ok(Price {
            id: row.try_get("id")?,
            time: from_ms(row.try_get("observed_at")?),
            material_id: row.try_get("material_id")?,
            supplier_id: row.try_get("supplier_id")?,
            price: row.try_get("price")?,
            currency: row.try_get("currency")?,
            quantity: row.try_get("quantity")?,
            price_type: PriceType::parse(&price_type).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown price type {price_type}").into())
            })?,
            source: row.try_get("source")?,
            created_at: from_ms(row.try_get("created_at")?),
            anomaly: anomaly(row)?,
        })
    }
}

const COLUMNS: &str = "id, observed_at, material_id, supplier_id, price, currency, quantity, \
                       price_type, source, created_at, anomaly_score, anomaly_severity, anomaly_model";
const SORTS: &[(&str, &str)] = &[
    ("time", "observed_at"),
    ("price", "price"),
    ("created_at", "created_at"),
];
/// Rows per INSERT statement. PostgreSQL: 1,000 (11,000 parameters, under its 65,535). SQLite: few, because
/// binding the n-th `$n` parameter costs SQLite a walk of the statement's parameter list (seen in perf: 90%
/// of a 1,000-row statement's time in `sqlite3_bind_parameter_name`); MERCATOR_SQLITE_ROWS_PER_INSERT
/// overrides it for measurement.
fn rows_per_statement(sqlite: bool) -> usize {
    if !sqlite {
        return 1000;
    }
    std::env::var("MERCATOR_SQLITE_ROWS_PER_INSERT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

fn check_price(
    e: &mut FieldErrors,
    price: Option<f64>,
    currency: Option<&str>,
    quantity: Option<f64>,
    source: Option<&str>,
) {
    if let Some(v) = price {
        e.price("price", v);
    }
    if let Some(v) = currency {
        e.code("currency", v, 3, "ISO 4217");
    }
    if let Some(v) = quantity {
        e.positive("quantity", v);
    }
    if let Some(v) = source {
        if v.chars().count() > 200 {
            e.add("source", "must be at most 200 characters");
        }
    }
}

impl NewPrice {
    /// The rules an observation's values must keep (its references are checked when it is written).
    pub fn check(&self) -> FieldErrors {
        let mut e = FieldErrors::default();
        check_price(
            &mut e,
            Some(self.price),
            Some(&self.currency),
            self.quantity,
            self.source.as_deref(),
        );
        e
    }
}

impl Store {
    /// Writes all the observations or none: every row is checked first (values, and that its material and
    /// supplier are the organization's), and any problem refuses the lot with every offending row named.
    pub async fn insert_prices(&self, org: &str, rows: Vec<NewPrice>) -> Result<Vec<Price>> {
        let materials = self.ids("materials", org).await?;
        let suppliers = self.ids("suppliers", org).await?;
        let mut problems = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let mut e = row.check();
            if !materials.contains(&row.material_id) {
                e.add("material_id", "no such material in the organization");
            }
            if let Some(s) = &row.supplier_id {
                if !suppliers.contains(s) {
                    e.add("supplier_id", "no such supplier in the organization");
                }
            }
            if !e.is_empty() {
                problems.push(RowError {
                    row: i + 1,
                    errors: e,
                });
            }
        }
        if !problems.is_empty() {
            return Err(StoreError::Rows(problems));
        }
        let created_at = from_ms(now_ms());
        let prices: Vec<Price> = rows
            .into_iter()
            .map(|r| Price {
                id: new_id(),
                time: r.time,
                material_id: r.material_id,
                supplier_id: r.supplier_id,
                price: r.price,
                currency: r.currency,
                quantity: r.quantity,
                price_type: r.price_type,
                source: r.source,
                created_at,
                anomaly: None,
            })
            .collect();
        let mut tx = self.write_tx().await?;
        for chunk in prices.chunks(rows_per_statement(self.sqlite)) {
            let mut sql = Sql::new(
                "INSERT INTO prices (id, organization_id, observed_at, material_id, supplier_id, price, \
                 currency, quantity, price_type, source, created_at) VALUES ",
            );
            for (i, p) in chunk.iter().enumerate() {
                sql.values_row(
                    i == 0,
                    [
                        Value::Text(Some(p.id.clone())),
                        Value::Text(Some(org.to_string())),
                        Value::Int(p.time.timestamp_millis()),
                        Value::Text(Some(p.material_id.clone())),
                        Value::Text(p.supplier_id.clone()),
                        Value::Real(Some(p.price)),
                        Value::Text(Some(p.currency.clone())),
                        Value::Real(p.quantity),
                        Value::Text(Some(p.price_type.as_str().into())),
                        Value::Text(p.source.clone()),
                        Value::Int(created_at.timestamp_millis()),
                    ],
                );
            }
            sql.query().execute(&mut *tx).await.map_err(|e| {
                // A material or supplier deleted since the check above.
                StoreError::from_write(e, "a material or supplier of these rows was just deleted")
            })?;
        }
        let moves = PriceMoves {
            add: prices.iter().map(Price::observed).collect(),
            remove: Vec::new(),
        };
        self.record_change(&mut tx, Changed::prices(org, &moves))
            .await?;
        tx.commit().await?;
        Ok(prices)
    }

    /// The organization's observations of one material and price type observed in `[from, to]`, in series
    /// order (time, then id): (time in ms, id, price).
    pub async fn price_series(
        &self,
        org: &str,
        material_id: &str,
        price_type: PriceType,
        (from, to): (Time, Time),
    ) -> Result<Vec<(i64, String, f64)>> {
        Ok(sqlx::query_as(
            "SELECT observed_at, id, price FROM prices WHERE organization_id = $1 AND material_id = $2 \
             AND price_type = $3 AND observed_at >= $4 AND observed_at <= $5 ORDER BY observed_at, id",
        )
        .bind(org)
        .bind(material_id)
        .bind(price_type.as_str())
        .bind(from.timestamp_millis())
        .bind(to.timestamp_millis())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every observation in `[from, to)` of the organization's materials in `category`: (material id,
    /// price type, price, quantity, time in ms), by time.
    pub async fn category_prices(
        &self,
        org: &str,
        category: &str,
        (from, to): (Time, Time),
    ) -> Result<Vec<CategoryPrice>> {
        let rows = sqlx::query(
            "SELECT p.material_id, p.price_type, p.price, p.quantity, p.observed_at FROM prices p \
             JOIN materials m ON m.id = p.material_id AND m.organization_id = p.organization_id \
             WHERE p.organization_id = $1 AND m.category = $2 AND p.observed_at >= $3 AND p.observed_at < $4 \
             ORDER BY p.observed_at, p.id",
        )
        .bind(org)
        .bind(category)
        .bind(from.timestamp_millis())
        .bind(to.timestamp_millis())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get("price_type")?;
                Ok(CategoryPrice {
                    material_id: r.try_get("material_id")?,
                    price_type: PriceType::parse(&kind).ok_or_else(|| {
                        sqlx::Error::Decode(format!("unknown price type {kind}").into())
                    })?,
                    price: r.try_get("price")?,
                    quantity: r.try_get("quantity")?,
                    at: r.try_get("observed_at")?,
                })
            })
            .collect::<sqlx::Result<_>>()
            .map_err(Into::into)
    }

    /// Brings the query planner's statistics up to date after a large write. PostgreSQL otherwise plans
    /// with stale row counts until autovacuum comes round (seen: a range query sorting 8,640 rows, 25 ms,
    /// instead of reading 101 off the index, 0.25 ms). SQLite plans well without statistics.
    pub async fn refresh_statistics(&self) -> Result<()> {
        if !self.sqlite {
            sqlx::query("ANALYZE prices").execute(&self.pool).await?;
        }
        Ok(())
    }

    pub async fn price(&self, org: &str, id: &str) -> Result<Price> {
        let mut conn = self.pool.acquire().await?;
        price_in(&mut conn, org, id).await
    }

    /// Observations by material, supplier, type and time range; newest first unless `sort` says otherwise.
    pub async fn list_prices(
        &self,
        org: &str,
        query: &PriceQuery,
        page: &ListParams,
    ) -> Result<Listed<Price>> {
        let mut wher = Sql::new(" WHERE organization_id = ");
        wher.bind(Value::Text(Some(org.into())));
        if let Some(v) = &query.material_id {
            wher.push(" AND material_id = ")
                .bind(Value::Text(Some(v.clone())));
        }
        if let Some(v) = &query.supplier_id {
            wher.push(" AND supplier_id = ")
                .bind(Value::Text(Some(v.clone())));
        }
        if let Some(v) = query.price_type {
            wher.push(" AND price_type = ")
                .bind(Value::Text(Some(v.as_str().into())));
        }
        if let Some(v) = query.from {
            wher.push(" AND observed_at >= ")
                .bind(Value::Int(v.timestamp_millis()));
        }
        if let Some(v) = query.to {
            wher.push(" AND observed_at < ")
                .bind(Value::Int(v.timestamp_millis()));
        }
        let order = order_by(page.sort.as_deref(), SORTS, "observed_at DESC, id DESC")?;
        self.list("prices", COLUMNS, wher, &order, page).await
    }

    /// Corrects an observation; answers it before and after.
    pub async fn update_price(
        &self,
        org: &str,
        id: &str,
        patch: PricePatch,
    ) -> Result<(Price, Price)> {
        let mut e = FieldErrors::default();
        check_price(
            &mut e,
            patch.price,
            patch.currency.as_deref(),
            patch.quantity.flatten(),
            patch.source.as_ref().and_then(|s| s.as_deref()),
        );
        e.into_result()?;
        let sets = [
            ("price", patch.price.map(|v| Value::Real(Some(v)))),
            ("currency", patch.currency.map(|v| Value::Text(Some(v)))),
            ("quantity", patch.quantity.map(Value::Real)),
            (
                "price_type",
                patch
                    .price_type
                    .map(|v| Value::Text(Some(v.as_str().into()))),
            ),
            ("source", patch.source.map(Value::Text)),
        ]
        .into_iter()
        .filter_map(|(c, v)| v.map(|v| (c, v)))
        .collect();
        let mut tx = self.write_tx().await?;
        let before = price_in(&mut tx, org, id).await?;
        self.update(
            &mut tx,
            ("prices", "price"),
            org,
            id,
            sets,
            "conflicting price",
        )
        .await?;
        let after = price_in(&mut tx, org, id).await?;
        let moves = PriceMoves {
            add: vec![after.observed()],
            remove: vec![before.observed()],
        };
        self.record_change(&mut tx, Changed::prices(org, &moves))
            .await?;
        tx.commit().await?;
        Ok((before, after))
    }

    /// Every organization's observations as the feature history needs them, `page` at a time in id order,
    /// read in one snapshot together with the newest change of the feed it includes: a history built from
    /// them and the changes after that number is exact (how a server builds its history at start).
    pub async fn price_snapshot(
        &self,
        page: usize,
        mut each: impl FnMut(Vec<PricePoint>),
    ) -> Result<i64> {
        let mut tx = self.write_tx().await?;
        if !self.sqlite {
            // SQLite's read transaction is a snapshot from its first read (WAL).
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM fleet_changes")
            .fetch_one(&mut *tx)
            .await?;
        let mut after = String::new();
        loop {
            let rows = sqlx::query(
                "SELECT id, organization_id, material_id, supplier_id, observed_at, price FROM prices \
                 WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(&after)
            .bind(page as i64)
            .fetch_all(&mut *tx)
            .await?;
            let points = rows
                .iter()
                .map(|row| {
                    Ok(PricePoint {
                        id: row.try_get("id")?,
                        organization_id: row.try_get("organization_id")?,
                        material_id: row.try_get("material_id")?,
                        supplier_id: row.try_get("supplier_id")?,
                        observed_at_ms: row.try_get("observed_at")?,
                        price: row.try_get("price")?,
                    })
                })
                .collect::<Result<Vec<PricePoint>>>()?;
            let Some(last) = points.last() else {
                break;
            };
            after = last.id.clone();
            each(points);
        }
        tx.commit().await?;
        Ok(seq.unwrap_or(0))
    }

    /// Records the anomaly scores of observations (None clears one: a corrected price that cannot be scored).
    pub async fn set_price_anomalies(
        &self,
        org: &str,
        scores: &[(String, Option<PriceAnomaly>)],
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        // One statement per chunk: UPDATE .. FROM (VALUES ..), which both databases run (VALUES columns are
        // column1, column2, .. in both).
        for chunk in scores.chunks(200) {
            let mut sql = Sql::new(
                "UPDATE prices SET anomaly_score = v.column2, anomaly_severity = v.column3, \
                 anomaly_model = v.column4 FROM (VALUES ",
            );
            for (i, (id, a)) in chunk.iter().enumerate() {
                sql.values_row(
                    i == 0,
                    [
                        Value::Text(Some(id.clone())),
                        Value::Real(a.as_ref().map(|a| a.score)),
                        Value::Text(
                            a.as_ref()
                                .and_then(|a| a.severity)
                                .map(|s| s.as_str().to_string()),
                        ),
                        Value::Text(a.as_ref().map(|a| a.model.clone())),
                    ],
                );
            }
            sql.push(") AS v WHERE prices.id = v.column1 AND prices.organization_id = ");
            sql.bind(Value::Text(Some(org.to_string())));
            sql.query().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes an observation; answers it as it was.
    pub async fn delete_price(&self, org: &str, id: &str) -> Result<Price> {
        let mut tx = self.write_tx().await?;
        let before = price_in(&mut tx, org, id).await?;
        self.delete(&mut tx, ("prices", "price"), org, id, "conflicting price")
            .await?;
        let moves = PriceMoves {
            add: Vec::new(),
            remove: vec![before.observed()],
        };
        self.record_change(&mut tx, Changed::prices(org, &moves))
            .await?;
        tx.commit().await?;
        Ok(before)
    }

    /// Every id of the organization's rows in `table`.
    async fn ids(&self, table: &str, org: &str) -> Result<HashSet<String>> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT id FROM {table} WHERE organization_id = $1"
        ))
        .bind(org)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect())
    }
}

/// The organization's observation `id`, read on `conn` (inside a writing transaction, as it is there).
async fn price_in(conn: &mut AnyConnection, org: &str, id: &str) -> Result<Price> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM prices WHERE organization_id = $1 AND id = $2"
    ))
    .bind(org)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::NotFound("price"))
}

impl Price {
    /// The observation as the price history keeps it.
    pub fn observed(&self) -> Observed {
        Observed(
            self.material_id.clone(),
            self.supplier_id.clone(),
            self.time.timestamp_millis(),
            self.price,
        )
    }
}
