//! The demo organization: the catalogue and the price history the shipped models were trained on
//! (fixtures/prices.csv, built into the binary), loaded through the catalogue and ingest services as the API
//! loads them (so every price is scored, folded into the history and judged by alert rules), with an
//! analyst key kept in the data directory. The history is moved forward in time so that its last day is
//! yesterday: predictions "as of today" find a recent history.
//!
//! Loading is idempotent: the organization, each material and supplier (by code) and the key are made only
//! when missing, and the prices only into an organization that has none (the write is all or nothing, so a
//! start interrupted mid-load loads them whole the next time).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{Days, NaiveDate};
use mercator_store::{
    KeySpec, ListParams, Material, MaterialFilter, NewMaterial, NewPrice, NewSupplier, PriceQuery,
    PriceType, Role, Store, StoreError, Supplier, SupplierFilter,
};
use serde::Deserialize;

use crate::catalog::Catalog;
use crate::ingest::{Ingest, IngestError};

/// The organization's name.
pub const ORGANIZATION: &str = "demo";
/// The analyst key's file in the data directory (readable by its owner only).
pub const KEY_FILE: &str = "demo.key";
/// The fixture every shipped model was trained on: two years of prices of 40 materials from 10 suppliers.
const FIXTURE: &str = include_str!("../../fixtures/prices.csv");
/// Suppliers' names and countries, by fixture code (SUP-001 first).
const SUPPLIERS: [(&str, &str); 10] = [
    ("Nordmetall GmbH", "DE"),
    ("Rhône Industrie SA", "FR"),
    ("Lombardia Forniture SpA", "IT"),
    ("Wisła Components", "PL"),
    ("Delta Trading BV", "NL"),
    ("Iberia Suministros SL", "ES"),
    ("Morava Parts s.r.o.", "CZ"),
    ("Alpen Handel GmbH", "AT"),
    ("Schelde Supply NV", "BE"),
    ("Norrland Material AB", "SE"),
];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the demo fixture: {0}")]
    Fixture(String),
    #[error("the demo key file {path}: {error}")]
    KeyFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("loading the demo prices: {0}")]
    Ingest(#[from] IngestError),
}

/// What a start found or loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub organization_id: String,
    /// The analyst key's secret.
    pub key: String,
    pub key_file: PathBuf,
    pub materials: usize,
    pub suppliers: usize,
    /// Prices written by this start (0 when an earlier one had).
    pub prices_loaded: usize,
    /// The day of the latest observation.
    pub last_day: NaiveDate,
}

/// One row of fixtures/prices.csv (the columns the demo uses).
#[derive(Debug, Deserialize)]
struct Row {
    observed_on: NaiveDate,
    material_code: String,
    category: String,
    unit: String,
    supplier_code: String,
    supplier_reliability: f64,
    quantity: f64,
    unit_price: f64,
    list_price: f64,
}

fn rows() -> Result<Vec<Row>, DemoError> {
    csv::Reader::from_reader(FIXTURE.as_bytes())
        .deserialize()
        .collect::<Result<Vec<Row>, _>>()
        .map_err(|e| DemoError::Fixture(e.to_string()))
}

/// The demo organization as the fixture makes it; `today` decides where its history ends (yesterday).
pub async fn load(
    store: &Store,
    catalog: &Catalog,
    ingest: &Ingest,
    data_dir: &Path,
    today: NaiveDate,
) -> Result<Loaded, DemoError> {
    let rows = rows()?;
    let fixture_last = rows
        .iter()
        .map(|r| r.observed_on)
        .max()
        .ok_or_else(|| DemoError::Fixture("no rows".into()))?;
    let org = organization(store).await?;
    let materials = materials(catalog, &org, &rows).await?;
    let suppliers = suppliers(catalog, &org, &rows).await?;
    let existing = store
        .list_prices(&org, &PriceQuery::default(), &first())
        .await?;
    let (prices_loaded, last_day) = match existing.items.first() {
        Some(latest) => (0, latest.time.date_naive()),
        None => {
            let shift = shift(fixture_last, today);
            let prices = prices(&rows, &materials, &suppliers, shift)?;
            let written = ingest.write(&org, prices).await?;
            let last = fixture_last.checked_add_days(shift).unwrap_or(fixture_last);
            (written.len(), last)
        }
    };
    let (key, key_file) = key(store, &org, data_dir).await?;
    Ok(Loaded {
        organization_id: org,
        key,
        key_file,
        materials: materials.len(),
        suppliers: suppliers.len(),
        prices_loaded,
        last_day,
    })
}

/// How far the fixture moves so that its last day is the day before `today` (none if it already ends
/// later).
fn shift(fixture_last: NaiveDate, today: NaiveDate) -> Days {
    let yesterday = today.pred_opt().unwrap_or(today);
    Days::new(u64::try_from((yesterday - fixture_last).num_days()).unwrap_or(0))
}

fn first() -> ListParams {
    ListParams {
        limit: 1,
        offset: 0,
        sort: None,
        count: false,
    }
}

/// Every entry of a catalogue (a demo's is small).
fn all() -> ListParams {
    ListParams {
        limit: 10_000,
        offset: 0,
        sort: None,
        count: false,
    }
}

async fn organization(store: &Store) -> Result<String, DemoError> {
    let found = store
        .list_organizations()
        .await?
        .into_iter()
        .find(|o| !o.platform && o.name == ORGANIZATION);
    Ok(match found {
        Some(org) => org.id,
        None => store.create_organization(ORGANIZATION, false).await?.id,
    })
}

/// The fixture's materials in the organization, made where missing: code -> id.
async fn materials(
    catalog: &Catalog,
    org: &str,
    rows: &[Row],
) -> Result<HashMap<String, String>, DemoError> {
    let mut ids: HashMap<String, String> = catalog
        .list::<Material>(org, &MaterialFilter::default(), &all())
        .await?
        .items
        .into_iter()
        .map(|m| (m.code, m.id))
        .collect();
    for r in rows {
        if ids.contains_key(&r.material_code) {
            continue;
        }
        let number = r.material_code.rsplit('-').next().unwrap_or_default();
        let new = NewMaterial {
            code: r.material_code.clone(),
            name: format!("{} {}", title(&r.category), number.trim_start_matches('0')),
            category: r.category.clone(),
            unit: r.unit.clone(),
            specifications: serde_json::json!({"source": "demo fixture"}),
            list_price: Some(r.list_price),
            status: None,
        };
        let made = catalog.create::<Material>(org, new).await?;
        ids.insert(made.code, made.id);
    }
    Ok(ids)
}

/// The fixture's suppliers in the organization, made where missing: code -> id.
async fn suppliers(
    catalog: &Catalog,
    org: &str,
    rows: &[Row],
) -> Result<HashMap<String, String>, DemoError> {
    let mut ids: HashMap<String, String> = catalog
        .list::<Supplier>(org, &SupplierFilter::default(), &all())
        .await?
        .items
        .into_iter()
        .map(|s| (s.code, s.id))
        .collect();
    for r in rows {
        if ids.contains_key(&r.supplier_code) {
            continue;
        }
        let index = r
            .supplier_code
            .rsplit('-')
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .filter(|i| *i < SUPPLIERS.len())
            .ok_or_else(|| DemoError::Fixture(format!("supplier {}", r.supplier_code)))?;
        let (name, country) = SUPPLIERS[index];
        let new = NewSupplier {
            code: r.supplier_code.clone(),
            name: name.into(),
            country: country.into(),
            reliability: r.supplier_reliability,
            status: None,
        };
        let made = catalog.create::<Supplier>(org, new).await?;
        ids.insert(made.code, made.id);
    }
    Ok(ids)
}

fn prices(
    rows: &[Row],
    materials: &HashMap<String, String>,
    suppliers: &HashMap<String, String>,
    shift: Days,
) -> Result<Vec<NewPrice>, DemoError> {
    rows.iter()
        .map(|r| {
            let day = r.observed_on.checked_add_days(shift).ok_or_else(|| {
                DemoError::Fixture(format!("{} moved out of range", r.observed_on))
            })?;
            Ok(NewPrice {
                time: day.and_time(chrono::NaiveTime::MIN).and_utc(),
                material_id: materials[&r.material_code].clone(),
                supplier_id: Some(suppliers[&r.supplier_code].clone()),
                price: r.unit_price,
                currency: "EUR".into(),
                quantity: Some(r.quantity),
                price_type: PriceType::Quote,
                source: Some("demo".into()),
            })
        })
        .collect()
}

/// The analyst key: the one in the key file while it still authenticates for the organization, else a new
/// one written there.
async fn key(store: &Store, org: &str, data_dir: &Path) -> Result<(String, PathBuf), DemoError> {
    let path = data_dir.join(KEY_FILE);
    let io = |error| DemoError::KeyFile {
        path: path.clone(),
        error,
    };
    if let Ok(text) = std::fs::read_to_string(&path) {
        let secret = text.trim().to_string();
        if let Some(key) = store.authenticate(&secret).await? {
            if key.organization_id == org && key.role == Role::Analyst {
                return Ok((secret, path));
            }
        }
    }
    let (_, secret) = store
        .create_api_key(org, &KeySpec::unrestricted("demo analyst", Role::Analyst))
        .await?;
    write_private(&path, &secret).map_err(io)?;
    Ok((secret, path))
}

/// Writes `text` to `path` readable by its owner only, whole or not at all.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let staged = path.with_extension("key.new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staged)?;
    file.write_all(format!("{text}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&staged, path)
}

fn title(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_parses_and_its_codes_name_known_suppliers() {
        let rows = rows().unwrap();
        assert!(rows.len() > 40_000, "{}", rows.len());
        for r in &rows {
            let n: usize = r.supplier_code[4..].parse().unwrap();
            assert!((1..=SUPPLIERS.len()).contains(&n), "{}", r.supplier_code);
        }
    }

    #[test]
    fn the_history_moves_to_end_yesterday_and_never_back() {
        let last = NaiveDate::from_ymd_opt(2025, 12, 30).unwrap();
        let today = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
        let moved = shift(last, today);
        assert_eq!(
            last.checked_add_days(moved),
            NaiveDate::from_ymd_opt(2026, 12, 6)
        );
        assert_eq!(shift(last, last), Days::new(0));
    }

    #[test]
    fn titles() {
        assert_eq!(title("aluminium"), "Aluminium");
        assert_eq!(title(""), "");
    }
}
