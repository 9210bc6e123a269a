//! Shadow traffic: a copy of each request that names no version goes to the model's shadow version after
//! the client has its answer; the shadow's answer is compared with the one returned and never itself
//! returned. Figures per (model, shadow version): requests, failures, agreements, latency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mercator_engine::{Model, Tensor};
use serde::Serialize;

/// Two answers agree when every value is within this relative tolerance (absolute below 1).
pub const AGREEMENT_TOLERANCE: f64 = 1e-4;

#[derive(Default)]
pub struct Shadows {
    figures: Mutex<HashMap<(String, u64), Arc<Figures>>>,
}

#[derive(Default)]
struct Figures {
    requests: AtomicU64,
    failures: AtomicU64,
    agreements: AtomicU64,
    latency_ns: AtomicU64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ShadowFigures {
    pub version: u64,
    pub requests: u64,
    pub failures: u64,
    /// Requests whose answer agreed with the one returned to the client.
    pub agreements: u64,
    pub agreement_rate: f64,
    pub mean_latency_us: f64,
}

impl Shadows {
    fn entry(&self, model: &str, version: u64) -> Arc<Figures> {
        self.figures
            .lock()
            .expect("shadow figures")
            .entry((model.to_string(), version))
            .or_default()
            .clone()
    }

    /// Runs `inputs` on `shadow` in the background and compares its answer with `returned`.
    pub fn mirror(self: &Arc<Self>, shadow: Model, inputs: Vec<Tensor>, returned: Vec<Tensor>) {
        let figures = self.entry(&shadow.manifest().name, shadow.manifest().version);
        tokio::spawn(async move {
            let started = Instant::now();
            let result = shadow.infer(inputs, None).await;
            figures
                .latency_ns
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            figures.requests.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(out) if agree(&out.outputs, &returned) => {
                    figures.agreements.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => {
                    figures.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    pub fn figures(&self, model: &str, version: u64) -> Option<ShadowFigures> {
        let f = self
            .figures
            .lock()
            .expect("shadow figures")
            .get(&(model.to_string(), version))?
            .clone();
        let requests = f.requests.load(Ordering::Relaxed);
        let agreements = f.agreements.load(Ordering::Relaxed);
        let per = |x: u64| {
            if requests == 0 {
                0.0
            } else {
                x as f64 / requests as f64
            }
        };
        Some(ShadowFigures {
            version,
            requests,
            failures: f.failures.load(Ordering::Relaxed),
            agreements,
            agreement_rate: per(agreements),
            mean_latency_us: per(f.latency_ns.load(Ordering::Relaxed)) / 1000.0,
        })
    }
}

fn agree(shadow: &[Tensor], returned: &[Tensor]) -> bool {
    returned.iter().all(|r| {
        shadow.iter().any(|s| {
            s.name == r.name && s.shape == r.shape && {
                let (a, b) = (s.data.to_f64(), r.data.to_f64());
                a.iter()
                    .zip(&b)
                    .all(|(x, y)| (x - y).abs() <= AGREEMENT_TOLERANCE * y.abs().max(1.0))
            }
        })
    })
}
