//! `POST /api/v1/predictions/price`: what a purchase should cost, with a split-conformal interval.

use chrono::NaiveDate;
use mercator_engine::{Model, Slices};
use mercator_features::{day_of, FeatureError, RowInput};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use std::collections::HashMap;

use super::{
    half_widths, MaterialInfo, ModelRef, PredictError, Predictions, SupplierInfo, PRICE_MODEL,
};

/// The interval level when a request names none.
pub const DEFAULT_LEVEL: f64 = 0.8;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceRequest {
    pub material_id: String,
    /// In the material's unit; must be positive.
    pub quantity: f64,
    pub supplier_id: Option<String>,
    /// Default: the spec's default lead time after `as_of`.
    #[serde(default, deserialize_with = "mercator_store::opt_date")]
    pub delivery_date: Option<NaiveDate>,
    /// The day the price is asked on (history up to the day before is used); default today (UTC). For
    /// backtests.
    #[serde(default, deserialize_with = "mercator_store::opt_date")]
    pub as_of: Option<NaiveDate>,
    /// One of the calibrated levels (see the model's manifest); default 0.8.
    pub interval_level: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Interval {
    pub lower: f64,
    pub upper: f64,
    pub level: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PricePrediction {
    pub predicted_price: f64,
    /// Split-conformal, from the calibration residuals recorded in the manifest.
    pub prediction_interval: Interval,
    /// 1 / (1 + relative width of the interval): 1 for a point, falling as the interval widens.
    pub confidence_score: f64,
    pub model: ModelRef,
    pub as_of: NaiveDate,
    /// The row the model saw, by feature name.
    #[schema(value_type = Object)]
    pub features_used: serde_json::Map<String, serde_json::Value>,
}

impl Predictions {
    /// What `request` should cost, for organization `org`.
    pub async fn price(
        &self,
        org: &str,
        request: PriceRequest,
    ) -> Result<PricePrediction, PredictError> {
        let model = self.model(PRICE_MODEL)?;
        let prepared = self.spec(&model)?;
        let assembled = self.assemble_request(org, &prepared.spec, &request).await?;
        let manifest = model.manifest();
        let row = assembled.row.iter().map(|v| *v as f32).collect();
        let kept = self.log_sample(std::iter::once(Some(assembled.row.as_slice())));
        let output = self.infer(&model, row, assembled.row.len()).await?;
        let predicted = prices(&output, 1)?[0];
        let answered = answer(manifest, &prepared.names, &request, assembled, predicted);
        self.log_answers(
            org,
            std::slice::from_ref(&request),
            kept,
            std::slice::from_ref(&answered),
        );
        answered
    }

    /// The digest of each row the prediction log samples, none for the others (and for rows without
    /// one); `None` when nothing is logged.
    fn log_sample<'a>(
        &self,
        rows: impl Iterator<Item = Option<&'a [f64]>>,
    ) -> Option<Vec<Option<String>>> {
        let log = self.log.get()?;
        Some(
            rows.map(|row| {
                row.filter(|_| log.sampled())
                    .map(crate::monitor::log::digest)
            })
            .collect(),
        )
    }

    /// Sends the sampled answers to the prediction log.
    fn log_answers(
        &self,
        org: &str,
        requests: &[PriceRequest],
        kept: Option<Vec<Option<String>>>,
        answers: &[Result<PricePrediction, PredictError>],
    ) {
        let (Some(log), Some(kept)) = (self.log.get(), kept) else {
            return;
        };
        for ((request, digest), answer) in requests.iter().zip(kept).zip(answers) {
            if let (Some(digest), Ok(answer)) = (digest, answer) {
                log.record(org, request, answer, digest);
            }
        }
    }

    /// Many requests on one model version (the one active when the batch began): rows assembled one by one,
    /// run through the model's queue in chunks of its batch size, answers in request order; a request that
    /// cannot be answered carries its own error.
    pub async fn price_batch(
        &self,
        org: &str,
        requests: &[PriceRequest],
    ) -> Result<Vec<Result<PricePrediction, PredictError>>, PredictError> {
        let model = self.model(PRICE_MODEL)?;
        let prepared = self.spec(&model)?;
        let manifest = model.manifest();
        let mut assembled = Vec::with_capacity(requests.len());
        for request in requests {
            assembled.push(self.assemble_request(org, &prepared.spec, request).await);
        }
        let ready: Vec<&Assembled> = assembled.iter().filter_map(|a| a.as_ref().ok()).collect();
        let width = prepared.names.len();
        let mut predicted = Vec::with_capacity(ready.len());
        for chunk in ready.chunks(manifest.batching.max_batch_size.max(1)) {
            let rows = chunk
                .iter()
                .flat_map(|a| a.row.iter().map(|v| *v as f32))
                .collect();
            let output = self.infer(&model, rows, width).await?;
            predicted.extend(prices(&output, chunk.len())?);
        }
        let kept = self.log_sample(
            assembled
                .iter()
                .map(|a| a.as_ref().ok().map(|a| a.row.as_slice())),
        );
        let answered = answers(
            manifest,
            &prepared.names,
            &prepared.names,
            requests,
            assembled,
            predicted,
        )?;
        self.log_answers(org, requests, kept, &answered);
        Ok(answered)
    }

    /// The materials and suppliers of `named`, each looked up for the organization (what a batch job's
    /// chunk needs before it is priced off the runtime). Only the distinct ids come here: finding them in a
    /// chunk's rows is the preparing thread's work ([`Named::of`]), not the runtime's.
    pub async fn catalog(&self, org: &str, named: Named) -> Result<Catalog, PredictError> {
        let mut catalog = Catalog::default();
        for id in named.materials {
            let found = found(self.material(org, &id).await)?;
            catalog.materials.insert(id, found);
        }
        for id in named.suppliers {
            let found = found(self.supplier(org, &id).await)?;
            catalog.suppliers.insert(id, found);
        }
        Ok(catalog)
    }

    /// A batch job's chunk priced on the calling thread (the job's own, never the runtime's): each row
    /// assembled from `catalog` and sent to `model`'s background lane in slices as they fill, so the model
    /// runs one slice while the next is assembled; answers in request order, without `features_used`.
    pub fn price_blocking(
        &self,
        model: &Model,
        org: &str,
        catalog: &Catalog,
        requests: &[PriceRequest],
    ) -> Result<Vec<Result<PricePrediction, PredictError>>, PredictError> {
        let prepared = self.spec(model)?;
        let manifest = model.manifest();
        let mut assembled = Vec::with_capacity(requests.len());
        let mut slices = Slices::new(model, prepared.names.len())?;
        for request in requests {
            let a = self.assemble_from(org, &prepared.spec, catalog, request);
            if let Ok(a) = &a {
                slices.push(a.row.iter().map(|v| *v as f32))?;
            }
            assembled.push(a);
        }
        let mut predicted = Vec::with_capacity(requests.len());
        for (slice, n) in slices.wait()? {
            predicted.extend(prices(&slice, n)?);
        }
        let kept = self.log_sample(
            assembled
                .iter()
                .map(|a| a.as_ref().ok().map(|a| a.row.as_slice())),
        );
        let answered = answers(
            manifest,
            &prepared.names,
            &[],
            requests,
            assembled,
            predicted,
        )?;
        self.log_answers(org, requests, kept, &answered);
        Ok(answered)
    }

    /// The request's feature row from the organization's history.
    async fn assemble_request(
        &self,
        org: &str,
        spec: &mercator_features::FeatureSpec,
        request: &PriceRequest,
    ) -> Result<Assembled, PredictError> {
        check_quantity(request)?;
        let material = self.material(org, &request.material_id).await?;
        let supplier = match &request.supplier_id {
            Some(id) => Some(self.supplier(org, id).await?),
            None => None,
        };
        self.assemble(org, spec, request, &material, supplier.as_ref())
    }

    /// The same, with the material and supplier from a chunk's catalog: the same checks, in the same order,
    /// so a row answers as the single endpoint would.
    fn assemble_from(
        &self,
        org: &str,
        spec: &mercator_features::FeatureSpec,
        catalog: &Catalog,
        request: &PriceRequest,
    ) -> Result<Assembled, PredictError> {
        check_quantity(request)?;
        let material = catalog
            .materials
            .get(&request.material_id)
            .and_then(Option::as_ref)
            .ok_or(PredictError::NotFound("material"))?;
        let supplier = match &request.supplier_id {
            Some(id) => Some(
                catalog
                    .suppliers
                    .get(id)
                    .and_then(Option::as_ref)
                    .ok_or(PredictError::NotFound("supplier"))?,
            ),
            None => None,
        };
        self.assemble(org, spec, request, material, supplier)
    }

    fn assemble(
        &self,
        org: &str,
        spec: &mercator_features::FeatureSpec,
        request: &PriceRequest,
        material: &MaterialInfo,
        supplier: Option<&SupplierInfo>,
    ) -> Result<Assembled, PredictError> {
        let as_of = request
            .as_of
            .unwrap_or_else(|| chrono::Utc::now().date_naive());
        let input = RowInput {
            as_of: day_of(as_of),
            quantity: request.quantity,
            delivery: request.delivery_date.map(day_of),
            category: &material.category,
            supplier_code: supplier.map(|s| s.code.as_str()),
            list_price: material.list_price,
            supplier_reliability: supplier.map(|s| s.reliability),
            price: None,
        };
        let row = self.history.row(
            spec,
            org,
            &request.material_id,
            request.supplier_id.as_deref(),
            &input,
        )?;
        Ok(Assembled { row, as_of })
    }
}

/// The distinct materials and suppliers some requests name.
#[derive(Debug, Default)]
pub struct Named {
    materials: Vec<String>,
    suppliers: Vec<String>,
}

impl Named {
    pub fn of(requests: &[PriceRequest]) -> Named {
        let mut materials = std::collections::HashSet::new();
        let mut suppliers = std::collections::HashSet::new();
        for r in requests {
            materials.insert(r.material_id.as_str());
            if let Some(s) = &r.supplier_id {
                suppliers.insert(s.as_str());
            }
        }
        Named {
            materials: materials.into_iter().map(str::to_string).collect(),
            suppliers: suppliers.into_iter().map(str::to_string).collect(),
        }
    }
}

/// The materials and suppliers a chunk of requests names: `None` for one the organization does not have.
#[derive(Default)]
pub struct Catalog {
    materials: HashMap<String, Option<MaterialInfo>>,
    suppliers: HashMap<String, Option<SupplierInfo>>,
}

/// A lookup's answer for a catalog: not found is an answer (the rows naming it fail); anything else fails.
fn found<T>(lookup: Result<T, PredictError>) -> Result<Option<T>, PredictError> {
    match lookup {
        Ok(info) => Ok(Some(info)),
        Err(PredictError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn check_quantity(request: &PriceRequest) -> Result<(), PredictError> {
    if !(request.quantity > 0.0 && request.quantity.is_finite()) {
        return Err(FeatureError::Quantity(request.quantity).into());
    }
    Ok(())
}

/// Each request's answer, in order: its assembling error, or the next price with its interval.
fn answers(
    manifest: &mercator_engine::Manifest,
    names: &[String],
    shown: &[String],
    requests: &[PriceRequest],
    assembled: Vec<Result<Assembled, PredictError>>,
    predicted: Vec<f64>,
) -> Result<Vec<Result<PricePrediction, PredictError>>, PredictError> {
    let mut predicted = predicted.into_iter();
    Ok(requests
        .iter()
        .zip(assembled)
        .map(|(request, a)| {
            let a = a?;
            let price = predicted
                .next()
                .ok_or_else(|| PredictError::Output("the model gave too few prices".into()))?;
            answer_with(manifest, names, shown, request, a, price)
        })
        .collect())
}

/// A request's feature row and the day it was assembled as of.
struct Assembled {
    row: Vec<f64>,
    as_of: NaiveDate,
}

/// The model's price output, one per row.
fn prices(output: &mercator_engine::InferOutput, rows: usize) -> Result<Vec<f64>, PredictError> {
    output
        .outputs
        .first()
        .map(|t| t.data.to_f64())
        .filter(|v| v.len() == rows)
        .ok_or_else(|| PredictError::Output("the model gave no price per row".into()))
}

/// The answer: the price, its interval at the request's level, the row the model saw.
fn answer(
    manifest: &mercator_engine::Manifest,
    names: &[String],
    request: &PriceRequest,
    assembled: Assembled,
    predicted: f64,
) -> Result<PricePrediction, PredictError> {
    answer_with(manifest, names, names, request, assembled, predicted)
}

/// The answer, with `features_used` named by `shown` (all of `names`, or none).
fn answer_with(
    manifest: &mercator_engine::Manifest,
    names: &[String],
    shown: &[String],
    request: &PriceRequest,
    assembled: Assembled,
    predicted: f64,
) -> Result<PricePrediction, PredictError> {
    let level = request.interval_level.unwrap_or(DEFAULT_LEVEL);
    let half = half_widths(manifest, names, &assembled.row, level)?[0];
    let (lower, upper) = (predicted * (-half).exp(), predicted * half.exp());
    let features_used = shown
        .iter()
        .zip(&assembled.row)
        .map(|(n, v)| (n.clone(), serde_json::json!(v)))
        .collect();
    Ok(PricePrediction {
        predicted_price: predicted,
        prediction_interval: Interval {
            lower,
            upper,
            level,
        },
        confidence_score: 1.0 / (1.0 + (upper - lower) / predicted),
        model: ModelRef {
            name: manifest.name.clone(),
            version: manifest.version,
        },
        as_of: assembled.as_of,
        features_used,
    })
}
