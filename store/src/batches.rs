//! Batch prediction jobs: the job row (state, counts, the input's chunks) and its chunks, claimed by any
//! replica under a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has one writer) and committed once,
//! fenced by the claim's token, in one transaction with the job's counts.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::{from_ms, new_id, now_ms, ListParams, Listed, Result, Sql, Store, StoreError, Value};

/// A job's state: `queued` → `running` → `succeeded`, `failed` or `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Queued => "queued",
            BatchState::Running => "running",
            BatchState::Succeeded => "succeeded",
            BatchState::Failed => "failed",
            BatchState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<BatchState> {
        Some(match s {
            "queued" => BatchState::Queued,
            "running" => BatchState::Running,
            "succeeded" => BatchState::Succeeded,
            "failed" => BatchState::Failed,
            "cancelled" => BatchState::Cancelled,
            _ => return None,
        })
    }

    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        !matches!(self, BatchState::Queued | BatchState::Running)
    }
}

/// One chunk of the input: its first row (from 0), its row count and its bytes in the input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Chunk {
    pub first_row: u64,
    pub rows: u64,
    pub byte_start: u64,
    pub byte_end: u64,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchJob {
    pub id: String,
    #[serde(skip)]
    pub organization_id: String,
    /// The node whose data directory holds the input and runs the job.
    #[serde(skip)]
    pub node: String,
    pub model: String,
    /// Pinned at submit: a resumed job never switches versions.
    pub model_version: u64,
    pub state: BatchState,
    /// `csv`, `json` or `parquet`: how the input came.
    pub input_format: String,
    pub input_bytes: u64,
    pub total_rows: u64,
    /// Rows whose results are committed: never goes backwards, not even across a crash.
    pub processed_rows: u64,
    /// Committed rows that carry an error.
    pub failed_rows: u64,
    pub chunks_total: u64,
    pub chunks_done: u64,
    /// Runs of the job: 1, plus one per resume after a restart.
    pub attempts: u64,
    pub error: Option<JobError>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub chunks: Vec<Chunk>,
    /// A price job's CSV header: what each chunk's records are.
    #[serde(skip)]
    pub header: Vec<String>,
    /// A raw job's outputs, as JSON (what its result rows hold).
    #[serde(skip)]
    pub outputs: Option<String>,
}

/// What a new job is.
#[derive(Debug, Clone)]
pub struct NewBatchJob {
    pub id: String,
    pub node: String,
    pub model: String,
    pub model_version: u64,
    pub input_format: String,
    pub input_bytes: u64,
    pub chunks: Vec<Chunk>,
    /// A price job's CSV header.
    pub header: Vec<String>,
    /// A raw job's outputs, as JSON.
    pub outputs: Option<String>,
    /// The client's `Idempotency-Key`, unique in the organization.
    pub idempotency_key: Option<String>,
}

/// A legacy job's chunk as its files held it: its input while not committed, its results once committed.
pub type LegacyChunk = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A chunk a replica claimed: its job as the claim left it, its rows and input (CSV records, no header),
/// and the token its renewals and commit carry.
#[derive(Debug, Clone)]
pub struct ClaimedChunk {
    pub job: BatchJob,
    pub index: u64,
    pub first_row: u64,
    pub rows: u64,
    pub input: Vec<u8>,
    pub token: i64,
    /// Claimed before by a replica whose lease ran out (or that restarted).
    pub reclaimed: bool,
}

/// A new job id: `bat_` and a time-sortable id.
pub fn new_batch_id() -> String {
    format!("bat_{}", new_id())
}

const COLUMNS: &str = "id, organization_id, node, model, model_version, state, input_format, input_bytes, \
    total_rows, processed_rows, failed_rows, chunks, chunks_total, chunks_done, attempts, error_code, \
    error_message, created_at, started_at, finished_at, cancel_requested_at, input_header, outputs";

impl<'r> FromRow<'r, AnyRow> for BatchJob {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        let n = |c: &str| row.try_get::<i64, _>(c).map(|v| v as u64);
        let t = |c: &str| row.try_get::<Option<i64>, _>(c).map(|v| v.map(from_ms));
        let state: String = row.try_get("state")?;
        let chunks: String = row.try_get("chunks")?;
        let code: Option<String> = row.try_get("error_code")?;
        Ok(BatchJob {
            id: row.try_get("id")?,
            organization_id: row.try_get("organization_id")?,
            node: row.try_get("node")?,
            model: row.try_get("model")?,
            model_version: n("model_version")?,
            state: BatchState::parse(&state).unwrap_or(BatchState::Failed),
            input_format: row.try_get("input_format")?,
            input_bytes: n("input_bytes")?,
            total_rows: n("total_rows")?,
            processed_rows: n("processed_rows")?,
            failed_rows: n("failed_rows")?,
            chunks_total: n("chunks_total")?,
            chunks_done: n("chunks_done")?,
            attempts: n("attempts")?,
            error: code.map(|code| JobError {
                code,
                message: row
                    .try_get::<Option<String>, _>("error_message")
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
            }),
            created_at: from_ms(row.try_get("created_at")?),
            started_at: t("started_at")?,
            finished_at: t("finished_at")?,
            cancel_requested_at: t("cancel_requested_at")?,
            chunks: chunks_from_text(&chunks),
            header: row
                .try_get::<Option<String>, _>("input_header")?
                .and_then(|h| serde_json::from_str(&h).ok())
                .unwrap_or_default(),
            outputs: row.try_get("outputs")?,
        })
    }
}

/// Chunks as stored: `[[first_row, rows, byte_start, byte_end], ...]`, compact for a million-row input.
fn chunks_to_text(chunks: &[Chunk]) -> String {
    let rows: Vec<[u64; 4]> = chunks
        .iter()
        .map(|c| [c.first_row, c.rows, c.byte_start, c.byte_end])
        .collect();
    serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into())
}

fn chunks_from_text(text: &str) -> Vec<Chunk> {
    serde_json::from_str::<Vec<[u64; 4]>>(text)
        .unwrap_or_default()
        .into_iter()
        .map(|[first_row, rows, byte_start, byte_end]| Chunk {
            first_row,
            rows,
            byte_start,
            byte_end,
        })
        .collect()
}

impl Store {
    /// Writes chunk `index` of the job `job_id` that `org` is submitting: its rows and its input (CSV records,
    /// no header). Written before the job ([`Store::create_batch_job`]): until the job row exists, no replica
    /// claims it.
    pub async fn add_batch_chunk(
        &self,
        org: &str,
        job_id: &str,
        index: u64,
        chunk: &Chunk,
        input: &[u8],
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO batch_chunks (job_id, idx, organization_id, first_row, row_count, state, attempt, \
             claims, input, created_at) VALUES ($1, $2, $3, $4, $5, 'pending', 0, 0, $6, $7)",
        )
        .bind(job_id)
        .bind(index as i64)
        .bind(org)
        .bind(chunk.first_row as i64)
        .bind(chunk.rows as i64)
        .bind(input)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_write(e, "the organization does not exist"))?;
        Ok(())
    }

    /// Records a queued job of organization `org` whose chunks are written. With an idempotency key the
    /// organization has used, the job made with it is returned instead, and the chunks written for this one
    /// are removed (`Conflict` only if the organization is gone).
    pub async fn create_batch_job(&self, org: &str, new: NewBatchJob) -> Result<BatchJob> {
        let total: u64 = new.chunks.iter().map(|c| c.rows).sum();
        let header = (!new.header.is_empty())
            .then(|| serde_json::to_string(&new.header).unwrap_or_default());
        let inserted = sqlx::query(
            "INSERT INTO batch_jobs (id, organization_id, node, model, model_version, state, input_format, \
             input_bytes, total_rows, processed_rows, failed_rows, chunks, chunks_total, chunks_done, attempts, \
             created_at, idempotency_key, input_header, outputs) \
             VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8, 0, 0, $9, $10, 0, 0, $11, $12, $13, $14)",
        )
        .bind(&new.id)
        .bind(org)
        .bind(&new.node)
        .bind(&new.model)
        .bind(new.model_version as i64)
        .bind(&new.input_format)
        .bind(new.input_bytes as i64)
        .bind(total as i64)
        .bind(chunks_to_text(&new.chunks))
        .bind(new.chunks.len() as i64)
        .bind(now_ms())
        .bind(&new.idempotency_key)
        .bind(header)
        .bind(&new.outputs)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => self.batch_job(org, &new.id).await,
            Err(e) => {
                self.remove_batch_chunks(&new.id).await?;
                match e {
                    sqlx::Error::Database(d) if d.is_unique_violation() => {
                        let key = new.idempotency_key.as_deref().unwrap_or_default();
                        self.batch_job_by_key(org, key)
                            .await?
                            .ok_or_else(|| StoreError::Conflict("the job id is taken".into()))
                    }
                    e => Err(StoreError::from_write(e, "the organization does not exist")),
                }
            }
        }
    }

    /// A job taken before chunks were kept in the store (its input and results in the data directory of
    /// the replica that took it): None when there is no such job, or its chunks are in the store already.
    pub async fn legacy_batch_job(&self, id: &str) -> Result<Option<BatchJob>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM batch_jobs b WHERE id = $1 \
             AND NOT EXISTS (SELECT 1 FROM batch_chunks c WHERE c.job_id = b.id)"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Whether a job of that id exists.
    pub async fn batch_job_exists(&self, id: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM batch_jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Moves a legacy job into the store in one transaction: each chunk with its input (not yet committed)
    /// or its results (committed), and the job's header and outputs. Chunks a job that ended never
    /// committed are dropped.
    pub async fn adopt_batch_job(
        &self,
        job: &BatchJob,
        header: &[String],
        outputs: Option<&str>,
        chunks: &[LegacyChunk],
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for (index, ((input, result), chunk)) in chunks.iter().zip(&job.chunks).enumerate() {
            let state = match (result, job.state.is_terminal()) {
                (Some(_), _) => "done",
                (None, false) => "pending",
                (None, true) => "dropped",
            };
            sqlx::query(
                "INSERT INTO batch_chunks (job_id, idx, organization_id, first_row, row_count, state, \
                 attempt, claims, input, result, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $10)",
            )
            .bind(&job.id)
            .bind(index as i64)
            .bind(&job.organization_id)
            .bind(chunk.first_row as i64)
            .bind(chunk.rows as i64)
            .bind(state)
            .bind(job.attempts as i64)
            .bind(if state == "pending" { input.as_deref() } else { None })
            .bind(result.as_deref())
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        let header =
            (!header.is_empty()).then(|| serde_json::to_string(header).unwrap_or_default());
        sqlx::query("UPDATE batch_jobs SET input_header = $1, outputs = $2 WHERE id = $3")
            .bind(header)
            .bind(outputs)
            .bind(&job.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes the chunks of a job that was never recorded.
    pub async fn remove_batch_chunks(&self, job_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM batch_chunks WHERE job_id = $1")
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The organization's job made with an idempotency key.
    pub async fn batch_job_by_key(&self, org: &str, key: &str) -> Result<Option<BatchJob>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM batch_jobs WHERE organization_id = $1 AND idempotency_key = $2"
        ))
        .bind(org)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The job, if `org` owns it.
    pub async fn batch_job(&self, org: &str, id: &str) -> Result<BatchJob> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM batch_jobs WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("batch job"))
    }

    /// The organization's jobs, newest first, optionally in one state.
    pub async fn batch_jobs(
        &self,
        org: &str,
        state: Option<BatchState>,
        page: &ListParams,
    ) -> Result<Listed<BatchJob>> {
        let mut wher = Sql::new(" WHERE organization_id = ");
        wher.bind(Value::Text(Some(org.into())));
        if let Some(state) = state {
            wher.push(" AND state = ")
                .bind(Value::Text(Some(state.as_str().into())));
        }
        self.list("batch_jobs", COLUMNS, wher, " ORDER BY id DESC", page)
            .await
    }

    /// Bytes uploaded by the organization's jobs whose chunks are still kept: not ended, or ended at or
    /// after `cutoff` (older ones' results have expired and are deleted).
    pub async fn batch_job_bytes(&self, org: &str, cutoff: DateTime<Utc>) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(input_bytes), 0) AS BIGINT) FROM batch_jobs \
             WHERE organization_id = $1 AND (finished_at IS NULL OR finished_at >= $2)",
        )
        .bind(org)
        .bind(cutoff.timestamp_millis())
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as u64)
    }

    /// Queued and running jobs of the organization (what its limit on active jobs counts).
    pub async fn active_batch_jobs(&self, org: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM batch_jobs WHERE organization_id = $1 AND state IN ('queued', 'running')",
        )
        .bind(org)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    /// Claims the next chunk for `holder` until `lease` from now: a pending chunk, or a running one whose
    /// lease has run out, of a queued or running job. Fair across organizations: the chunk comes from the
    /// organization with the fewest chunks running anywhere, of those the one served longest ago (so
    /// organizations take turns), then the oldest job, then the first chunk.
    /// Starts the job (state `running`); a chunk taken over from a replica that stopped renewing it counts
    /// one more attempt of the job, once for all the chunks that replica held. None when there is nothing
    /// to run.
    pub async fn claim_batch_chunk(
        &self,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<Option<ClaimedChunk>> {
        // Skipping the rows another claim holds is what lets replicas claim at once without waiting on one
        // another; only the chunk is locked (`OF c`), never its job.
        let lock = if self.sqlite {
            ""
        } else {
            " FOR UPDATE OF c SKIP LOCKED"
        };
        let now = self.clock_ms();
        let claim = format!(
            "UPDATE batch_chunks SET state = 'running', holder = $1, token = $2, lease_until = {now} + $3, \
             claims = claims + 1, claimed_at = {now} \
             WHERE (job_id, idx) = (SELECT c.job_id, c.idx FROM batch_chunks c \
               WHERE (c.state = 'pending' OR (c.state = 'running' AND c.lease_until < {now})) \
               AND EXISTS (SELECT 1 FROM batch_jobs j WHERE j.id = c.job_id AND j.state IN ('queued', 'running')) \
               ORDER BY (SELECT COUNT(*) FROM batch_chunks r WHERE r.organization_id = c.organization_id \
                 AND r.state = 'running' AND r.lease_until >= {now}), \
                 (SELECT COALESCE(MAX(r.claimed_at), 0) FROM batch_chunks r \
                   WHERE r.organization_id = c.organization_id), c.job_id, c.idx \
               LIMIT 1{lock}) \
             RETURNING job_id, idx, first_row, row_count, attempt, claims, input"
        );
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        // Most claims find nothing (an idle runner asks every second): a read says so without taking
        // SQLite's one write lock, which a bulk write may hold for seconds.
        let open: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT 1 FROM batch_chunks c WHERE (c.state = 'pending' \
             OR (c.state = 'running' AND c.lease_until < {now})) \
             AND EXISTS (SELECT 1 FROM batch_jobs j WHERE j.id = c.job_id AND j.state IN ('queued', 'running')) \
             LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        if open.is_none() {
            return Ok(None);
        }
        // A chunk whose job ended between the pick and the job's update is dropped, and the next tried.
        for _ in 0..8 {
            let now = now_ms();
            let token = (rand::random::<u64>() >> 1) as i64;
            let mut tx = self.write_tx().await?;
            let Some(row) = sqlx::query(&claim)
                .bind(holder)
                .bind(token)
                .bind(lease_ms)
                .fetch_optional(&mut *tx)
                .await?
            else {
                tx.commit().await?;
                return Ok(None);
            };
            let job_id: String = row.try_get("job_id")?;
            let index: i64 = row.try_get("idx")?;
            let attempt: i64 = row.try_get("attempt")?;
            let claims: i64 = row.try_get("claims")?;
            let reclaimed = claims > 1;
            if reclaimed {
                // Only the first chunk taken over from a run moves the job to its next attempt: the others
                // of that run find the count moved on already.
                sqlx::query(
                    "UPDATE batch_jobs SET attempts = attempts + 1 WHERE id = $1 AND attempts = $2",
                )
                .bind(&job_id)
                .bind(attempt)
                .execute(&mut *tx)
                .await?;
            }
            let job: Option<BatchJob> = sqlx::query_as(&format!(
                "UPDATE batch_jobs SET state = 'running', started_at = COALESCE(started_at, $1), \
                 attempts = CASE WHEN attempts = 0 THEN 1 ELSE attempts END \
                 WHERE id = $2 AND state IN ('queued', 'running') RETURNING {COLUMNS}"
            ))
            .bind(now)
            .bind(&job_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(job) = job else {
                sqlx::query(
                    "UPDATE batch_chunks SET state = 'dropped', input = NULL WHERE job_id = $1 AND idx = $2",
                )
                .bind(&job_id)
                .bind(index)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                continue;
            };
            sqlx::query("UPDATE batch_chunks SET attempt = $1 WHERE job_id = $2 AND idx = $3")
                .bind(job.attempts as i64)
                .bind(&job_id)
                .bind(index)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(Some(ClaimedChunk {
                job,
                index: index as u64,
                first_row: row.try_get::<i64, _>("first_row")? as u64,
                rows: row.try_get::<i64, _>("row_count")? as u64,
                input: row
                    .try_get::<Option<Vec<u8>>, _>("input")?
                    .unwrap_or_default(),
                token,
                reclaimed,
            }));
        }
        Ok(None)
    }

    /// The database's clock in milliseconds, as SQL: leases are set and compared on one clock, whatever the
    /// replicas' clocks say.
    fn clock_ms(&self) -> &'static str {
        if self.sqlite {
            "CAST((julianday('now') - 2440587.5) * 86400000 AS BIGINT)"
        } else {
            "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
        }
    }

    /// Extends a claim's lease to `lease` from now. False when the claim is lost: its lease ran out and
    /// another replica took the chunk, or its job ended.
    pub async fn renew_batch_chunk(
        &self,
        job_id: &str,
        index: u64,
        token: i64,
        lease: std::time::Duration,
    ) -> Result<bool> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        let done = sqlx::query(&format!(
            "UPDATE batch_chunks SET lease_until = {} + $1 WHERE job_id = $2 AND idx = $3 AND token = $4 \
             AND state = 'running'",
            self.clock_ms()
        ))
        .bind(lease_ms)
        .bind(job_id)
        .bind(index as i64)
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Lets a claim go at once (its lease ends now), for any replica to take the chunk again.
    pub async fn release_batch_chunk(&self, job_id: &str, index: u64, token: i64) -> Result<()> {
        sqlx::query(
            "UPDATE batch_chunks SET lease_until = 0 WHERE job_id = $1 AND idx = $2 AND token = $3 \
             AND state = 'running'",
        )
        .bind(job_id)
        .bind(index as i64)
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Lets go every claim `holder` has: a replica starting again holds nothing it claimed before, so what
    /// it held is taken again at once (by it or another) instead of after the leases run out.
    pub async fn release_batch_chunks(&self, holder: &str) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE batch_chunks SET lease_until = 0 WHERE holder = $1 AND state = 'running'",
        )
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Commits a claimed chunk: its results (`rows` rows, `failed` of them with errors) and the job's counts
    /// in one transaction, the last chunk ending the job `succeeded`. Applies once, and only while the claim
    /// holds (the token is the chunk's and the job runs): None when it does not, and nothing is written.
    pub async fn commit_batch_chunk(
        &self,
        job_id: &str,
        index: u64,
        token: i64,
        result: &[u8],
        rows: u64,
        failed: u64,
    ) -> Result<Option<BatchJob>> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE batch_chunks SET state = 'done', result = $1, failed = $2, input = NULL, \
             lease_until = NULL WHERE job_id = $3 AND idx = $4 AND token = $5 AND state = 'running'",
        )
        .bind(result)
        .bind(failed as i64)
        .bind(job_id)
        .bind(index as i64)
        .bind(token)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        let job: Option<BatchJob> = sqlx::query_as(&format!(
            "UPDATE batch_jobs SET chunks_done = chunks_done + 1, processed_rows = processed_rows + $1, \
             failed_rows = failed_rows + $2, \
             state = CASE WHEN chunks_done + 1 >= chunks_total THEN 'succeeded' ELSE state END, \
             finished_at = CASE WHEN chunks_done + 1 >= chunks_total THEN $3 ELSE finished_at END \
             WHERE id = $4 AND state = 'running' RETURNING {COLUMNS}"
        ))
        .bind(rows as i64)
        .bind(failed as i64)
        .bind(now_ms())
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?;
        if job.is_none() {
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        Ok(job)
    }

    /// Ends a queued or running job in `state` (with the error that failed it); its chunks not committed are
    /// dropped. False when it had ended.
    pub async fn finish_batch_job(
        &self,
        id: &str,
        state: BatchState,
        error: Option<JobError>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE batch_jobs SET state = $1, finished_at = $2, error_code = $3, error_message = $4 \
             WHERE id = $5 AND state IN ('queued', 'running')",
        )
        .bind(state.as_str())
        .bind(now_ms())
        .bind(error.as_ref().map(|e| e.code.clone()))
        .bind(error.as_ref().map(|e| e.message.clone()))
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.drop_open_chunks(id).await?;
        Ok(done.rows_affected() == 1)
    }

    /// An ended job's chunks that never committed: dropped, their input with them.
    async fn drop_open_chunks(&self, id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE batch_chunks SET state = 'dropped', input = NULL WHERE job_id = $1 \
             AND state IN ('pending', 'running')",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Cancels a queued or running job at once, keeping the chunks committed; a chunk being computed
    /// anywhere is not committed after this. An ended job is left as it is. Returns the job as it now stands.
    pub async fn cancel_batch_job(&self, org: &str, id: &str) -> Result<BatchJob> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE batch_jobs SET state = 'cancelled', finished_at = $1, cancel_requested_at = $1 \
             WHERE organization_id = $2 AND id = $3 AND state IN ('queued', 'running')",
        )
        .bind(now)
        .bind(org)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            self.drop_open_chunks(id).await?;
        }
        self.batch_job(org, id).await
    }

    /// A committed chunk's results (None: not committed, or deleted with the job's results).
    pub async fn batch_chunk_result(&self, job_id: &str, index: u64) -> Result<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar(
            "SELECT result FROM batch_chunks WHERE job_id = $1 AND idx = $2 AND state = 'done'",
        )
        .bind(job_id)
        .bind(index as i64)
        .fetch_optional(&self.pool)
        .await?
        .flatten())
    }

    /// Deletes the chunks (inputs and results) of jobs that ended before `cutoff`, and those of submits
    /// that never became a job, written before `cutoff` and over an hour ago (a submit writes its chunks
    /// before its job). Returns how many chunks went.
    pub async fn purge_batch_chunks(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let cutoff = cutoff.timestamp_millis();
        let unborn = cutoff.min(now_ms() - 3_600_000);
        let ended = sqlx::query(
            "DELETE FROM batch_chunks WHERE job_id IN \
             (SELECT id FROM batch_jobs WHERE finished_at < $1)",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await?;
        let orphans = sqlx::query(
            "DELETE FROM batch_chunks WHERE created_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM batch_jobs j WHERE j.id = batch_chunks.job_id)",
        )
        .bind(unborn)
        .execute(&self.pool)
        .await?;
        Ok(ended.rows_affected() + orphans.rows_affected())
    }
}
