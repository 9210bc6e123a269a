//! People who sign in: users of one organization (email, role, a password's argon2id hash, never the
//! password), and the refresh tokens of their sessions, stored as SHA-256 hashes, in families: a token
//! spent twice is a stolen one, and its whole family is revoked.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::changes::{ChangeKind, Changed};
use crate::{from_ms, new_id, now_ms, Result, Role, Store, StoreError};

/// A user as stored (the password hash is not part of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    pub id: String,
    pub organization_id: String,
    /// Lowercase; one account per email on the platform.
    pub email: String,
    pub name: Option<String>,
    pub role: Role,
    /// A deactivated user cannot sign in, and their sessions end.
    pub active: bool,
    /// Whether a password is set (a user made without one signs in once it is).
    pub has_password: bool,
    #[serde(skip)]
    pub token_version: i64,
    pub last_login_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl<'r> FromRow<'r, AnyRow> for User {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        let role: String = row.try_get("role")?;
        Ok(User {
            id: row.try_get("id")?,
            organization_id: row.try_get("organization_id")?,
            email: row.try_get("email")?,
            name: row.try_get("name")?,
            role: Role::parse(&role)
                .ok_or_else(|| sqlx::Error::Decode(format!("unknown role {role}").into()))?,
            active: row.try_get::<i64, _>("active")? != 0,
            has_password: row.try_get::<Option<String>, _>("password_hash")?.is_some(),
            token_version: row.try_get("token_version")?,
            last_login_at: row.try_get::<Option<i64>, _>("last_login_at")?.map(from_ms),
            created_at: from_ms(row.try_get("created_at")?),
            updated_at: from_ms(row.try_get("updated_at")?),
        })
    }
}

const USER_COLUMNS: &str = "id, organization_id, email, name, role, active, password_hash, \
     token_version, last_login_at, created_at, updated_at";

/// A change to a user; None leaves a field as it is. A new role, a new password or deactivation ends the
/// user's sessions (their token version moves on).
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub name: Option<Option<String>>,
    pub role: Option<Role>,
    pub active: Option<bool>,
    /// A new argon2id hash (PHC string).
    pub password_hash: Option<String>,
}

/// A refresh token as stored.
#[derive(Debug, Clone)]
pub struct RefreshToken {
    pub id: String,
    pub user_id: String,
    pub family_id: String,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What spending a refresh token found.
#[derive(Debug)]
pub enum Spent {
    /// It was live: now spent; its user may get a new one in the same family.
    Fresh(RefreshToken),
    /// Spent before (or revoked): its family is now revoked.
    Reused(RefreshToken),
    /// Past its end.
    Expired,
    /// No such token.
    Unknown,
}

impl Store {
    /// Makes a user; an email already on the platform is a conflict.
    pub async fn create_user(
        &self,
        organization_id: &str,
        email: &str,
        name: Option<&str>,
        role: Role,
        password_hash: Option<&str>,
    ) -> Result<User> {
        self.organization(organization_id).await?;
        let id = new_id();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO users (id, organization_id, email, name, role, active, password_hash, \
             token_version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6, 0, $7, $7)",
        )
        .bind(&id)
        .bind(organization_id)
        .bind(email.to_lowercase())
        .bind(name)
        .bind(role.as_str())
        .bind(password_hash)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_write(e, "a user with this email exists"))?;
        self.user(organization_id, &id).await
    }

    /// One of the organization's users; another organization's is `NotFound`.
    pub async fn user(&self, organization_id: &str, id: &str) -> Result<User> {
        sqlx::query_as(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE organization_id = $1 AND id = $2"
        ))
        .bind(organization_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("user"))
    }

    /// A user by id alone (a session names its user).
    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>> {
        Ok(
            sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn list_users(&self, organization_id: &str) -> Result<Vec<User>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE organization_id = $1 ORDER BY created_at, id"
        ))
        .bind(organization_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The user an email names, with their password hash (for signing in).
    pub async fn user_for_login(&self, email: &str) -> Result<Option<(User, Option<String>)>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
        ))
        .bind(email.to_lowercase())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok((User::from_row(&row)?, row.try_get("password_hash")?)))
            .transpose()
    }

    /// Changes a user; a new role, password or deactivation moves their token version on (their sessions
    /// end), and deactivation revokes their refresh tokens.
    pub async fn update_user(
        &self,
        organization_id: &str,
        id: &str,
        change: &UserChange,
    ) -> Result<User> {
        let user = self.user(organization_id, id).await?;
        let ends_sessions = change.role.is_some_and(|r| r != user.role)
            || change.password_hash.is_some()
            || change.active == Some(false);
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE users SET name = $1, role = $2, active = $3, \
             password_hash = COALESCE($4, password_hash), token_version = token_version + $5, \
             updated_at = $6 WHERE id = $7",
        )
        .bind(change.name.clone().unwrap_or(user.name.clone()))
        .bind(change.role.unwrap_or(user.role).as_str())
        .bind(i64::from(change.active.unwrap_or(user.active)))
        .bind(change.password_hash.as_deref())
        .bind(i64::from(ends_sessions))
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if ends_sessions {
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
            )
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        self.record_change(
            &mut tx,
            Changed::of(ChangeKind::User, Some(organization_id), id),
        )
        .await?;
        tx.commit().await?;
        self.user(organization_id, id).await
    }

    /// The user's token version and whether they are active (sessions check both).
    pub async fn user_standing(&self, id: &str) -> Result<Option<(i64, bool)>> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT token_version, active FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(version, active)| (version, active != 0)))
    }

    pub async fn record_login(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE users SET last_login_at = $1 WHERE id = $2")
            .bind(at.timestamp_millis())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores a refresh token (its hash): a new family when `family` is None.
    pub async fn insert_refresh_token(
        &self,
        user_id: &str,
        family: Option<&str>,
        token_sha256: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<String> {
        let id = new_id();
        let family = family.map_or_else(|| id.clone(), str::to_string);
        sqlx::query(
            "INSERT INTO refresh_tokens (id, user_id, family_id, token_sha256, expires_at, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(user_id)
        .bind(&family)
        .bind(token_sha256)
        .bind(expires_at.timestamp_millis())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(family)
    }

    /// Spends a refresh token at `now`: at most once (two racing spends: one wins, the other is reuse).
    /// Reuse revokes the whole family.
    pub async fn spend_refresh_token(
        &self,
        token_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Spent> {
        let row = sqlx::query(
            "SELECT id, user_id, family_id, expires_at, used_at, revoked_at FROM refresh_tokens \
             WHERE token_sha256 = $1",
        )
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Spent::Unknown);
        };
        let token = RefreshToken {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            family_id: row.try_get("family_id")?,
            expires_at: from_ms(row.try_get("expires_at")?),
            used_at: row.try_get::<Option<i64>, _>("used_at")?.map(from_ms),
            revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(from_ms),
        };
        let spent = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL \
             AND revoked_at IS NULL",
        )
        .bind(now.timestamp_millis())
        .bind(&token.id)
        .execute(&self.pool)
        .await?;
        if spent.rows_affected() == 0 {
            self.revoke_family(&token.family_id, now).await?;
            return Ok(Spent::Reused(token));
        }
        if token.expires_at <= now {
            return Ok(Spent::Expired);
        }
        Ok(Spent::Fresh(token))
    }

    /// Revokes every token of a family (a logout, or a token reused).
    pub async fn revoke_family(&self, family_id: &str, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
        )
        .bind(now.timestamp_millis())
        .bind(family_id)
        .execute(&mut *tx)
        .await?;
        self.record_change(&mut tx, Changed::of(ChangeKind::Session, None, family_id))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether a family still has a live token (an access token of a logged-out session is refused).
    pub async fn family_live(&self, family_id: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM refresh_tokens WHERE family_id = $1 AND revoked_at IS NULL",
        )
        .bind(family_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }
}
