//! Secrets at rest (webhook signing secrets): sealed with AES-256-GCM under the server's secret key, each
//! stored as `enc:v1:<key id>:<base64 of nonce, ciphertext and tag>`. The key id (the first 8 bytes of the
//! key's SHA-256, in hex) says which key sealed it, so keys can be rotated: the current key seals, older
//! keys still open, and [`crate::Store::reseal_secrets`] moves everything to the current key. A value
//! without the prefix was written before secrets were sealed and reads as it is (and is sealed on reseal).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use crate::StoreError;

const PREFIX: &str = "enc:v1:";
/// Binds a ciphertext to what it is: a sealed webhook secret cannot be passed off as anything else.
const AAD: &[u8] = b"mercator webhook secret";

pub struct Sealer {
    /// The current key first, then older ones that still open what they sealed.
    keys: Vec<(String, LessSafeKey)>,
    random: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Sealer").field("key_ids", &ids).finish()
    }
}

impl Sealer {
    /// From 32-byte keys, the current one first.
    pub fn new(keys: &[[u8; 32]]) -> Result<Sealer, String> {
        if keys.is_empty() {
            return Err("no secret key".into());
        }
        let keys = keys
            .iter()
            .map(|k| {
                let id = hex::encode(&Sha256::digest(k)[..8]);
                let key = UnboundKey::new(&AES_256_GCM, k).map_err(|_| "a bad AES-256 key")?;
                Ok((id, LessSafeKey::new(key)))
            })
            .collect::<Result<_, String>>()?;
        Ok(Sealer {
            keys,
            random: SystemRandom::new(),
        })
    }

    /// Keys written as hex (64 digits each), comma-separated, the current one first.
    pub fn parse_keys(text: &str) -> Result<Vec<[u8; 32]>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| {
                let bytes =
                    hex::decode(k).map_err(|_| "a secret key is 64 hex digits".to_string())?;
                <[u8; 32]>::try_from(bytes.as_slice())
                    .map_err(|_| "a secret key is 32 bytes: 64 hex digits".to_string())
            })
            .collect()
    }

    /// A fresh random key, as hex.
    pub fn generate_key() -> String {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .expect("the system's random source");
        hex::encode(key)
    }

    /// The current key's id.
    pub fn key_id(&self) -> &str {
        &self.keys[0].0
    }

    pub fn seal(&self, plain: &str) -> String {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .expect("the system's random source");
        let mut data = plain.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(AAD),
            &mut data,
        )
        .expect("AES-GCM seals any length this small");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("{PREFIX}{id}:{}", base64_encode(&out))
    }

    /// The secret a stored value holds (a value without the prefix is a secret stored before sealing).
    pub fn open(&self, stored: &str) -> Result<String, StoreError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let broken = |why: &str| StoreError::Secret(why.to_string());
        let (id, sealed) = rest.split_once(':').ok_or_else(|| broken("malformed"))?;
        let (_, key) = self.keys.iter().find(|(k, _)| k == id).ok_or_else(|| {
            broken(&format!(
                "sealed with key {id}, which this server does not hold"
            ))
        })?;
        let bytes = base64_decode(sealed).ok_or_else(|| broken("malformed"))?;
        if bytes.len() < NONCE_LEN {
            return Err(broken("malformed"));
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| broken("malformed"))?;
        let mut data = data.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(AAD), &mut data)
            .map_err(|_| broken("does not open with its key"))?;
        String::from_utf8(plain.to_vec()).map_err(|_| broken("not text"))
    }

    /// Whether a stored value is sealed with the current key (else a reseal rewrites it).
    pub fn is_current(&self, stored: &str) -> bool {
        stored
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(id, _)| id == self.key_id())
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_with_their_key_and_only_with_it() {
        let (old, new) = ([7u8; 32], [9u8; 32]);
        let before = Sealer::new(&[old]).unwrap();
        let sealed = before.seal("whsec_abcdefghijklmnop");
        assert!(sealed.starts_with("enc:v1:") && !sealed.contains("abcdefghijklmnop"));
        assert_ne!(
            sealed,
            before.seal("whsec_abcdefghijklmnop"),
            "a fresh nonce each time"
        );
        assert_eq!(before.open(&sealed).unwrap(), "whsec_abcdefghijklmnop");
        // Rotated: the new key seals, the old one still opens.
        let after = Sealer::new(&[new, old]).unwrap();
        assert_eq!(after.open(&sealed).unwrap(), "whsec_abcdefghijklmnop");
        assert!(!after.is_current(&sealed) && after.is_current(&after.seal("x")));
        // Without the key, or tampered with: an error, never the wrong secret.
        let other = Sealer::new(&[new]).unwrap();
        assert!(other.open(&sealed).is_err());
        let mut tampered = sealed.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(before.open(&tampered).is_err());
        // Stored before sealing: read as it is.
        assert_eq!(
            before.open("plain-secret-1234").unwrap(),
            "plain-secret-1234"
        );
    }

    #[test]
    fn keys_are_parsed_from_hex_the_current_first() {
        let a = Sealer::generate_key();
        let b = Sealer::generate_key();
        let keys = Sealer::parse_keys(&format!("{a}, {b}")).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(hex::encode(keys[0]), a);
        assert!(Sealer::parse_keys("abcd").is_err());
        assert!(Sealer::parse_keys("zz").is_err());
    }
}
