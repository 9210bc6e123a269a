//! Passwords: a policy, and argon2id at OWASP's parameters (19 MiB, 2 passes, 1 lane: the `argon2` crate's
//! default), stored as a PHC string. Hashing takes ~30–45 ms of one core on purpose, so it runs on the
//! blocking pool, at most `concurrency` at once (each holds 19 MiB); a caller past that waits its turn.
//! An unknown email is checked against a dummy hash, so a sign-in takes as long whether or not the account
//! exists.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::Semaphore;

/// The shortest and longest password accepted.
pub const MIN_CHARS: usize = 12;
pub const MAX_CHARS: usize = 128;

/// Passwords too common to allow, whatever their length (lowercase).
const COMMON: &[&str] = &[
    "password1234",
    "password12345",
    "password123456",
    "123456789012",
    "1234567890123",
    "qwertyuiop12",
    "qwertyuiopasdf",
    "iloveyou1234",
    "letmein12345",
    "welcome12345",
    "administrator",
    "changeme1234",
    "passw0rd1234",
    "abcdefghijkl",
];

/// Why a password is refused.
pub fn check(password: &str, email: &str) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < MIN_CHARS {
        return Err(format!("must be at least {MIN_CHARS} characters"));
    }
    if chars > MAX_CHARS {
        return Err(format!("must be at most {MAX_CHARS} characters"));
    }
    let lower = password.to_lowercase();
    if COMMON.contains(&lower.as_str()) {
        return Err("is one of the most common passwords".into());
    }
    let mut distinct: Vec<char> = lower.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 5 {
        return Err("must have at least 5 different characters".into());
    }
    let local = email.split('@').next().unwrap_or_default().to_lowercase();
    if local.len() >= 4 && lower.contains(&local) {
        return Err("must not contain the email's name".into());
    }
    Ok(())
}

/// Hashes and verifies on the blocking pool, a bounded number at once.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// Checked against when the account does not exist.
    dummy: Arc<String>,
}

impl Hasher {
    pub fn new(concurrency: usize) -> Hasher {
        Hasher {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: Arc::new(hash_now("a password nobody has: dummy").unwrap_or_default()),
        }
    }

    /// The PHC string of `password`.
    pub async fn hash(&self, password: &str) -> Result<String, String> {
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        let password = password.to_string();
        tokio::task::spawn_blocking(move || hash_now(&password))
            .await
            .map_err(|e| e.to_string())?
    }

    /// Whether `password` matches `phc` (None: no account or no password; the dummy is checked, and it
    /// never matches).
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let known = phc.is_some();
        let (password, phc) = (
            password.to_string(),
            phc.map_or_else(|| self.dummy.to_string(), str::to_string),
        );
        let matched = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&phc)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        known && matched
    }
}

fn hash_now(password: &str) -> Result<String, String> {
    use rand::RngCore;
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_what_is_wrong() {
        let email = "ana.buyer@example.com";
        assert!(check("a long enough passphrase", email).is_ok());
        assert!(check("short", email).unwrap_err().contains("at least 12"));
        assert!(check(&"x".repeat(129), email)
            .unwrap_err()
            .contains("at most"));
        assert!(check("Password1234", email).unwrap_err().contains("common"));
        assert!(check("aaaaaaaaaaaaaaab", email)
            .unwrap_err()
            .contains("different"));
        assert!(check("my ana.buyer secret", email)
            .unwrap_err()
            .contains("email"));
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let hasher = Hasher::new(2);
        let phc = hasher.hash("a long enough passphrase").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(hasher.verify("a long enough passphrase", Some(&phc)).await);
        assert!(!hasher.verify("a long enough passphrasf", Some(&phc)).await);
        assert!(!hasher.verify("a password nobody has: dummy", None).await);
        assert!(!hasher.verify("anything", Some("not a phc string")).await);
    }
}
