//! Batch prediction jobs: the job row (state, counts, the input's chunks) and the one-statement commit that
//! moves a job on by one chunk.

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
    /// The client's `Idempotency-Key`, unique in the organization.
    pub idempotency_key: Option<String>,
}

/// A new job id: `bat_` and a time-sortable id.
pub fn new_batch_id() -> String {
    format!("bat_{}", new_id())
}

const COLUMNS: &str = "id, organization_id, node, model, model_version, state, input_format, input_bytes, \
    total_rows, processed_rows, failed_rows, chunks, chunks_total, chunks_done, attempts, error_code, \
    error_message, created_at, started_at, finished_at, cancel_requested_at";

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
    /// Records a queued job of organization `org`. With an idempotency key the organization has used, the
    /// job made with it is returned instead (`Conflict` only if the organization is gone).
    pub async fn create_batch_job(&self, org: &str, new: NewBatchJob) -> Result<BatchJob> {
        let total: u64 = new.chunks.iter().map(|c| c.rows).sum();
        let inserted = sqlx::query(
            "INSERT INTO batch_jobs (id, organization_id, node, model, model_version, state, input_format, \
             input_bytes, total_rows, processed_rows, failed_rows, chunks, chunks_total, chunks_done, attempts, \
             created_at, idempotency_key) \
             VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8, 0, 0, $9, $10, 0, 0, $11, $12)",
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
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => self.batch_job(org, &new.id).await,
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                let key = new.idempotency_key.as_deref().unwrap_or_default();
                self.batch_job_by_key(org, key)
                    .await?
                    .ok_or_else(|| StoreError::Conflict("the job id is taken".into()))
            }
            Err(e) => Err(StoreError::from_write(e, "the organization does not exist")),
        }
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

    /// Jobs of `node` that ended before `cutoff`: whose results have expired.
    pub async fn batch_jobs_ended_before(
        &self,
        node: &str,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM batch_jobs WHERE node = $1 AND finished_at < $2 ORDER BY id",
        )
        .bind(node)
        .bind(cutoff.timestamp_millis())
        .fetch_all(&self.pool)
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

    /// Bytes uploaded by the organization's jobs whose files are still kept: not ended, or ended at or after
    /// `cutoff` (older ones' results have expired and their files are deleted).
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

    /// The jobs `node` should run: queued or running (a running one was cut short by a restart), oldest
    /// first.
    pub async fn batch_jobs_to_run(&self, node: &str) -> Result<Vec<BatchJob>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM batch_jobs WHERE node = $1 AND state IN ('queued', 'running') ORDER BY id"
        ))
        .bind(node)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Starts (or resumes) a queued or running job: state `running`, one more attempt. None when the job
    /// has ended meanwhile (cancelled while queued).
    pub async fn start_batch_job(&self, id: &str) -> Result<Option<BatchJob>> {
        let done = sqlx::query(
            "UPDATE batch_jobs SET state = 'running', attempts = attempts + 1, \
             started_at = COALESCE(started_at, $1) WHERE id = $2 AND state IN ('queued', 'running')",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        Ok(
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM batch_jobs WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Commits chunk `index` of a running job (its results file is in place): `rows` more processed rows,
    /// `failed` of them with errors. Applies once: false when the job is not running or has committed that
    /// chunk already. Also says whether a cancel has been asked for.
    pub async fn commit_batch_chunk(
        &self,
        id: &str,
        index: u64,
        rows: u64,
        failed: u64,
    ) -> Result<(bool, bool)> {
        let done = sqlx::query(
            "UPDATE batch_jobs SET chunks_done = chunks_done + 1, processed_rows = processed_rows + $1, \
             failed_rows = failed_rows + $2 WHERE id = $3 AND state = 'running' AND chunks_done = $4",
        )
        .bind(rows as i64)
        .bind(failed as i64)
        .bind(id)
        .bind(index as i64)
        .execute(&self.pool)
        .await?;
        let cancel: Option<Option<i64>> =
            sqlx::query_scalar("SELECT cancel_requested_at FROM batch_jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok((done.rows_affected() == 1, matches!(cancel, Some(Some(_)))))
    }

    /// Ends a queued or running job in `state` (with the error that failed it). False when it had ended.
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
        Ok(done.rows_affected() == 1)
    }

    /// Asks for a job to stop: a queued job is cancelled at once; a running one is marked, and its runner
    /// stops at its next chunk. An ended job is left as it is. Returns the job as it now stands.
    pub async fn cancel_batch_job(&self, org: &str, id: &str) -> Result<BatchJob> {
        let now = now_ms();
        sqlx::query(
            "UPDATE batch_jobs SET state = 'cancelled', finished_at = $1, cancel_requested_at = $1 \
             WHERE organization_id = $2 AND id = $3 AND state = 'queued'",
        )
        .bind(now)
        .bind(org)
        .bind(id)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "UPDATE batch_jobs SET cancel_requested_at = $1 WHERE organization_id = $2 AND id = $3 \
             AND state = 'running' AND cancel_requested_at IS NULL",
        )
        .bind(now)
        .bind(org)
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.batch_job(org, id).await
    }
}
