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
    /// The distinct tensors the profile's columns are read from (most profiles: one input, one output),
    /// and each column's place among them: a batch's tensors are found by name once, not per column.
    tensors: Vec<(Role, String)>,
    column_tensor: Vec<usize>,
}

impl Reference {
    fn new(profile: Profile, anomaly: Option<([f64; 3], Option<[f64; 3]>)>, logs: bool) -> Self {
        let mut tensors: Vec<(Role, String)> = Vec::new();
        let column_tensor = profile
            .columns
            .iter()
            .map(|c| {
                let at = (c.at.role, c.at.tensor.clone());
                tensors.iter().position(|t| *t == at).unwrap_or_else(|| {
                    tensors.push(at);
                    tensors.len() - 1
                })
            })
            .collect();
        Reference {
            profile,
            anomaly,
            logs,
            tensors,
            column_tensor,
        }
    }

    /// The batch's tensor for each of the reference's, when it has it with the batch's rows.
    fn find<'b>(&self, batch: &'b Observed) -> Vec<Option<&'b Tensor>> {
        self.tensors
            .iter()
            .map(|(role, name)| {
                let tensors = match role {
                    Role::Input => &batch.inputs,
                    Role::Output => &batch.outputs,
                };
                tensors
                    .iter()
                    .find(|t| t.name == *name)
                    .filter(|t| t.rows() == batch.rows)
            })
            .collect()
    }
}

/// One version's counts of one bucket on this replica, and whether the store has them all.
pub(super) struct Pending {
    live: Live,
    written: bool,
}

/// How often the monitor thread takes what the tap sent.
const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// Batches counted together at most (the rest wait for the next turn, without a pause).
const MAX_DRAIN: usize = 4096;

impl Monitor {
    /// Counts what the tap sends, on a thread of its own, until every sender is gone.
    pub fn count(self: &Arc<Self>, mut rx: mpsc::Receiver<Observed>) -> std::io::Result<()> {
        let monitor = self.clone();
        std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || {
                let mut batches = Vec::new();
                let mut full = false;
                loop {
                    // Drained on a period, never woken per batch: a wake-up costs a model worker more than
                    // the copy it sends. A drain that stopped at its limit goes on at once.
                    if !full {
                        std::thread::sleep(DRAIN_EVERY);
                    }
                    let mut closed = false;
                    while batches.len() < MAX_DRAIN {
                        match rx.try_recv() {
                            Ok(batch) => batches.push(batch),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                    let counted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        monitor.observe_all(&batches)
                    }));
                    if let Err(payload) = counted {
                        let message = mercator_engine::metrics::panic_message(payload.as_ref());
                        mercator_engine::metrics::count_panic("monitor", &message);
                    }
                    monitor
                        .counted
                        .fetch_add(batches.len() as u64, Ordering::AcqRel);
                    full = batches.len() == MAX_DRAIN;
                    batches.clear();
                    if closed {
                        return;
                    }
                }
            })
            .map(|_| ())
    }

    /// Counts one batch into its version's current bucket.
    pub fn observe(&self, batch: &Observed) {
        self.observe_all(std::slice::from_ref(batch));
    }

    /// Counts batches into their versions' current bucket. The batches of one version are counted
    /// together, column by column: the clock, the locks, the bucket's lookup and each column's fixed part
    /// (its kind matched, its moments kept in registers) are paid once per version per call, not per
    /// batch, which is what makes counting cheap when every batch is one row.
    pub fn observe_all(&self, batches: &[Observed]) {
        let Some(first) = batches.first() else {
            return;
        };
        let bucket = self.bucket_of(self.clock.now());
        // The versions in the order met, each with its batches.
        let mut groups: Vec<(Key, Vec<&Observed>)> =
            vec![((first.model.clone(), first.version), Vec::new())];
        for batch in batches {
            let i = groups
                .iter()
                .position(|(k, _)| k.1 == batch.version && *k.0 == *batch.model)
                .unwrap_or_else(|| {
                    groups.push(((batch.model.clone(), batch.version), Vec::new()));
                    groups.len() - 1
                });
            groups[i].1.push(batch);
        }
        let groups: Vec<(Key, Arc<Reference>, Vec<&Observed>)> = groups
            .into_iter()
            .filter_map(|(key, group)| Some((key.clone(), self.reference(&key)?, group)))
            .collect();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut values: Vec<f64> = Vec::new();
        for (key, reference, group) in groups {
            let profile = &reference.profile;
            let entry = pending.entry((key, bucket)).or_insert_with(|| Pending {
                live: profile.empty(),
                written: false,
            });
            let found: Vec<Vec<Option<&Tensor>>> =
                group.iter().map(|b| reference.find(b)).collect();
            for (c, column) in profile.columns.iter().enumerate() {
                let (slot, index) = (reference.column_tensor[c], column.at.index);
                values.clear();
                for (batch, tensors) in group.iter().zip(&found) {
                    push_column(&mut values, tensors[slot], index, batch.rows);
                }
                entry
                    .live
                    .observe_column(profile, c, values.iter().copied());
            }
            let rows: usize = group.iter().map(|b| b.rows).sum();
            entry.live.add_rows(rows);
            // An anomaly model's score is its first output.
            if let Some((thresholds, _)) = &reference.anomaly {
                entry.live.flagged.resize(3, 0);
                for score in group
                    .iter()
                    .filter_map(|b| b.outputs.first().map(|s| (b, s)))
                {
                    let (batch, score) = score;
                    let width = score.row_len().max(1);
                    for r in 0..batch.rows.min(score.data.len() / width) {
                        let s = score.data.f64_at(r * width);
                        for (flagged, t) in entry.live.flagged.iter_mut().zip(thresholds) {
                            *flagged += u64::from(s >= *t);
                        }
                    }
                }
            }
            entry.written = false;
        }
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
            Ok(Ok(profile)) => Some(Arc::new(Reference::new(
                profile,
                manifest.as_ref().and_then(|m| {
                    let a = m.anomaly.as_ref()?;
                    Some(([a.low, a.medium, a.high], a.calibrated_rates))
                }),
                manifest.is_some_and(|m| m.kind == mercator_engine::ModelKind::Price),
            ))),
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

/// Appends element `index` of each of the batch's `rows` rows of `tensor` to `values`, read in the
/// tensor's own type; NaN (missing) for each row when the batch lacks the tensor or the element (another
/// signature than the reference's).
fn push_column(values: &mut Vec<f64>, tensor: Option<&Tensor>, index: usize, rows: usize) {
    let width = tensor.map_or(0, |t| t.row_len());
    match tensor.map(|t| &t.data) {
        Some(data) if index < width => match data {
            TensorData::Fp32(v) => {
                values.extend(strided(v, index, width, rows).map(|x| f64::from(*x)))
            }
            TensorData::Fp64(v) => values.extend(strided(v, index, width, rows).copied()),
            TensorData::Int32(v) => {
                values.extend(strided(v, index, width, rows).map(|x| f64::from(*x)))
            }
            TensorData::Int64(v) => {
                values.extend(strided(v, index, width, rows).map(|x| *x as f64))
            }
            TensorData::Bool(v) => {
                values.extend(strided(v, index, width, rows).map(|x| f64::from(u8::from(*x))))
            }
        },
        _ => values.extend(std::iter::repeat_n(f64::NAN, rows)),
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
