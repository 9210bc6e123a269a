//! Jobs taken before chunks were kept in the store held their input and results in the data directory of
//! the replica that took them (`batches/{id}/input.csv`, `results/c000042.csv`, `outputs.json`). At start
//! each replica moves the ones its directory holds into the store, so a job queued, running or ended
//! across the upgrade is neither lost nor answered differently; the directory goes once the store has it.

use std::path::Path;

use mercator_store::{BatchJob, LegacyChunk};

use super::{input, BatchError, Jobs, INPUT};

impl Jobs {
    /// Moves every legacy job this replica's directory holds into the store (logged, never fatal).
    pub(super) async fn adopt_legacy(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.starts_with("bat_"))
            .collect();
        for id in ids {
            let dir = self.dir.join(&id);
            match self.adopt(&id, &dir).await {
                Ok(true) => {
                    tracing::info!(batch_id = %id, "a job from before chunks were kept in the store moved there");
                    let _ = std::fs::remove_dir_all(&dir);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(batch_id = %id, error = %e, "cannot move a job's files into the store")
                }
            }
        }
    }

    async fn adopt(&self, id: &str, dir: &Path) -> Result<bool, BatchError> {
        let Some(job) = self.store.legacy_batch_job(id).await? else {
            // Not a job, or moved already (by an earlier start that could not remove the directory).
            return Ok(self.store.batch_job_exists(id).await?);
        };
        let (dir, read) = (dir.to_path_buf(), job.clone());
        let (header, outputs, chunks) =
            tokio::task::spawn_blocking(move || read_legacy(&dir, &read))
                .await
                .map_err(|e| BatchError::internal("a batch task", e))??;
        self.store
            .adopt_batch_job(&job, &header, outputs.as_deref(), &chunks)
            .await?;
        Ok(true)
    }
}

type Files = (Vec<String>, Option<String>, Vec<LegacyChunk>);

/// A legacy job's header, outputs and, per chunk, its input (not yet committed, while the input is kept)
/// or its results (committed).
fn read_legacy(dir: &Path, job: &BatchJob) -> Result<Files, BatchError> {
    let path = dir.join(INPUT);
    let kept = path.exists();
    let header = if kept && job.input_format != input::FEATURES {
        input::headers(&path)?.iter().map(str::to_string).collect()
    } else {
        Vec::new()
    };
    let outputs = std::fs::read_to_string(dir.join("outputs.json")).ok();
    let mut chunks = Vec::with_capacity(job.chunks.len());
    for (index, chunk) in job.chunks.iter().enumerate() {
        let results = dir.join("results").join(format!("c{index:06}.csv"));
        if (index as u64) < job.chunks_done {
            chunks.push((None, Some(std::fs::read(results).map_err(input::io)?)));
        } else if kept && !job.state.is_terminal() {
            chunks.push((Some(input::chunk_bytes(&path, chunk)?), None));
        } else {
            chunks.push((None, None));
        }
    }
    Ok((header, outputs, chunks))
}
