//! Counting: the tap's batches into this replica's buckets, and the buckets into the store.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mercator_engine::{Observed, Tensor, TensorData, PROFILE_FILE};
use mercator_features::profile::{Live, Profile, Role};
use mercator_store::StoreError;
use tokio::sync::mpsc;

use super::{Key, Monitor};

/// What a monitored version is compared with.
pub(super) struct Reference {
    pub(super) profile: Profile,
    /// An anomaly model's thresholds (low, medium, high) and the shares they flagged in calibration.
    pub(super) anomaly: Option<([f64; 3], Option<[f64; 3]>)>,
    /// Whether its predictions are logged (a price model).
    pub(super) logs: bool,
}

/// One version's counts of one bucket on this replica, and whether the store has them all.
pub(super) struct Pending {
    live: Live,
    written: bool,
}

/// How often the monitor thread takes what the tap sent.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

impl Monitor {
    /// Counts what the tap sends, on a thread of its own, until every sender is gone.
    pub fn count(self: &Arc<Self>, mut rx: mpsc::Receiver<Observed>) -> std::io::Result<()> {
        let monitor = self.clone();
        std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || loop {
                // Drained on a period, never woken per batch: a wake-up costs a model worker more than
                // the copy it sends.
                std::thread::sleep(DRAIN_EVERY);
                loop {
                    let batch = match rx.try_recv() {
                        Ok(batch) => batch,
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    };
                    let counted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        monitor.observe(&batch)
                    }));
                    if let Err(payload) = counted {
                        let message = mercator_engine::metrics::panic_message(payload.as_ref());
                        mercator_engine::metrics::count_panic("monitor", &message);
                    }
                    monitor.counted.fetch_add(1, Ordering::AcqRel);
                }
            })
            .map(|_| ())
    }

    /// Counts one batch into its version's current bucket.
    pub fn observe(&self, batch: &Observed) {
        let key: Key = (batch.model.clone(), batch.version);
        let Some(reference) = self.reference(&key) else {
            return;
        };
        let bucket = self.bucket_of(self.clock.now());
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let profile = &reference.profile;
        let entry = pending.entry((key, bucket)).or_insert_with(|| Pending {
            live: profile.empty(),
            written: false,
        });
        // Column by column, each read where it lies in its tensor with the tensor's own type: no copy,
        // no conversion chosen per value. Columns of one tensor follow each other, so it is looked up
        // once for them.
        let mut found: Option<(&str, Role, Option<&Tensor>)> = None;
        for (c, column) in profile.columns.iter().enumerate() {
            let at = &column.at;
            let tensor = match found {
                Some((name, role, tensor)) if name == at.tensor && role == at.role => tensor,
                _ => {
                    let tensors = match at.role {
                        Role::Input => &batch.inputs,
                        Role::Output => &batch.outputs,
                    };
                    let tensor = tensors
                        .iter()
                        .find(|t| t.name == at.tensor)
                        .filter(|t| t.rows() == batch.rows);
                    found = Some((&at.tensor, at.role, tensor));
                    tensor
                }
            };
            let live = &mut entry.live;
            let width = tensor.map_or(0, |t| t.row_len());
            match tensor.map(|t| &t.data) {
                Some(data) if at.index < width => {
                    let rows = batch.rows;
                    match data {
                        TensorData::Fp32(v) => live.observe_column(
                            profile,
                            c,
                            strided(v, at.index, width, rows).map(|x| f64::from(*x)),
                        ),
                        TensorData::Fp64(v) => live.observe_column(
                            profile,
                            c,
                            strided(v, at.index, width, rows).copied(),
                        ),
                        TensorData::Int32(v) => live.observe_column(
                            profile,
                            c,
                            strided(v, at.index, width, rows).map(|x| f64::from(*x)),
                        ),
                        TensorData::Int64(v) => live.observe_column(
                            profile,
                            c,
                            strided(v, at.index, width, rows).map(|x| *x as f64),
                        ),
                        TensorData::Bool(v) => live.observe_column(
                            profile,
                            c,
                            strided(v, at.index, width, rows).map(|x| f64::from(u8::from(*x))),
                        ),
                    }
                }
                // Not in the batch (another signature than the reference's): missing in every row.
                _ => live.observe_column(profile, c, std::iter::repeat_n(f64::NAN, batch.rows)),
            }
        }
        entry.live.add_rows(batch.rows);
        // An anomaly model's score is its first output.
        if let (Some((thresholds, _)), Some(score)) = (&reference.anomaly, batch.outputs.first()) {
            let width = score.row_len().max(1);
            entry.live.flagged.resize(3, 0);
            for r in 0..batch.rows.min(score.data.len() / width) {
                let s = score.data.f64_at(r * width);
                for (flagged, t) in entry.live.flagged.iter_mut().zip(thresholds) {
                    *flagged += u64::from(s >= *t);
                }
            }
        }
        entry.written = false;
    }

    /// The reference profile of a version, read from its folder the first time it is asked for.
    pub(super) fn reference(&self, key: &Key) -> Option<Arc<Reference>> {
        let mut known = self.references.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(profile) = known.get(key) {
            return profile.clone();
        }
        let path = self
            .served
            .join(&*key.0)
            .join(key.1.to_string())
            .join(PROFILE_FILE);
        let manifest = self
            .repository
            .get(&key.0, Some(&key.1.to_string()))
            .ok()
            .map(|m| m.manifest().clone());
        let profile = match std::fs::read(&path).map(|b| Profile::parse(&b)) {
            Ok(Ok(profile)) => Some(Arc::new(Reference {
                profile,
                anomaly: manifest.as_ref().and_then(|m| {
                    let a = m.anomaly.as_ref()?;
                    Some(([a.low, a.medium, a.high], a.calibrated_rates))
                }),
                logs: manifest.is_some_and(|m| m.kind == mercator_engine::ModelKind::Price),
            })),
            Ok(Err(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "a reference profile that cannot be read: the version is not monitored");
                None
            }
            // Not served yet (an upload's golden check runs while it is staged): asked again next time.
            Err(_) => return None,
        };
        known.insert(key.clone(), profile.clone());
        profile
    }

    pub(super) fn bucket_secs(&self) -> i64 {
        self.config.bucket.as_secs().max(1) as i64
    }

    pub(super) fn bucket_of(&self, at: DateTime<Utc>) -> i64 {
        at.timestamp().div_euclid(self.bucket_secs()) * self.bucket_secs()
    }

    /// Writes this replica's counts that the store does not have yet; forgets buckets that are over.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let current = self.bucket_of(self.clock.now());
        let unwritten: Vec<((Key, i64), String, u64)> = {
            let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending
                .iter()
                .filter(|(_, p)| !p.written)
                .filter_map(|(k, p)| {
                    let json = serde_json::to_string(&p.live).ok()?;
                    Some((k.clone(), json, p.live.rows))
                })
                .collect()
        };
        for (((model, version), bucket), json, rows) in &unwritten {
            self.store
                .put_monitor_counts(model, *version, *bucket, *rows, json)
                .await?;
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = pending.get_mut(&((model.clone(), *version), *bucket)) {
                // Counted again since the copy was taken: written next time.
                if p.live.rows == *rows {
                    p.written = true;
                }
            }
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(_, bucket), p| !p.written || *bucket >= current);
        Ok(())
    }
}

/// Element `index` of each of the first `rows` rows of `width` elements.
fn strided<T>(values: &[T], index: usize, width: usize, rows: usize) -> impl Iterator<Item = &T> {
    values
        .get(index..)
        .unwrap_or_default()
        .iter()
        .step_by(width.max(1))
        .take(rows)
}
