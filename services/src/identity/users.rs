//! Users of an organization, made and changed by its admins: an email (one account per email on the
//! platform), a role, a password under the policy ([`super::passwords`]). A new role, a new password or
//! deactivation ends the user's sessions.

use std::sync::Arc;

use mercator_store::{FieldErrors, Role, Store, StoreError, User, UserChange};

use super::passwords::{self, Hasher};
use super::sessions::Sessions;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{message}")]
    Invalid {
        message: String,
        details: FieldErrors,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("hashing: {0}")]
    Internal(String),
}

impl UserError {
    fn invalid(field: &str, message: impl Into<String>) -> UserError {
        let message = message.into();
        UserError::Invalid {
            details: FieldErrors::one(field, message.clone()),
            message: format!("{field}: {message}"),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            UserError::Invalid { .. } => "validation_error",
            UserError::Store(e) => e.code(),
            UserError::Internal(_) => "internal",
        }
    }
}

/// A user an admin asks for.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: String,
    pub name: Option<String>,
    pub role: Role,
    /// None: the user cannot sign in until an admin sets one.
    pub password: Option<String>,
}

/// A change an admin (or, for the password, the user) asks for.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub name: Option<Option<String>>,
    pub role: Option<Role>,
    pub active: Option<bool>,
    pub password: Option<String>,
}

pub struct Users {
    store: Store,
    hasher: Hasher,
    sessions: Arc<Sessions>,
}

impl Users {
    pub fn new(store: Store, hasher: Hasher, sessions: Arc<Sessions>) -> Users {
        Users {
            store,
            hasher,
            sessions,
        }
    }

    pub async fn create(&self, org: &str, new: NewUser) -> Result<User, UserError> {
        let email = new.email.trim().to_lowercase();
        check_email(&email)?;
        let name = check_name(new.name)?;
        let hash = match &new.password {
            Some(password) => Some(self.hash(password, &email).await?),
            None => None,
        };
        Ok(self
            .store
            .create_user(org, &email, name.as_deref(), new.role, hash.as_deref())
            .await?)
    }

    pub async fn list(&self, org: &str) -> Result<Vec<User>, UserError> {
        Ok(self.store.list_users(org).await?)
    }

    pub async fn get(&self, org: &str, id: &str) -> Result<User, UserError> {
        Ok(self.store.user(org, id).await?)
    }

    pub async fn update(&self, org: &str, id: &str, patch: UserPatch) -> Result<User, UserError> {
        let user = self.store.user(org, id).await?;
        let password_hash = match &patch.password {
            Some(password) => Some(self.hash(password, &user.email).await?),
            None => None,
        };
        let change = UserChange {
            name: patch.name.map(check_name).transpose()?,
            role: patch.role,
            active: patch.active,
            password_hash,
        };
        let updated = self.store.update_user(org, id, &change).await?;
        if updated.token_version != user.token_version {
            self.sessions.forget_user(id);
        }
        Ok(updated)
    }

    async fn hash(&self, password: &str, email: &str) -> Result<String, UserError> {
        passwords::check(password, email).map_err(|e| UserError::invalid("password", e))?;
        self.hasher
            .hash(password)
            .await
            .map_err(UserError::Internal)
    }
}

fn check_email(email: &str) -> Result<(), UserError> {
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    match ok {
        true => Ok(()),
        false => Err(UserError::invalid("email", "must be an email address")),
    }
}

fn check_name(name: Option<String>) -> Result<Option<String>, UserError> {
    match name.map(|n| n.trim().to_string()) {
        Some(n) if n.is_empty() || n.chars().count() > 200 => {
            Err(UserError::invalid("name", "must be 1 to 200 characters"))
        }
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked() {
        for good in ["ana@example.com", "a.b+c@sub.example.org"] {
            assert!(check_email(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ana",
            "ana@",
            "@example.com",
            "ana@example",
            "a na@example.com",
            "a@b@c.com",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
    }
}
