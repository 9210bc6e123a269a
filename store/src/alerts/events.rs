//! Breaches recorded as events (one per rule and subject within the cooldown), events read and moved
//! through their states.

use super::*;

impl Store {
    /// Records a breach: opens an event when the rule's last event for this subject opened at least
    /// `cooldown_seconds` ago (or never), else folds the breach into that event. Returns the event opened, if
    /// one was. The decision is one conditional upsert, so replicas racing on one subject open one event.
    /// `now` is the time the breach is judged at.
    pub async fn record_breach(
        &self,
        org: &str,
        breach: &Breach,
        cooldown_seconds: u64,
        now: DateTime<Utc>,
    ) -> Result<Option<AlertEvent>> {
        let now = now.timestamp_millis();
        let cutoff =
            now.saturating_sub((cooldown_seconds.min(i64::MAX as u64 / 1000) * 1000) as i64);
        let id = new_id();
        let subject = breach.subject();
        let mut tx = self.write_tx().await?;
        let won: Option<String> = sqlx::query_scalar(
            "INSERT INTO alert_subjects (rule_id, subject, event_id, opened_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (rule_id, subject) DO UPDATE SET event_id = excluded.event_id, opened_at = excluded.opened_at \
             WHERE alert_subjects.opened_at <= $5 RETURNING event_id",
        )
        .bind(&breach.rule_id)
        .bind(&subject)
        .bind(&id)
        .bind(now)
        .bind(cutoff)
        .fetch_optional(&mut *tx)
        .await?;
        if won.is_none() {
            // Inside the cooldown: the breach counts on the event that opened it.
            sqlx::query(
                "UPDATE alert_events SET breach_count = breach_count + $1, last_value = $2, updated_at = $3 \
                 WHERE id = (SELECT event_id FROM alert_subjects WHERE rule_id = $4 AND subject = $5)",
            )
            .bind(breach.count as i64)
            .bind(breach.value)
            .bind(now)
            .bind(&breach.rule_id)
            .bind(&subject)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(None);
        }
        sqlx::query(&format!(
            "INSERT INTO alert_events ({EVENT_COLUMNS}, organization_id, subject) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'open', $10, $11, $12, $12, NULL, NULL, $13, $14)"
        ))
        .bind(&id)
        .bind(&breach.rule_id)
        .bind(&breach.material_id)
        .bind(&breach.supplier_id)
        .bind(&breach.price_id)
        .bind(breach.value)
        .bind(breach.threshold)
        .bind(&breach.message)
        .bind(breach.severity.as_str())
        .bind(breach.count as i64)
        .bind(breach.value)
        .bind(now)
        .bind(org)
        .bind(&subject)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.alert_event(org, &id).await.map(Some)
    }

    pub async fn alert_event(&self, org: &str, id: &str) -> Result<AlertEvent> {
        sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM alert_events WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("alert event"))
    }

    /// Events newest first, by status, rule, material, supplier and time opened.
    pub async fn alert_events(
        &self,
        org: &str,
        query: &EventQuery,
        page: &ListParams,
    ) -> Result<Listed<AlertEvent>> {
        let mut wher = Sql::new(" WHERE organization_id = ");
        wher.bind(Value::Text(Some(org.into())));
        for (column, value) in [
            ("status", query.status.map(|s| s.as_str().to_string())),
            ("rule_id", query.rule_id.clone()),
            ("material_id", query.material_id.clone()),
            ("supplier_id", query.supplier_id.clone()),
        ] {
            if let Some(v) = value {
                wher.push(&format!(" AND {column} = "))
                    .bind(Value::Text(Some(v)));
            }
        }
        if let Some(t) = query.from {
            wher.push(" AND opened_at >= ")
                .bind(Value::Int(t.timestamp_millis()));
        }
        if let Some(t) = query.to {
            wher.push(" AND opened_at < ")
                .bind(Value::Int(t.timestamp_millis()));
        }
        self.list(
            "alert_events",
            EVENT_COLUMNS,
            wher,
            " ORDER BY opened_at DESC, id DESC",
            page,
        )
        .await
    }

    /// Acknowledges or resolves an event; a resolved event is final (409), and acknowledging an acknowledged
    /// one is a no-op.
    pub async fn set_alert_event_status(
        &self,
        org: &str,
        id: &str,
        status: EventStatus,
    ) -> Result<AlertEvent> {
        let now = now_ms();
        let column = match status {
            EventStatus::Acknowledged => "acknowledged_at",
            EventStatus::Resolved => "resolved_at",
            EventStatus::Open => {
                return Err(StoreError::Conflict("an event cannot be reopened".into()))
            }
        };
        let done = sqlx::query(&format!(
            "UPDATE alert_events SET status = $1, {column} = $2, updated_at = $2 \
             WHERE organization_id = $3 AND id = $4 AND status <> 'resolved'"
        ))
        .bind(status.as_str())
        .bind(now)
        .bind(org)
        .bind(id)
        .execute(&self.pool)
        .await?;
        let event = self.alert_event(org, id).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "the event was resolved at {}",
                event.resolved_at.unwrap_or_default().to_rfc3339()
            )));
        }
        Ok(event)
    }
}
