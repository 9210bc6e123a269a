//! Users (each organization's admins make and change them) and sessions: sign in, refresh, sign out, and
//! the public keys that verify access tokens (`/.well-known/jwks.json`).

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use mercator_services::identity::sessions::Tokens;
use mercator_services::identity::users::{NewUser, UserPatch};
use mercator_store::{Role, User};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit;
use super::extract::ApiJson;
use super::tenants::List;
use super::ErrorEnvelope;
use crate::auth::{Admin, Auth, Viewer};
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(me))
        .routes(routes!(get_user, update_user, deactivate_user))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(jwks))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUserBody {
    #[schema(max_length = 254, example = "ana@example.com")]
    pub email: String,
    #[schema(max_length = 200)]
    pub name: Option<String>,
    pub role: Role,
    /// 12 to 128 characters, not among the most common, not containing the email's name. Left out: the
    /// user cannot sign in until an admin sets one.
    #[schema(min_length = 12, max_length = 128)]
    pub password: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatchBody {
    #[schema(max_length = 200)]
    pub name: Option<String>,
    pub role: Option<Role>,
    /// false: the user cannot sign in, and their sessions end.
    pub active: Option<bool>,
    /// A new password (the user's sessions end).
    #[schema(min_length = 12, max_length = 128)]
    pub password: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[schema(max_length = 254)]
    pub email: String,
    #[schema(max_length = 1024)]
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    #[schema(max_length = 1024)]
    pub refresh_token: String,
}

/// Make a user in the caller's organization (admin).
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUserBody,
    security(("api_key" = [])),
    responses((status = 201, body = User), (status = "4XX", body = ErrorEnvelope)))]
async fn create_user(
    State(app): State<AppState>,
    caller: Auth<Admin>,
    ApiJson(body): ApiJson<NewUserBody>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let new = NewUser {
        email: body.email,
        name: body.name,
        role: body.role,
        password: body.password,
    };
    let user = app.users.create(&caller.organization_id, new).await?;
    audit::record(
        &app,
        &caller,
        "user.create",
        ("user", &user.id),
        None::<()>,
        Some(&user),
    )
    .await;
    Ok((StatusCode::CREATED, Json(user)))
}

/// The caller's organization's users (admin).
#[utoipa::path(get, path = "/api/v1/users", tag = "users", security(("api_key" = [])),
    responses((status = 200, body = List<User>), (status = "4XX", body = ErrorEnvelope)))]
async fn list_users(
    State(app): State<AppState>,
    caller: Auth<Admin>,
) -> Result<Json<List<User>>, ApiError> {
    let items = app.users.list(&caller.organization_id).await?;
    Ok(Json(List {
        total: items.len(),
        items,
    }))
}

/// The signed-in user (an API key is not a user: 404).
#[utoipa::path(get, path = "/api/v1/users/me", tag = "users", security(("api_key" = [])),
    responses((status = 200, body = User), (status = "4XX", body = ErrorEnvelope)))]
async fn me(State(app): State<AppState>, caller: Auth<Viewer>) -> Result<Json<User>, ApiError> {
    if caller.session.is_none() {
        return Err(ApiError::NotFound("user (the caller is an API key)"));
    }
    Ok(Json(
        app.users
            .get(&caller.organization_id, &caller.actor_id)
            .await?,
    ))
}

/// One of the organization's users (admin).
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = User), (status = "4XX", body = ErrorEnvelope)))]
async fn get_user(
    State(app): State<AppState>,
    caller: Auth<Admin>,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(app.users.get(&caller.organization_id, &id).await?))
}

/// Change a user (admin): name, role, password, active. A new role, a new password or deactivation ends
/// the user's sessions.
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", request_body = UserPatchBody,
    security(("api_key" = [])), params(("id" = String, Path)),
    responses((status = 200, body = User), (status = "4XX", body = ErrorEnvelope)))]
async fn update_user(
    State(app): State<AppState>,
    caller: Auth<Admin>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UserPatchBody>,
) -> Result<Json<User>, ApiError> {
    let patch = UserPatch {
        name: body.name.map(Some),
        role: body.role,
        active: body.active,
        password: body.password,
    };
    change(&app, &caller, &id, patch, "user.update")
        .await
        .map(Json)
}

/// Deactivate a user (admin): they cannot sign in, and their sessions end. Kept for the audit trail.
#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = "4XX", body = ErrorEnvelope)))]
async fn deactivate_user(
    State(app): State<AppState>,
    caller: Auth<Admin>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let patch = UserPatch {
        active: Some(false),
        ..UserPatch::default()
    };
    change(&app, &caller, &id, patch, "user.deactivate").await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn change(
    app: &AppState,
    caller: &Auth<Admin>,
    id: &str,
    patch: UserPatch,
    action: &str,
) -> Result<User, ApiError> {
    let before = app.users.get(&caller.organization_id, id).await?;
    let after = app.users.update(&caller.organization_id, id, patch).await?;
    audit::record(
        app,
        caller,
        action,
        ("user", id),
        Some(&before),
        Some(&after),
    )
    .await;
    Ok(after)
}

/// Sign in: an access token (a JWT, `expires_in` seconds) and a refresh token. Limited per account
/// (`--rate-limits-login`) and per address (`--rate-limits-anonymous`).
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "sessions", request_body = Credentials,
    security(()),
    responses((status = 200, body = Tokens), (status = "4XX", body = ErrorEnvelope)))]
async fn login(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Json<Tokens>, ApiError> {
    let (tokens, who) = app.sessions.login(&body.email, &body.password).await?;
    audit::record_as(
        &app,
        &who.organization_id,
        ("user", &format!("user:{}", who.user_id)),
        "session.login",
        ("session", &who.session_id),
        None::<()>,
        None::<()>,
    )
    .await;
    Ok(Json(tokens))
}

/// Spend a refresh token for a new pair. A refresh token spent twice ends its session (401
/// `refresh_token_reused`).
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "sessions", request_body = RefreshBody,
    security(()),
    responses((status = 200, body = Tokens), (status = "4XX", body = ErrorEnvelope)))]
async fn refresh(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Json<Tokens>, ApiError> {
    use mercator_services::identity::sessions::SessionError;
    match app.sessions.refresh(&body.refresh_token).await {
        Ok(tokens) => Ok(Json(tokens)),
        Err(SessionError::RefreshReused {
            user_id,
            organization_id,
        }) => {
            if !organization_id.is_empty() {
                audit::record_as(
                    &app,
                    &organization_id,
                    ("user", &format!("user:{user_id}")),
                    "session.refresh_reused",
                    ("user", &user_id),
                    None::<()>,
                    None::<()>,
                )
                .await;
            }
            Err(SessionError::RefreshReused {
                user_id,
                organization_id,
            }
            .into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Sign out: the caller's session ends (its access and refresh tokens stop working).
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "sessions", security(("api_key" = [])),
    responses((status = 204), (status = "4XX", body = ErrorEnvelope)))]
async fn logout(State(app): State<AppState>, caller: Auth<Viewer>) -> Result<StatusCode, ApiError> {
    let Some(session) = &caller.session else {
        return Err(ApiError::BadRequest(
            "an API key has no session to end: delete the key instead".into(),
        ));
    };
    app.sessions.logout(session).await?;
    audit::record(
        &app,
        &caller,
        "session.logout",
        ("session", session),
        None::<()>,
        None::<()>,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The public keys that verify access tokens (a JWK Set; EdDSA, Ed25519).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "sessions", security(()),
    responses((status = 200, description = "A JWK Set", body = serde_json::Value),
        (status = "4XX", body = ErrorEnvelope)))]
async fn jwks(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(app.sessions.jwks()),
    )
}
