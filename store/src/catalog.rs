//! Materials and suppliers: what an organization buys, and from whom.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

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
    pub code: String,
    pub name: String,
    pub category: String,
    pub unit: String,
    #[serde(default = "empty_object")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub specifications: serde_json::Value,
    #[serde(default)]
    pub list_price: Option<f64>,
    /// Default: active.
    #[serde(default)]
    pub status: Option<String>,
}

/// A partial update: absent fields stay as they are; `list_price: null` clears it.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MaterialPatch {
    pub code: Option<String>,
    pub name: Option<String>,
    pub category: Option<String>,
    pub unit: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub specifications: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    pub list_price: Option<Option<f64>>,
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
const DUPLICATE_MATERIAL: &str = "a material with this code exists in the organization";

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

impl Store {
    pub async fn create_material(&self, org: &str, new: NewMaterial) -> Result<Material> {
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
        let id = new_id();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO materials (id, organization_id, code, name, category, unit, specifications, \
             list_price, status, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
        )
        .bind(&id)
        .bind(org)
        .bind(new.code.trim())
        .bind(&new.name)
        .bind(&new.category)
        .bind(&new.unit)
        .bind(new.specifications.to_string())
        .bind(new.list_price)
        .bind(&status)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_write(e, DUPLICATE_MATERIAL))?;
        self.material(org, &id).await
    }

    pub async fn material(&self, org: &str, id: &str) -> Result<Material> {
        sqlx::query_as(&format!(
            "SELECT {MATERIAL_COLUMNS} FROM materials WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)
    }

    pub async fn list_materials(
        &self,
        org: &str,
        filter: &MaterialFilter,
        page: &ListParams,
    ) -> Result<Listed<Material>> {
        let mut wher = Sql::new(" WHERE organization_id = ");
        wher.bind(Value::Text(Some(org.into())));
        if let Some(v) = &filter.category {
            wher.push(" AND category = ")
                .bind(Value::Text(Some(v.clone())));
        }
        if let Some(v) = &filter.status {
            wher.push(" AND status = ")
                .bind(Value::Text(Some(v.clone())));
        }
        if let Some(v) = &filter.search {
            search(&mut wher, v);
        }
        let order = order_by(page.sort.as_deref(), MATERIAL_SORTS, "code ASC")?;
        self.list("materials", MATERIAL_COLUMNS, wher, &order, page)
            .await
    }

    pub async fn update_material(
        &self,
        org: &str,
        id: &str,
        patch: MaterialPatch,
    ) -> Result<Material> {
        check_material(
            patch.code.as_deref(),
            patch.name.as_deref(),
            patch.category.as_deref(),
            patch.unit.as_deref(),
            patch.specifications.as_ref(),
            patch.list_price,
            patch.status.as_deref(),
        )?;
        let mut sets: Vec<(&str, Value)> = Vec::new();
        let text = |v: &Option<String>| v.as_ref().map(|v| Value::Text(Some(v.trim().into())));
        for (column, value) in [
            ("code", text(&patch.code)),
            ("name", text(&patch.name)),
            ("category", text(&patch.category)),
            ("unit", text(&patch.unit)),
            (
                "specifications",
                patch
                    .specifications
                    .as_ref()
                    .map(|v| Value::Text(Some(v.to_string()))),
            ),
            ("list_price", patch.list_price.map(Value::Real)),
            ("status", text(&patch.status)),
        ] {
            if let Some(value) = value {
                sets.push((column, value));
            }
        }
        self.update("materials", org, id, sets, DUPLICATE_MATERIAL)
            .await?;
        self.material(org, id).await
    }

    /// Deletes a material with no price observations; one that has some is a conflict.
    pub async fn delete_material(&self, org: &str, id: &str) -> Result<()> {
        self.delete(
            "materials",
            org,
            id,
            "the material has price observations; delete them first",
        )
        .await
    }

    pub async fn create_supplier(&self, org: &str, new: NewSupplier) -> Result<Supplier> {
        let status = new.status.unwrap_or_else(|| "active".into());
        check_supplier(
            Some(&new.code),
            Some(&new.name),
            Some(&new.country),
            Some(new.reliability),
            Some(&status),
        )?;
        let id = new_id();
        sqlx::query(
            "INSERT INTO suppliers (id, organization_id, code, name, country, reliability, status, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(&id)
        .bind(org)
        .bind(new.code.trim())
        .bind(&new.name)
        .bind(&new.country)
        .bind(new.reliability)
        .bind(&status)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_write(e, DUPLICATE_SUPPLIER))?;
        self.supplier(org, &id).await
    }

    pub async fn supplier(&self, org: &str, id: &str) -> Result<Supplier> {
        sqlx::query_as(&format!(
            "SELECT {SUPPLIER_COLUMNS} FROM suppliers WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)
    }

    pub async fn list_suppliers(
        &self,
        org: &str,
        filter: &SupplierFilter,
        page: &ListParams,
    ) -> Result<Listed<Supplier>> {
        let mut wher = Sql::new(" WHERE organization_id = ");
        wher.bind(Value::Text(Some(org.into())));
        if let Some(v) = &filter.country {
            wher.push(" AND country = ")
                .bind(Value::Text(Some(v.clone())));
        }
        if let Some(v) = &filter.status {
            wher.push(" AND status = ")
                .bind(Value::Text(Some(v.clone())));
        }
        if let Some(v) = &filter.search {
            search(&mut wher, v);
        }
        let order = order_by(page.sort.as_deref(), SUPPLIER_SORTS, "code ASC")?;
        self.list("suppliers", SUPPLIER_COLUMNS, wher, &order, page)
            .await
    }

    pub async fn update_supplier(
        &self,
        org: &str,
        id: &str,
        patch: SupplierPatch,
    ) -> Result<Supplier> {
        check_supplier(
            patch.code.as_deref(),
            patch.name.as_deref(),
            patch.country.as_deref(),
            patch.reliability,
            patch.status.as_deref(),
        )?;
        let text = |v: &Option<String>| v.as_ref().map(|v| Value::Text(Some(v.trim().into())));
        let sets = [
            ("code", text(&patch.code)),
            ("name", text(&patch.name)),
            ("country", text(&patch.country)),
            (
                "reliability",
                patch.reliability.map(|v| Value::Real(Some(v))),
            ),
            ("status", text(&patch.status)),
        ]
        .into_iter()
        .filter_map(|(c, v)| v.map(|v| (c, v)))
        .collect();
        self.update("suppliers", org, id, sets, DUPLICATE_SUPPLIER)
            .await?;
        self.supplier(org, id).await
    }

    pub async fn delete_supplier(&self, org: &str, id: &str) -> Result<()> {
        self.delete(
            "suppliers",
            org,
            id,
            "the supplier has price observations; delete them first",
        )
        .await
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

    /// Sets `sets` on the organization's row `id` (and `updated_at` where the table has it).
    pub(crate) async fn update(
        &self,
        table: &str,
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
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::from_write(e, conflict))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub(crate) async fn delete(
        &self,
        table: &str,
        org: &str,
        id: &str,
        conflict: &str,
    ) -> Result<()> {
        let done = sqlx::query(&format!(
            "DELETE FROM {table} WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_write(e, conflict))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}

/// Code or name containing `text`, case-insensitively, on both databases (`LIKE` differs between them).
fn search(wher: &mut Sql, text: &str) {
    let pattern = format!(
        "%{}%",
        text.to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
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
    pub code: String,
    pub name: String,
    pub country: String,
    pub reliability: f64,
    /// Default: active.
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SupplierPatch {
    pub code: Option<String>,
    pub name: Option<String>,
    pub country: Option<String>,
    pub reliability: Option<f64>,
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
const DUPLICATE_SUPPLIER: &str = "a supplier with this code exists in the organization";
