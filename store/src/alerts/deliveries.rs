//! The webhook outbox: a delivery queued in the transaction that opens its event, claimed under a lease,
//! retried on a schedule, and logged.

use super::*;

/// A webhook delivery of an event, as the delivery log shows it (never the secret or the body).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Delivery {
    /// Also the `webhook-id` header: the same on every attempt, so a receiver can drop a duplicate.
    pub id: String,
    pub event_id: String,
    pub url: String,
    /// pending (waiting for its next attempt), delivered, failed (its retries ran out).
    pub status: String,
    pub attempts: u64,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The receiver's last HTTP status; none when it could not be reached.
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A delivery claimed for an attempt.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: String,
    pub url: String,
    /// The signing secret, or why it cannot be opened (a key this server does not hold).
    pub secret: std::result::Result<String, String>,
    pub body: String,
    /// This attempt's number, from 1.
    pub attempt: u64,
}

const DELIVERY_COLUMNS: &str = "id, event_id, url, status, attempts, next_attempt_at, \
                                last_status_code, last_error, created_at, delivered_at";

impl<'r> FromRow<'r, AnyRow> for Delivery {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        let status: String = row.try_get("status")?;
        Ok(Delivery {
            id: row.try_get("id")?,
            event_id: row.try_get("event_id")?,
            url: row.try_get("url")?,
            next_attempt_at: (status == "pending")
                .then(|| row.try_get("next_attempt_at").map(from_ms))
                .transpose()?,
            status,
            attempts: row.try_get::<i64, _>("attempts")? as u64,
            last_status_code: row
                .try_get::<Option<i64>, _>("last_status_code")?
                .map(|c| c as u16),
            last_error: row.try_get("last_error")?,
            created_at: from_ms(row.try_get("created_at")?),
            delivered_at: row.try_get::<Option<i64>, _>("delivered_at")?.map(from_ms),
        })
    }
}

impl Store {
    /// Queues an event's body for a webhook, due now.
    pub async fn enqueue_delivery(
        &self,
        org: &str,
        event_id: &str,
        webhook: &Webhook,
        body: &str,
    ) -> Result<String> {
        let (id, now) = (format!("msg_{}", new_id()), now_ms());
        sqlx::query(
            "INSERT INTO alert_deliveries (id, organization_id, event_id, url, secret, body, status, attempts, \
             next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7, $7)",
        )
        .bind(&id)
        .bind(org)
        .bind(event_id)
        .bind(&webhook.url)
        .bind(self.seal(&webhook.secret))
        .bind(body)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// Claims up to `limit` deliveries due now for an attempt: each is counted and put out of reach for
    /// `lease_ms` (so a dispatcher that dies mid-attempt leaves it to be retried, and two dispatchers never
    /// send it at once).
    pub async fn claim_deliveries(&self, limit: usize, lease_ms: i64) -> Result<Vec<DueDelivery>> {
        let now = now_ms();
        let rows = sqlx::query(
            "UPDATE alert_deliveries SET attempts = attempts + 1, next_attempt_at = $1, updated_at = $2 \
             WHERE id IN (SELECT id FROM alert_deliveries WHERE status = 'pending' AND next_attempt_at <= $2 \
             ORDER BY next_attempt_at LIMIT $3) AND status = 'pending' AND next_attempt_at <= $2 \
             RETURNING id, url, secret, body, attempts",
        )
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DueDelivery {
                    id: row.try_get("id")?,
                    url: row.try_get("url")?,
                    secret: self
                        .open(&row.try_get::<String, _>("secret")?)
                        .map_err(|e| e.to_string()),
                    body: row.try_get("body")?,
                    attempt: row.try_get::<i64, _>("attempts")? as u64,
                })
            })
            .collect()
    }

    /// Records an attempt's outcome: delivered, or the next attempt's time (None: the retries ran out).
    pub async fn finish_attempt(
        &self,
        id: &str,
        status_code: Option<u16>,
        error: Option<&str>,
        delivered: bool,
        retry_in_ms: Option<i64>,
    ) -> Result<()> {
        let now = now_ms();
        let status = match (delivered, retry_in_ms) {
            (true, _) => "delivered",
            (false, Some(_)) => "pending",
            (false, None) => "failed",
        };
        sqlx::query(
            "UPDATE alert_deliveries SET status = $1, last_status_code = $2, last_error = $3, \
             next_attempt_at = $4, updated_at = $5, delivered_at = $6 WHERE id = $7",
        )
        .bind(status)
        .bind(status_code.map(i64::from))
        .bind(error.map(|e| e.chars().take(500).collect::<String>()))
        .bind(now + retry_in_ms.unwrap_or(0))
        .bind(now)
        .bind(delivered.then_some(now))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The webhook deliveries of an event, oldest first.
    pub async fn deliveries(&self, org: &str, event_id: &str) -> Result<Vec<Delivery>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM alert_deliveries WHERE organization_id = $1 AND event_id = $2 \
             ORDER BY created_at, id"
        ))
        .bind(org)
        .bind(event_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// When the next pending delivery is due, if any is.
    pub async fn next_delivery_due(&self) -> Result<Option<DateTime<Utc>>> {
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM alert_deliveries WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(at.map(from_ms))
    }
}
