//! `/api/v1/predictions` and `/api/v1/analytics`: business predictions in the caller's organization. The
//! handlers translate; the [`mercator_services::predict::Predictor`] decides.

use axum::extract::State;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiJson;
use super::ErrorEnvelope;
use crate::auth::{Analyst, Auth};
use crate::error::ApiError;
use crate::AppState;
use mercator_services::predict::{
    AnomalyAnswer, AnomalyRequest, DemandAnswer, DemandRequest, ForecastAnswer, ForecastRequest,
    PricePrediction, PriceRequest, TrendAnswer, TrendRequest,
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(predict_price))
        .routes(routes!(trends))
        .routes(routes!(forecast))
        .routes(routes!(demand_forecast))
        .routes(routes!(anomalies))
}

/// What a purchase should cost: the active price model on features computed from the organization's price
/// history as of the day before `as_of` (analyst). 404 for a material or supplier not in the organization;
/// 422 `insufficient_history`, `beyond_horizon` or `invalid_quantity` when no honest answer exists.
#[utoipa::path(post, path = "/api/v1/predictions/price", tag = "predictions",
    request_body = PriceRequest, security(("api_key" = [])),
    responses((status = 200, body = PricePrediction), (status = "4XX", body = ErrorEnvelope)))]
async fn predict_price(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    ApiJson(request): ApiJson<PriceRequest>,
) -> Result<Json<PricePrediction>, ApiError> {
    Ok(Json(
        app.predictions
            .price(&caller.organization_id, request)
            .await?,
    ))
}

/// The material's price trend: a linfa least-squares line through the daily mean prices of the window
/// before `as_of` (analyst). `direction` is stable when the fitted change is within ±2% or r² < 0.3, else
/// rising or falling. 422 `insufficient_history` below 3 days with prices.
#[utoipa::path(post, path = "/api/v1/analytics/trends", tag = "analytics",
    request_body = TrendRequest, security(("api_key" = [])),
    responses((status = 200, body = TrendAnswer), (status = "4XX", body = ErrorEnvelope)))]
async fn trends(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    ApiJson(request): ApiJson<TrendRequest>,
) -> Result<Json<TrendAnswer>, ApiError> {
    Ok(Json(
        app.predictions
            .trend(&caller.organization_id, request)
            .await?,
    ))
}

/// A material's demand for `horizon_days` from `as_of` on, by week (default) or by day (analyst): the
/// active demand model on features of the organization's orders of the material in the year before `as_of`
/// (cancelled orders aside), an interval per point from split-conformal calibration per week ahead. 404 for
/// a material not in the organization; 422 `beyond_horizon` past the model's weeks, `insufficient_history`
/// when the material's first order in that year is less than the spec's minimum (91 days) back.
#[utoipa::path(post, path = "/api/v1/analytics/demand-forecast", tag = "analytics",
    request_body = DemandRequest, security(("api_key" = [])),
    responses((status = 200, body = DemandAnswer), (status = "4XX", body = ErrorEnvelope)))]
async fn demand_forecast(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    ApiJson(request): ApiJson<DemandRequest>,
) -> Result<Json<DemandAnswer>, ApiError> {
    Ok(Json(
        app.predictions
            .demand_forecast(&caller.organization_id, request)
            .await?,
    ))
}

/// A material's daily price for `horizon_days` from `as_of` on (analyst): the active forecast model on
/// features of the price history before `as_of`, an interval per day from split-conformal calibration per
/// day ahead, scaled by the supplier's premium when `supplier_id` is given. 404 for a material or supplier
/// not in the organization; 422 `beyond_horizon` past the model's horizon, `insufficient_history`.
#[utoipa::path(post, path = "/api/v1/analytics/forecast", tag = "analytics",
    request_body = ForecastRequest, security(("api_key" = [])),
    responses((status = 200, body = ForecastAnswer), (status = "4XX", body = ErrorEnvelope)))]
async fn forecast(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    ApiJson(request): ApiJson<ForecastRequest>,
) -> Result<Json<ForecastAnswer>, ApiError> {
    Ok(Json(
        app.predictions
            .forecast(&caller.organization_id, request)
            .await?,
    ))
}

/// How unusual prices are (analyst): the stored observations of `material_id` in [`from`, `to`) (default the
/// last 30 days), or the `observations` of the body (not stored), each scored by the active anomaly model
/// against the history before its day: score, is_anomaly, severity (low, medium, high by the model's
/// thresholds) and the features that stand out. At most --max-bulk-rows observations; one without enough
/// history before it has no score and says why.
#[utoipa::path(post, path = "/api/v1/analytics/anomalies", tag = "analytics",
    request_body = AnomalyRequest, security(("api_key" = [])),
    responses((status = 200, body = AnomalyAnswer), (status = "4XX", body = ErrorEnvelope)))]
async fn anomalies(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    ApiJson(request): ApiJson<AnomalyRequest>,
) -> Result<Json<AnomalyAnswer>, ApiError> {
    Ok(Json(
        app.predictions
            .anomalies(&caller.organization_id, request)
            .await?,
    ))
}
