//! `/api/v1/predictions`: business predictions in the caller's organization. The handler translates; the
//! [`crate::predict::Predictor`] decides.

use axum::extract::State;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiJson;
use super::ErrorEnvelope;
use crate::auth::{Analyst, Auth};
use crate::error::ApiError;
use crate::predict::{PricePrediction, PriceRequest};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(predict_price))
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
    app.predictor
        .price(
            &app.store,
            &app.repository,
            &app.data_dir,
            &caller.organization_id,
            request,
        )
        .await
        .map(Json)
}
