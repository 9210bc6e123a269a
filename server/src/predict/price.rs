//! `POST /api/v1/predictions/price`: what a purchase should cost, with a split-conformal interval.

use chrono::NaiveDate;
use mercator_engine::{EngineError, Model, Repository, Tensor, TensorData};
use mercator_features::{day_of, FeatureError, RowInput};
use mercator_store::Store;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{half_widths, ModelRef, Predictor, PRICE_MODEL};
use crate::error::ApiError;

/// Which lane of the model's queue a batch of requests takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Waiting callers: first in every batch.
    Interactive,
    /// A batch job's chunk: the room interactive requests leave.
    Background,
}

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
    pub delivery_date: Option<NaiveDate>,
    /// The day the price is asked on (history up to the day before is used); default today (UTC). For
    /// backtests.
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

impl Predictor {
    /// What `request` should cost, for organization `org`.
    pub async fn price(
        &self,
        store: &Store,
        repository: &Repository,
        data_dir: &std::path::Path,
        org: &str,
        request: PriceRequest,
    ) -> Result<PricePrediction, ApiError> {
        let model = repository.get(PRICE_MODEL, None)?;
        let prepared = self.spec(data_dir, &model)?;
        let assembled = self
            .assemble_request(store, org, &prepared.spec, &request)
            .await?;
        let manifest = model.manifest();
        let tensor = Tensor {
            name: manifest.inputs[0].name.clone(),
            shape: vec![1, assembled.row.len()],
            data: TensorData::Fp32(assembled.row.iter().map(|v| *v as f32).collect()),
        };
        let output = model.infer(vec![tensor], None).await?;
        let predicted = prices(&output, 1)?[0];
        answer(manifest, &prepared.names, &request, assembled, predicted)
    }

    /// Many requests on one model version (the one active when the batch began): rows assembled one by one,
    /// run through the model's queue in chunks of its batch size, answers in request order; a request that
    /// cannot be answered carries its own error.
    pub async fn price_batch(
        &self,
        store: &Store,
        repository: &Repository,
        data_dir: &std::path::Path,
        org: &str,
        requests: &[PriceRequest],
    ) -> Result<Vec<Result<PricePrediction, ApiError>>, ApiError> {
        let model = repository.get(PRICE_MODEL, None)?;
        self.price_on(store, &model, data_dir, org, requests, Lane::Interactive)
            .await
    }

    /// Many requests on `model` (a pinned price model version). In the background lane (a batch job's
    /// chunk) the slices wait behind interactive requests, all of them are queued at once so every
    /// instance can take one, the assembling loop yields now and then so interactive handlers on the same
    /// runtime are not held up, and `features_used` is left empty (the job's results do not carry it).
    pub async fn price_on(
        &self,
        store: &Store,
        model: &Model,
        data_dir: &std::path::Path,
        org: &str,
        requests: &[PriceRequest],
        lane: Lane,
    ) -> Result<Vec<Result<PricePrediction, ApiError>>, ApiError> {
        let background = lane == Lane::Background;
        let prepared = self.spec(data_dir, model)?;
        let manifest = model.manifest();
        let mut assembled = Vec::with_capacity(requests.len());
        for (i, request) in requests.iter().enumerate() {
            assembled.push(
                self.assemble_request(store, org, &prepared.spec, request)
                    .await,
            );
            if background && i % 512 == 511 {
                tokio::task::yield_now().await;
            }
        }
        let ready: Vec<&Assembled> = assembled.iter().filter_map(|a| a.as_ref().ok()).collect();
        let width = prepared.names.len();
        let slice = manifest.batching.max_batch_size.max(1);
        let tensors = ready.chunks(slice).map(|chunk| Tensor {
            name: manifest.inputs[0].name.clone(),
            shape: vec![chunk.len(), width],
            data: TensorData::Fp32(
                chunk
                    .iter()
                    .flat_map(|a| a.row.iter().map(|v| *v as f32))
                    .collect(),
            ),
        });
        let mut predicted = Vec::with_capacity(ready.len());
        if background {
            let running: Vec<_> = tensors
                .map(|tensor| {
                    let model = model.clone();
                    tokio::spawn(async move { model.infer_background(vec![tensor]).await })
                })
                .collect();
            for (task, chunk) in running.into_iter().zip(ready.chunks(slice)) {
                let output = task.await.map_err(|e| {
                    ApiError::Engine(EngineError::Runtime(format!("a slice's task failed: {e}")))
                })??;
                predicted.extend(prices(&output, chunk.len())?);
            }
        } else {
            for (tensor, chunk) in tensors.zip(ready.chunks(slice)) {
                let output = model.infer(vec![tensor], None).await?;
                predicted.extend(prices(&output, chunk.len())?);
            }
        }
        let mut predicted = predicted.into_iter();
        Ok(requests
            .iter()
            .zip(assembled)
            .map(|(request, a)| {
                let a = a?;
                let price = predicted.next().ok_or_else(|| {
                    ApiError::Engine(EngineError::Inference(
                        "the model gave too few prices".into(),
                    ))
                })?;
                let names: &[String] = if background { &[] } else { &prepared.names };
                answer_with(manifest, &prepared.names, names, request, a, price)
            })
            .collect())
    }

    /// The request's feature row from the organization's history.
    async fn assemble_request(
        &self,
        store: &Store,
        org: &str,
        spec: &mercator_features::FeatureSpec,
        request: &PriceRequest,
    ) -> Result<Assembled, ApiError> {
        if !(request.quantity > 0.0 && request.quantity.is_finite()) {
            return Err(FeatureError::Quantity(request.quantity).into());
        }
        let material = self.material(store, org, &request.material_id).await?;
        let supplier = match &request.supplier_id {
            Some(id) => Some(self.supplier(store, org, id).await?),
            None => None,
        };
        let as_of = request
            .as_of
            .unwrap_or_else(|| chrono::Utc::now().date_naive());
        let input = RowInput {
            as_of: day_of(as_of),
            quantity: request.quantity,
            delivery: request.delivery_date.map(day_of),
            category: &material.category,
            supplier_code: supplier.as_ref().map(|s| s.code.as_str()),
            list_price: material.list_price,
            supplier_reliability: supplier.as_ref().map(|s| s.reliability),
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

/// A request's feature row and the day it was assembled as of.
struct Assembled {
    row: Vec<f64>,
    as_of: NaiveDate,
}

/// The model's price output, one per row.
fn prices(output: &mercator_engine::InferOutput, rows: usize) -> Result<Vec<f64>, ApiError> {
    output
        .outputs
        .first()
        .map(|t| t.data.to_f64())
        .filter(|v| v.len() == rows)
        .ok_or_else(|| ApiError::Engine(EngineError::Inference("the model gave no price".into())))
}

/// The answer: the price, its interval at the request's level, the row the model saw.
fn answer(
    manifest: &mercator_engine::Manifest,
    names: &[String],
    request: &PriceRequest,
    assembled: Assembled,
    predicted: f64,
) -> Result<PricePrediction, ApiError> {
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
) -> Result<PricePrediction, ApiError> {
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
