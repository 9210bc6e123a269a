//! Purchase orders and their deliveries. An order's lines are JSON (written and read with it); deliveries
//! are rows, one per receipt against a line, so a supplier's delivery history is one indexed range.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::{
    from_ms, new_id, now_ms, order_by, FieldErrors, ListParams, Listed, Result, RowError, Sql,
    Store, StoreError, Value,
};

/// Lines one order may have at most.
pub const MAX_ORDER_LINES: usize = 5000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderLine {
    /// `1`, `2`, ... in the order given.
    pub id: String,
    pub material_id: String,
    pub quantity: f64,
    pub unit_price: f64,
    pub promised_date: NaiveDate,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Order {
    pub id: String,
    pub supplier_id: String,
    pub rfq_id: Option<String>,
    /// The buyer's own number for it, unique in the organization.
    pub reference: Option<String>,
    pub currency: String,
    pub ordered_on: NaiveDate,
    /// `open`, `delivered` (every line received in full, rejects aside) or `cancelled`.
    pub status: String,
    pub lines: Vec<OrderLine>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewOrderLine {
    pub material_id: String,
    pub quantity: f64,
    pub unit_price: f64,
    #[serde(deserialize_with = "crate::validate::date")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Date))]
    pub promised_date: NaiveDate,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    pub supplier_id: String,
    pub reference: Option<String>,
    pub currency: String,
    /// Default: today.
    #[serde(default, deserialize_with = "crate::validate::opt_date")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Date))]
    pub ordered_on: Option<NaiveDate>,
    pub lines: Vec<NewOrderLine>,
    /// Set when the order is made from an RFQ's awards.
    #[serde(skip)]
    pub rfq_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderDelivery {
    pub id: String,
    pub order_id: String,
    pub line_id: String,
    pub supplier_id: String,
    pub delivered_on: NaiveDate,
    pub quantity: f64,
    /// Of `quantity`, what was refused at inspection.
    pub rejected_quantity: f64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewOrderDelivery {
    pub line_id: String,
    #[serde(deserialize_with = "crate::validate::date")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Date))]
    pub delivered_on: NaiveDate,
    pub quantity: f64,
    #[serde(default)]
    pub rejected_quantity: f64,
}

/// One order line of an import (CSV: one row per line). Rows with the same `reference` are one order's
/// lines, in the order given; they name the same supplier, currency and date.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OrderImportRow {
    pub reference: String,
    pub supplier_id: String,
    pub currency: String,
    /// Default: today.
    #[serde(default, deserialize_with = "crate::validate::opt_date")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Date))]
    pub ordered_on: Option<NaiveDate>,
    pub material_id: String,
    pub quantity: f64,
    pub unit_price: f64,
    #[serde(deserialize_with = "crate::validate::date")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Date))]
    pub promised_date: NaiveDate,
}

/// One receipt of an import (CSV: one row per delivery): against line `line` (`1`, `2`, ...) of the
/// order with reference `order_reference`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeliveryImportRow {
    pub order_reference: String,
    pub line: String,
    #[serde(deserialize_with = "crate::validate::date")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Date))]
    pub delivered_on: NaiveDate,
    pub quantity: f64,
    #[serde(default)]
    pub rejected_quantity: f64,
}

#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub supplier_id: Option<String>,
    pub status: Option<String>,
    pub rfq_id: Option<String>,
}

const ORDER_COLUMNS: &str =
    "id, supplier_id, rfq_id, reference, currency, ordered_on, status, lines, created_at, updated_at";
const ORDER_SORTS: &[(&str, &str)] = &[
    ("ordered_on", "ordered_on"),
    ("created_at", "created_at"),
    ("reference", "reference"),
];
const DELIVERY_COLUMNS: &str =
    "id, order_id, line_id, supplier_id, delivered_on, quantity, rejected_quantity, created_at";

fn date(row: &AnyRow, column: &str) -> sqlx::Result<NaiveDate> {
    let text: String = row.try_get(column)?;
    text.parse()
        .map_err(|e: chrono::ParseError| sqlx::Error::Decode(Box::new(e)))
}

impl<'r> FromRow<'r, AnyRow> for Order {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        Ok(Order {
            id: row.try_get("id")?,
            supplier_id: row.try_get("supplier_id")?,
            rfq_id: row.try_get("rfq_id")?,
            reference: row.try_get("reference")?,
            currency: row.try_get("currency")?,
            ordered_on: date(row, "ordered_on")?,
            status: row.try_get("status")?,
            lines: serde_json::from_str(&row.try_get::<String, _>("lines")?)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            created_at: from_ms(row.try_get("created_at")?),
            updated_at: from_ms(row.try_get("updated_at")?),
        })
    }
}

impl<'r> FromRow<'r, AnyRow> for OrderDelivery {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        Ok(OrderDelivery {
            id: row.try_get("id")?,
            order_id: row.try_get("order_id")?,
            line_id: row.try_get("line_id")?,
            supplier_id: row.try_get("supplier_id")?,
            delivered_on: date(row, "delivered_on")?,
            quantity: row.try_get("quantity")?,
            rejected_quantity: row.try_get("rejected_quantity")?,
            created_at: from_ms(row.try_get("created_at")?),
        })
    }
}

/// One new order checked: its fields, and its lines numbered.
fn checked_order(e: &mut FieldErrors, new: NewOrder, today: NaiveDate) -> Order {
    e.code("currency", &new.currency, 3, "ISO 4217");
    if let Some(reference) = &new.reference {
        e.text("reference", reference, 100);
    }
    if new.lines.is_empty() {
        e.add("lines", "an order has at least one line");
    } else if new.lines.len() > MAX_ORDER_LINES {
        e.add("lines", format!("at most {MAX_ORDER_LINES} lines"));
    }
    let ordered_on = new.ordered_on.unwrap_or(today);
    let lines = new
        .lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            e.positive(&format!("lines[{i}].quantity"), l.quantity);
            e.price(&format!("lines[{i}].unit_price"), l.unit_price);
            if l.promised_date < ordered_on {
                e.add(
                    &format!("lines[{i}].promised_date"),
                    "must not be before the order's date",
                );
            }
            OrderLine {
                id: (i + 1).to_string(),
                material_id: l.material_id,
                quantity: l.quantity,
                unit_price: l.unit_price,
                promised_date: l.promised_date,
            }
        })
        .collect();
    let now = from_ms(now_ms());
    Order {
        id: new_id(),
        supplier_id: new.supplier_id,
        rfq_id: new.rfq_id,
        reference: new.reference,
        currency: new.currency,
        ordered_on,
        status: "open".into(),
        lines,
        created_at: now,
        updated_at: now,
    }
}

/// A delivery's problems against its order: a line it has, a positive quantity, rejects within it, a date
/// not before the order's, an order not cancelled.
pub fn check_delivery(order: &Order, d: &NewOrderDelivery) -> FieldErrors {
    let mut e = FieldErrors::default();
    if order.status == "cancelled" {
        e.add("order", "the order is cancelled: it takes no deliveries");
    }
    if order.lines.iter().all(|l| l.id != d.line_id) {
        e.add("line_id", format!("the order has no line `{}`", d.line_id));
    }
    e.positive("quantity", d.quantity);
    if !(d.rejected_quantity.is_finite()
        && d.rejected_quantity >= 0.0
        && d.rejected_quantity <= d.quantity)
    {
        e.add(
            "rejected_quantity",
            "must be from 0 to the quantity delivered",
        );
    }
    if d.delivered_on < order.ordered_on {
        e.add("delivered_on", "must not be before the order's date");
    }
    e
}

impl Store {
    /// Writes orders, all or nothing: every order is checked (its supplier and materials the
    /// organization's, its values) and a refusal lists each order's problems by its place (`row`, from 1).
    pub async fn create_orders(
        &self,
        org: &str,
        new: Vec<NewOrder>,
        today: NaiveDate,
    ) -> Result<Vec<Order>> {
        let orders = self.check_orders(org, new, today).await?;
        self.insert_orders(org, orders).await
    }

    /// The orders `create_orders` would write, checked the same way, without writing them.
    pub async fn check_orders(
        &self,
        org: &str,
        new: Vec<NewOrder>,
        today: NaiveDate,
    ) -> Result<Vec<Order>> {
        let mut problems = Vec::new();
        let mut orders = Vec::with_capacity(new.len());
        for (i, n) in new.into_iter().enumerate() {
            let mut e = FieldErrors::default();
            let order = checked_order(&mut e, n, today);
            if !e.is_empty() {
                problems.push(RowError {
                    row: i + 1,
                    errors: e,
                });
            }
            orders.push(order);
        }
        let suppliers: Vec<&str> = orders.iter().map(|o| o.supplier_id.as_str()).collect();
        let unknown_suppliers = self.foreign_ids(org, "suppliers", &suppliers).await?;
        let materials: Vec<&str> = orders
            .iter()
            .flat_map(|o| o.lines.iter().map(|l| l.material_id.as_str()))
            .collect();
        let unknown_materials = self.foreign_ids(org, "materials", &materials).await?;
        for (i, o) in orders.iter().enumerate() {
            let mut e = FieldErrors::default();
            if unknown_suppliers.contains(&o.supplier_id) {
                e.add("supplier_id", "no such supplier in the organization");
            }
            for (j, l) in o.lines.iter().enumerate() {
                if unknown_materials.contains(&l.material_id) {
                    e.add(
                        &format!("lines[{j}].material_id"),
                        "no such material in the organization",
                    );
                }
            }
            if !e.is_empty() {
                match problems.iter_mut().find(|p| p.row == i + 1) {
                    Some(p) => {
                        for (field, messages) in e.0 {
                            for m in messages {
                                p.errors.add(&field, m);
                            }
                        }
                    }
                    None => problems.push(RowError {
                        row: i + 1,
                        errors: e,
                    }),
                }
            }
        }
        if !problems.is_empty() {
            problems.sort_by_key(|p| p.row);
            return Err(StoreError::Rows(problems));
        }
        Ok(orders)
    }

    /// Writes orders `check_orders` made, in one transaction.
    pub async fn insert_orders(&self, org: &str, orders: Vec<Order>) -> Result<Vec<Order>> {
        let mut tx = self.write_tx().await?;
        for chunk in orders.chunks(if self.sqlite { 30 } else { 500 }) {
            let mut sql = Sql::new(format!(
                "INSERT INTO orders (organization_id, {ORDER_COLUMNS}) VALUES "
            ));
            for (i, o) in chunk.iter().enumerate() {
                sql.values_row(
                    i == 0,
                    [
                        Value::Text(Some(org.to_string())),
                        Value::Text(Some(o.id.clone())),
                        Value::Text(Some(o.supplier_id.clone())),
                        Value::Text(o.rfq_id.clone()),
                        Value::Text(o.reference.clone()),
                        Value::Text(Some(o.currency.clone())),
                        Value::Text(Some(o.ordered_on.to_string())),
                        Value::Text(Some(o.status.clone())),
                        Value::Text(Some(serde_json::to_string(&o.lines).unwrap_or_default())),
                        Value::Int(o.created_at.timestamp_millis()),
                        Value::Int(o.updated_at.timestamp_millis()),
                    ],
                );
            }
            sql.query().execute(&mut *tx).await.map_err(|e| {
                StoreError::from_write(e, "an order with this reference exists in the organization")
            })?;
        }
        tx.commit().await?;
        Ok(orders)
    }

    pub async fn order(&self, org: &str, id: &str) -> Result<Order> {
        let order: Option<Order> = sqlx::query_as(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        order.ok_or(StoreError::NotFound("order"))
    }

    pub async fn orders(
        &self,
        org: &str,
        filter: &OrderFilter,
        page: &ListParams,
    ) -> Result<Listed<Order>> {
        let mut wher = Sql::new(" WHERE organization_id = ");
        wher.bind(Value::Text(Some(org.into())));
        for (column, value) in [
            ("supplier_id", &filter.supplier_id),
            ("status", &filter.status),
            ("rfq_id", &filter.rfq_id),
        ] {
            if let Some(v) = value {
                wher.push(&format!(" AND {column} = "))
                    .bind(Value::Text(Some(v.clone())));
            }
        }
        let order = order_by(
            page.sort.as_deref(),
            ORDER_SORTS,
            "ordered_on DESC, id DESC",
        )?;
        self.list("orders", ORDER_COLUMNS, wher, &order, page).await
    }

    /// Sets an order's status.
    pub async fn set_order_status(&self, org: &str, id: &str, status: &str) -> Result<Order> {
        let written = sqlx::query(
            "UPDATE orders SET status = $1, updated_at = $2 WHERE organization_id = $3 AND id = $4",
        )
        .bind(status)
        .bind(now_ms())
        .bind(org)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if written.rows_affected() == 0 {
            return Err(StoreError::NotFound("order"));
        }
        self.order(org, id).await
    }

    /// The organization's orders with these references (those that exist).
    pub async fn orders_by_reference(&self, org: &str, references: &[&str]) -> Result<Vec<Order>> {
        let mut found = Vec::new();
        for chunk in references.chunks(500) {
            let mut sql = Sql::new(format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE organization_id = "
            ));
            sql.bind(Value::Text(Some(org.into())));
            sql.push(" AND reference IN (");
            for (i, r) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.bind(Value::Text(Some(r.to_string())));
            }
            sql.push(")");
            for row in sql.query().fetch_all(&self.pool).await? {
                found.push(Order::from_row(&row)?);
            }
        }
        Ok(found)
    }

    /// Receives deliveries, each against a line of its order, all or nothing: a refusal lists each
    /// delivery's problems by its place (`row`, from 1). In the same transaction, every open order whose
    /// lines are all received in full (rejected quantities aside) becomes `delivered`; their ids are
    /// returned with the deliveries.
    pub async fn receive_deliveries(
        &self,
        org: &str,
        new: Vec<(&Order, NewOrderDelivery)>,
    ) -> Result<(Vec<OrderDelivery>, Vec<String>)> {
        let mut problems = Vec::new();
        let now = from_ms(now_ms());
        let mut deliveries = Vec::with_capacity(new.len());
        let mut orders: Vec<&Order> = Vec::new();
        for (i, (order, d)) in new.into_iter().enumerate() {
            let e = check_delivery(order, &d);
            if !e.is_empty() {
                problems.push(RowError {
                    row: i + 1,
                    errors: e,
                });
            }
            if !orders.iter().any(|o| o.id == order.id) {
                orders.push(order);
            }
            deliveries.push(OrderDelivery {
                id: new_id(),
                order_id: order.id.clone(),
                line_id: d.line_id,
                supplier_id: order.supplier_id.clone(),
                delivered_on: d.delivered_on,
                quantity: d.quantity,
                rejected_quantity: d.rejected_quantity,
                created_at: now,
            });
        }
        if !problems.is_empty() {
            return Err(StoreError::Rows(problems));
        }
        let mut tx = self.write_tx().await?;
        for chunk in deliveries.chunks(if self.sqlite { 30 } else { 500 }) {
            let mut sql = Sql::new(format!(
                "INSERT INTO deliveries (organization_id, {DELIVERY_COLUMNS}) VALUES "
            ));
            for (i, d) in chunk.iter().enumerate() {
                sql.values_row(
                    i == 0,
                    [
                        Value::Text(Some(org.to_string())),
                        Value::Text(Some(d.id.clone())),
                        Value::Text(Some(d.order_id.clone())),
                        Value::Text(Some(d.line_id.clone())),
                        Value::Text(Some(d.supplier_id.clone())),
                        Value::Text(Some(d.delivered_on.to_string())),
                        Value::Real(Some(d.quantity)),
                        Value::Real(Some(d.rejected_quantity)),
                        Value::Int(d.created_at.timestamp_millis()),
                    ],
                );
            }
            sql.query()
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::from_write(e, "the order was just deleted"))?;
        }
        let mut delivered = Vec::new();
        for order in orders.into_iter().filter(|o| o.status == "open") {
            let received: Vec<(String, f64)> = sqlx::query_as(
                "SELECT line_id, SUM(quantity - rejected_quantity) FROM deliveries \
                 WHERE organization_id = $1 AND order_id = $2 GROUP BY line_id",
            )
            .bind(org)
            .bind(&order.id)
            .fetch_all(&mut *tx)
            .await?;
            let complete = order.lines.iter().all(|l| {
                let accepted = received
                    .iter()
                    .find(|(line, _)| *line == l.id)
                    .map_or(0.0, |(_, q)| *q);
                accepted + 1e-9 >= l.quantity
            });
            if complete {
                sqlx::query(
                    "UPDATE orders SET status = 'delivered', updated_at = $1 \
                     WHERE organization_id = $2 AND id = $3 AND status = 'open'",
                )
                .bind(now_ms())
                .bind(org)
                .bind(&order.id)
                .execute(&mut *tx)
                .await?;
                delivered.push(order.id.clone());
            }
        }
        tx.commit().await?;
        Ok((deliveries, delivered))
    }

    pub async fn order_deliveries(&self, org: &str, order_id: &str) -> Result<Vec<OrderDelivery>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE organization_id = $1 AND order_id = $2 \
             ORDER BY delivered_on, id"
        ))
        .bind(org)
        .bind(order_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The organization's orders placed in `[from, to]` (days), oldest first.
    pub async fn orders_between(
        &self,
        org: &str,
        (from, to): (NaiveDate, NaiveDate),
    ) -> Result<Vec<Order>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE organization_id = $1 \
             AND ordered_on >= $2 AND ordered_on <= $3 ORDER BY ordered_on, id"
        ))
        .bind(org)
        .bind(from.to_string())
        .bind(to.to_string())
        .fetch_all(&self.pool)
        .await?)
    }

    /// A supplier's orders placed in `[from, to]` (days) and every delivery against them.
    pub async fn supplier_book(
        &self,
        org: &str,
        supplier_id: &str,
        (from, to): (NaiveDate, NaiveDate),
    ) -> Result<(Vec<Order>, Vec<OrderDelivery>)> {
        let orders: Vec<Order> = sqlx::query_as(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE organization_id = $1 AND supplier_id = $2 \
             AND ordered_on >= $3 AND ordered_on <= $4 ORDER BY ordered_on, id"
        ))
        .bind(org)
        .bind(supplier_id)
        .bind(from.to_string())
        .bind(to.to_string())
        .fetch_all(&self.pool)
        .await?;
        let deliveries: Vec<OrderDelivery> = sqlx::query_as(&format!(
            "SELECT {} FROM deliveries d JOIN orders o ON o.id = d.order_id \
             WHERE d.organization_id = $1 AND d.supplier_id = $2 AND o.ordered_on >= $3 \
             AND o.ordered_on <= $4 ORDER BY d.delivered_on, d.id",
            DELIVERY_COLUMNS
                .split(", ")
                .map(|c| format!("d.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(org)
        .bind(supplier_id)
        .bind(from.to_string())
        .bind(to.to_string())
        .fetch_all(&self.pool)
        .await?;
        Ok((orders, deliveries))
    }
}
