//! Heavy requests (batch submits, bulk writes, model uploads) admitted up to a cap per organization and a
//! cap for the server, before their bodies are read; beyond either, 429 with Retry-After. Light requests
//! (single predictions, reads) never wait behind them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

pub struct Heavy {
    server: Arc<Semaphore>,
    per_org: Mutex<HashMap<String, usize>>,
    max_per_org: usize,
}

/// A heavy request's admission, given back when dropped.
pub struct Admitted {
    heavy: Arc<Heavy>,
    org: String,
    _server: OwnedSemaphorePermit,
}

impl Heavy {
    pub fn new(max: usize, max_per_org: usize) -> Arc<Heavy> {
        Arc::new(Heavy {
            server: Arc::new(Semaphore::new(max.max(1))),
            per_org: Mutex::default(),
            max_per_org: max_per_org.max(1),
        })
    }

    /// Admits one heavy request of `org`, or 429: the organization's own cap first (so that one tenant
    /// cannot hold every server slot), then the server's.
    pub fn admit(self: &Arc<Self>, org: &str) -> Result<Admitted, ApiError> {
        {
            let mut per_org = self.per_org.lock().unwrap_or_else(|p| p.into_inner());
            let count = per_org.entry(org.to_string()).or_default();
            if *count >= self.max_per_org {
                return Err(ApiError::TooManyHeavyRequests {
                    limit: self.max_per_org,
                });
            }
            *count += 1;
        }
        let Ok(permit) = self.server.clone().try_acquire_owned() else {
            self.release(org);
            return Err(ApiError::Busy);
        };
        Ok(Admitted {
            heavy: self.clone(),
            org: org.to_string(),
            _server: permit,
        })
    }

    fn release(&self, org: &str) {
        let mut per_org = self.per_org.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_org.get_mut(org) {
            *count -= 1;
            if *count == 0 {
                per_org.remove(org);
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.heavy.release(&self.org);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_organization_at_its_cap_waits_alone_and_the_server_cap_holds_for_all() {
        let heavy = Heavy::new(3, 2);
        let a1 = heavy.admit("a").unwrap();
        let _a2 = heavy.admit("a").unwrap();
        assert!(matches!(
            heavy.admit("a"),
            Err(ApiError::TooManyHeavyRequests { limit: 2 })
        ));
        let _b1 = heavy.admit("b").unwrap();
        // The server's three slots are taken: b's second is refused, and its own count is given back.
        assert!(matches!(heavy.admit("b"), Err(ApiError::Busy)));
        drop(a1);
        let _b2 = heavy.admit("b").unwrap();
        assert!(matches!(
            heavy.admit("b"),
            Err(ApiError::TooManyHeavyRequests { .. })
        ));
        assert_eq!(heavy.per_org.lock().unwrap().get("b"), Some(&2));
    }
}
