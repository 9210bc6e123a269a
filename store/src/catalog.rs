//! Materials and suppliers: what an organization buys, and from whom.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, FromRow, Row};

use crate::changes::{ChangeKind, Changed};
use crate::validate::present;
use crate::{
    from_ms, json, new_id, now_ms, order_by, FieldErrors, ListParams, Listed, Result, Sql, Store,
    StoreError, Value,
};

pub const MATERIAL_STATUSES: &[&str] = &["active", "inactive", "discontinued"];
pub const SUPPLIER_STATUSES: &[&str] = &["active", "inactive"];

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Material {
    pub id: String,
    /// Unique in the organization.
    pub code: String,
    pub name: String,
    pub category: String,
    /// The unit prices are quoted in (kg, m, piece...).
    pub unit: String,
    /// Free-form JSON object.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub specifications: serde_json::Value,
    pub list_price: Option<f64>,
    /// active | inactive | discontinued
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewMaterial {
    #[cfg_attr(feature = "openapi", schema(pattern = r"[^\s\u0085]", max_length = 64))]
    pub code: String,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"[^\s\u0085]", max_length = 200)
    )]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(pattern = r"[^\s\u0085]", max_length = 64))]
    pub category: String,
    #[cfg_attr(feature = "openapi", schema(pattern = r"[^\s\u0085]", max_length = 16))]
    pub unit: String,
    #[serde(default = "empty_object")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub specifications: serde_json::Value,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0.0))]
    pub list_price: Option<f64>,
    /// Default: active.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^(active|inactive|discontinued)$")
    )]
    pub status: Option<String>,
}

/// A partial update: absent fields stay as they are; `list_price: null` clears it.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MaterialPatch {
    #[cfg_attr(feature = "openapi", schema(pattern = r"[^\s\u0085]", max_length = 64))]
    pub code: Option<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"[^\s\u0085]", max_length = 200)
    )]
    pub name: Option<String>,
    #[cfg_attr(feature = "openapi", schema(pattern = r"[^\s\u0085]", max_length = 64))]
    pub category: Option<String>,
    #[cfg_attr(feature = "openapi", schema(pattern = r"[^\s\u0085]", max_length = 16))]
    pub unit: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub specifications: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0.0))]
    pub list_price: Option<Option<f64>>,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^(active|inactive|discontinued)$")
    )]
    pub status: Option<String>,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

impl<'r> FromRow<'r, AnyRow> for Material {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        Ok(Material {
            id: row.try_get("id")?,
            code: row.try_get("code")?,
            name: row.try_get("name")?,
            category: row.try_get("category")?,
            unit: row.try_get("unit")?,
            specifications: json(&row.try_get::<String, _>("specifications")?),
            list_price: row.try_get("list_price")?,
            status: row.try_get("status")?,
            created_at: from_ms(row.try_get("created_at")?),
            updated_at: from_ms(row.try_get("updated_at")?),
        })
    }
}

impl Entry for Material {
    type New = NewMaterial;
    type Patch = MaterialPatch;
    type Filter = MaterialFilter;
    const KIND: &'static str = "material";
    const CHANGE: ChangeKind = ChangeKind::Material;
    const TABLE: &'static str = "materials";
    const COLUMNS: &'static str = MATERIAL_COLUMNS;
    const SORTS: &'static [(&'static str, &'static str)] = MATERIAL_SORTS;
    const DUPLICATE: &'static str = "a material with this code exists in the organization";
    const IN_USE: &'static str = "the material has price observations; delete them first";

    fn id(&self) -> &str {
        &self.id
    }

    fn inserted(new: NewMaterial) -> Result<Columns> {
        let status = new.status.unwrap_or_else(|| "active".into());
        check_material(
            Some(&new.code),
            Some(&new.name),
            Some(&new.category),
            Some(&new.unit),
            Some(&new.specifications),
            Some(new.list_price),
            Some(&status),
        )?;
        Ok(Columns::of([
            ("code", text(Some(new.code.trim()))),
            ("name", text(Some(&new.name))),
            ("category", text(Some(&new.category))),
            ("unit", text(Some(&new.unit))),
            (
                "specifications",
                text(Some(&new.specifications.to_string())),
            ),
            ("list_price", Some(Value::Real(new.list_price))),
            ("status", text(Some(&status))),
        ]))
    }

    fn changed(patch: MaterialPatch) -> Result<Columns> {
        check_material(
            patch.code.as_deref(),
            patch.name.as_deref(),
            patch.category.as_deref(),
            patch.unit.as_deref(),
            patch.specifications.as_ref(),
            patch.list_price,
            patch.status.as_deref(),
        )?;
        let trimmed = |v: &Option<String>| text(v.as_deref().map(str::trim));
        Ok(Columns::of([
            ("code", trimmed(&patch.code)),
            ("name", trimmed(&patch.name)),
            ("category", trimmed(&patch.category)),
            ("unit", trimmed(&patch.unit)),
            (
                "specifications",
                text(patch.specifications.map(|v| v.to_string()).as_deref()),
            ),
            ("list_price", patch.list_price.map(Value::Real)),
            ("status", trimmed(&patch.status)),
        ]))
    }

    fn filtered(filter: &MaterialFilter) -> (Columns, Option<&str>) {
        let equal = Columns::of([
            ("category", text(filter.category.as_deref())),
            ("status", text(filter.status.as_deref())),
        ]);
        (equal, filter.search.as_deref())
    }
}

/// Checks what a material's fields may be; `None` fields are not being set.
#[allow(clippy::too_many_arguments)]
fn check_material(
    code: Option<&str>,
    name: Option<&str>,
    category: Option<&str>,
    unit: Option<&str>,
    specifications: Option<&serde_json::Value>,
    list_price: Option<Option<f64>>,
    status: Option<&str>,
) -> Result<()> {
    let mut e = FieldErrors::default();
    if let Some(v) = code {
        e.text("code", v, 64);
    }
    if let Some(v) = name {
        e.text("name", v, 200);
    }
    if let Some(v) = category {
        e.text("category", v, 64);
    }
    if let Some(v) = unit {
        e.text("unit", v, 16);
    }
    if let Some(v) = specifications {
        if !v.is_object() {
            e.add("specifications", "must be a JSON object");
        }
    }
    if let Some(Some(v)) = list_price {
        e.positive("list_price", v);
    }
    if let Some(v) = status {
        e.one_of("status", v, MATERIAL_STATUSES);
    }
    e.into_result()
}

const MATERIAL_COLUMNS: &str =
    "id, code, name, category, unit, specifications, list_price, status, created_at, updated_at";
const MATERIAL_SORTS: &[(&str, &str)] = &[
    ("code", "code"),
    ("name", "name"),
    ("category", "category"),
    ("list_price", "list_price"),
    ("created_at", "created_at"),
    ("updated_at", "updated_at"),
];

#[derive(Debug, Clone, Default)]
pub struct MaterialFilter {
    pub category: Option<String>,
    pub status: Option<String>,
    /// A case-insensitive substring of the code or the name.
    pub search: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct SupplierFilter {
    pub country: Option<String>,
    pub status: Option<String>,
    pub search: Option<String>,
}

/// A catalogue entry (a material, a supplier): kept the same way, each in its own table of the
/// organization's rows, with a unique code.
pub trait Entry: for<'r> FromRow<'r, AnyRow> + Send + Unpin + Sized {
    type New: Send;
    type Patch: Send;
    type Filter: Sync;
    /// What it is called: `material`, `supplier`.
    const KIND: &'static str;
    /// What the change feed calls a change to one (replicas drop their cached copy).
    const CHANGE: ChangeKind;
    const TABLE: &'static str;
    const COLUMNS: &'static str;
    /// Sort keys and their columns.
    const SORTS: &'static [(&'static str, &'static str)];
    /// The conflict when the code is taken.
    const DUPLICATE: &'static str;
    /// The conflict when prices refer to it.
    const IN_USE: &'static str;

    fn id(&self) -> &str;
    /// A new entry's columns, checked (defaults applied).
    fn inserted(new: Self::New) -> Result<Columns>;
    /// The columns a change sets, checked.
    fn changed(patch: Self::Patch) -> Result<Columns>;
    /// Columns that must equal the filter's values, and the text to search codes and names for.
    fn filtered(filter: &Self::Filter) -> (Columns, Option<&str>);
}

/// Column values for an insert, an update or a filter.
pub struct Columns(Vec<(&'static str, Value)>);

impl Columns {
    fn of(values: impl IntoIterator<Item = (&'static str, Option<Value>)>) -> Columns {
        Columns(
            values
                .into_iter()
                .filter_map(|(c, v)| v.map(|v| (c, v)))
                .collect(),
        )
    }
}

fn text(v: Option<&str>) -> Option<Value> {
    v.map(|v| Value::Text(Some(v.to_string())))
}

impl Store {
    /// Creates an entry of the organization; its code is unique there (a conflict otherwise).
    pub async fn create_entry<E: Entry>(&self, org: &str, new: E::New) -> Result<E> {
        let Columns(columns) = E::inserted(new)?;
        let id = new_id();
        let now = now_ms();
        let names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
        let mut sql = Sql::new(format!(
            "INSERT INTO {} (id, organization_id, {}, created_at, updated_at) VALUES (",
            E::TABLE,
            names.join(", ")
        ));
        sql.bind(Value::Text(Some(id.clone())))
            .push(", ")
            .bind(Value::Text(Some(org.into())));
        for (_, value) in columns {
            sql.push(", ").bind(value);
        }
        sql.push(", ")
            .bind(Value::Int(now))
            .push(", ")
            .bind(Value::Int(now))
            .push(")");
        sql.query()
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::from_write(e, E::DUPLICATE))?;
        self.entry(org, &id).await
    }

    /// One entry of the organization.
    pub async fn entry<E: Entry>(&self, org: &str, id: &str) -> Result<E> {
        sqlx::query_as(&format!(
            "SELECT {} FROM {} WHERE organization_id = $1 AND id = $2",
            E::COLUMNS,
            E::TABLE
        ))
        .bind(org)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound(E::KIND))
    }

    /// A page of the organization's entries matching `filter`, sorted by `page.sort` (default: code).
    pub async fn entries<E: Entry>(
        &self,
        org: &str,
        filter: &E::Filter,
        page: &ListParams,
    ) -> Result<Listed<E>> {
        let mut wher = Sql::new(" WHERE organization_id = ");
        wher.bind(Value::Text(Some(org.into())));
        let (Columns(equal), search_for) = E::filtered(filter);
        for (column, value) in equal {
            wher.push(&format!(" AND {column} = ")).bind(value);
        }
        if let Some(v) = search_for {
            search(&mut wher, v);
        }
        let order = order_by(page.sort.as_deref(), E::SORTS, "code ASC")?;
        self.list(E::TABLE, E::COLUMNS, wher, &order, page).await
    }

    /// Changes the fields a patch gives; answers the entry as it is now.
    pub async fn update_entry<E: Entry>(&self, org: &str, id: &str, patch: E::Patch) -> Result<E> {
        let Columns(sets) = E::changed(patch)?;
        let mut tx = self.write_tx().await?;
        self.update(&mut tx, (E::TABLE, E::KIND), org, id, sets, E::DUPLICATE)
            .await?;
        self.record_change(&mut tx, Changed::of(E::CHANGE, Some(org), id))
            .await?;
        tx.commit().await?;
        self.entry(org, id).await
    }

    /// Deletes an entry no price refers to; one that prices refer to is a conflict.
    pub async fn delete_entry<E: Entry>(&self, org: &str, id: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        self.delete(&mut tx, (E::TABLE, E::KIND), org, id, E::IN_USE)
            .await?;
        self.record_change(&mut tx, Changed::of(E::CHANGE, Some(org), id))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn material(&self, org: &str, id: &str) -> Result<Material> {
        self.entry(org, id).await
    }

    pub async fn supplier(&self, org: &str, id: &str) -> Result<Supplier> {
        self.entry(org, id).await
    }

    /// One page of `table`'s rows matching `wher` (one row more is read to tell whether there are more), and
    /// the count of all of them when `page.count` asks for it.
    pub(crate) async fn list<T>(
        &self,
        table: &str,
        columns: &str,
        wher: Sql,
        order: &str,
        page: &ListParams,
    ) -> Result<Listed<T>>
    where
        T: for<'r> FromRow<'r, AnyRow> + Send + Unpin,
    {
        let total = if page.count {
            let count = Sql {
                text: format!("SELECT COUNT(*) FROM {table}{}", wher.text),
                values: wher.values.clone(),
            };
            Some(count.query().fetch_one(&self.pool).await?.try_get(0)?)
        } else {
            None
        };
        let mut select = Sql {
            text: format!("SELECT {columns} FROM {table}{}{order} LIMIT ", wher.text),
            values: wher.values,
        };
        select
            .bind(Value::Int(i64::from(page.limit) + 1))
            .push(" OFFSET ")
            .bind(Value::Int(page.offset as i64));
        let mut items = select
            .query()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(T::from_row)
            .collect::<sqlx::Result<Vec<T>>>()?;
        let has_more = items.len() > page.limit as usize;
        items.truncate(page.limit as usize);
        Ok(Listed {
            items,
            has_more,
            total,
            limit: page.limit,
            offset: page.offset,
        })
    }

    /// Sets `sets` on the organization's row `id` (and `updated_at` where the table has it); `what` names
    /// the row when it is not there.
    pub(crate) async fn update(
        &self,
        conn: &mut AnyConnection,
        (table, what): (&str, &'static str),
        org: &str,
        id: &str,
        sets: Vec<(&str, Value)>,
        conflict: &str,
    ) -> Result<()> {
        let mut sql = Sql::new(format!("UPDATE {table} SET "));
        let stamped = table != "prices";
        if stamped {
            sql.push("updated_at = ").bind(Value::Int(now_ms()));
        } else {
            sql.push("id = id");
        }
        for (column, value) in sets {
            sql.push(&format!(", {column} = ")).bind(value);
        }
        sql.push(" WHERE organization_id = ")
            .bind(Value::Text(Some(org.into())))
            .push(" AND id = ")
            .bind(Value::Text(Some(id.into())));
        let done = sql
            .query()
            .execute(&mut *conn)
            .await
            .map_err(|e| StoreError::from_write(e, conflict))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(what));
        }
        Ok(())
    }

    pub(crate) async fn delete(
        &self,
        conn: &mut AnyConnection,
        (table, what): (&str, &'static str),
        org: &str,
        id: &str,
        conflict: &str,
    ) -> Result<()> {
        let done = sqlx::query(&format!(
            "DELETE FROM {table} WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org)
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(|e| StoreError::from_write(e, conflict))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(what));
        }
        Ok(())
    }
}

/// Code or name containing `text`, case-insensitively, on both databases (`LIKE` differs between them).
fn search(wher: &mut Sql, text: &str) {
    let pattern = format!("%{}%", crate::like_escaped(&text.to_lowercase()));
    wher.push(" AND (LOWER(code) LIKE ")
        .bind(Value::Text(Some(pattern.clone())))
        .push(" ESCAPE '\\' OR LOWER(name) LIKE ")
        .bind(Value::Text(Some(pattern)))
        .push(" ESCAPE '\\')");
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Supplier {
    pub id: String,
    /// Unique in the organization.
    pub code: String,
    pub name: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
    /// 0..1: the share of deliveries on time and as ordered.
    pub reliability: f64,
    /// active | inactive
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewSupplier {
    #[cfg_attr(feature = "openapi", schema(pattern = r"[^\s\u0085]", max_length = 64))]
    pub code: String,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"[^\s\u0085]", max_length = 200)
    )]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Z]{2}$"))]
    pub country: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0))]
    pub reliability: f64,
    /// Default: active.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = "^(active|inactive)$"))]
    pub status: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SupplierPatch {
    #[cfg_attr(feature = "openapi", schema(pattern = r"[^\s\u0085]", max_length = 64))]
    pub code: Option<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"[^\s\u0085]", max_length = 200)
    )]
    pub name: Option<String>,
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Z]{2}$"))]
    pub country: Option<String>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0))]
    pub reliability: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(pattern = "^(active|inactive)$"))]
    pub status: Option<String>,
}

impl<'r> FromRow<'r, AnyRow> for Supplier {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        Ok(Supplier {
            id: row.try_get("id")?,
            code: row.try_get("code")?,
            name: row.try_get("name")?,
            country: row.try_get("country")?,
            reliability: row.try_get("reliability")?,
            status: row.try_get("status")?,
            created_at: from_ms(row.try_get("created_at")?),
            updated_at: from_ms(row.try_get("updated_at")?),
        })
    }
}

impl Entry for Supplier {
    type New = NewSupplier;
    type Patch = SupplierPatch;
    type Filter = SupplierFilter;
    const KIND: &'static str = "supplier";
    const CHANGE: ChangeKind = ChangeKind::Supplier;
    const TABLE: &'static str = "suppliers";
    const COLUMNS: &'static str = SUPPLIER_COLUMNS;
    const SORTS: &'static [(&'static str, &'static str)] = SUPPLIER_SORTS;
    const DUPLICATE: &'static str = "a supplier with this code exists in the organization";
    const IN_USE: &'static str = "the supplier has price observations; delete them first";

    fn id(&self) -> &str {
        &self.id
    }

    fn inserted(new: NewSupplier) -> Result<Columns> {
        let status = new.status.unwrap_or_else(|| "active".into());
        check_supplier(
            Some(&new.code),
            Some(&new.name),
            Some(&new.country),
            Some(new.reliability),
            Some(&status),
        )?;
        Ok(Columns::of([
            ("code", text(Some(new.code.trim()))),
            ("name", text(Some(&new.name))),
            ("country", text(Some(&new.country))),
            ("reliability", Some(Value::Real(Some(new.reliability)))),
            ("status", text(Some(&status))),
        ]))
    }

    fn changed(patch: SupplierPatch) -> Result<Columns> {
        check_supplier(
            patch.code.as_deref(),
            patch.name.as_deref(),
            patch.country.as_deref(),
            patch.reliability,
            patch.status.as_deref(),
        )?;
        let trimmed = |v: &Option<String>| text(v.as_deref().map(str::trim));
        Ok(Columns::of([
            ("code", trimmed(&patch.code)),
            ("name", trimmed(&patch.name)),
            ("country", trimmed(&patch.country)),
            (
                "reliability",
                patch.reliability.map(|v| Value::Real(Some(v))),
            ),
            ("status", trimmed(&patch.status)),
        ]))
    }

    fn filtered(filter: &SupplierFilter) -> (Columns, Option<&str>) {
        let equal = Columns::of([
            ("country", text(filter.country.as_deref())),
            ("status", text(filter.status.as_deref())),
        ]);
        (equal, filter.search.as_deref())
    }
}

fn check_supplier(
    code: Option<&str>,
    name: Option<&str>,
    country: Option<&str>,
    reliability: Option<f64>,
    status: Option<&str>,
) -> Result<()> {
    let mut e = FieldErrors::default();
    if let Some(v) = code {
        e.text("code", v, 64);
    }
    if let Some(v) = name {
        e.text("name", v, 200);
    }
    if let Some(v) = country {
        e.code("country", v, 2, "ISO 3166-1 alpha-2");
    }
    if let Some(v) = reliability {
        if !(0.0..=1.0).contains(&v) {
            e.add("reliability", "must be between 0 and 1");
        }
    }
    if let Some(v) = status {
        e.one_of("status", v, SUPPLIER_STATUSES);
    }
    e.into_result()
}

const SUPPLIER_COLUMNS: &str =
    "id, code, name, country, reliability, status, created_at, updated_at";
const SUPPLIER_SORTS: &[(&str, &str)] = &[
    ("code", "code"),
    ("name", "name"),
    ("country", "country"),
    ("reliability", "reliability"),
    ("created_at", "created_at"),
    ("updated_at", "updated_at"),
];
