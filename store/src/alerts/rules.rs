//! Alert rules created, read, changed and deleted; a rule's webhook secrets are sealed at rest.

use super::*;
use crate::changes::{ChangeKind, Changed};

impl Store {
    /// The rule's values and references: material and supplier scopes must be the organization's.
    async fn check_rule(&self, org: &str, rule: &AlertRule) -> Result<()> {
        let mut e = FieldErrors::default();
        e.text("name", &rule.name, 200);
        if rule.cooldown_seconds > MAX_COOLDOWN_SECONDS {
            e.add("cooldown_seconds", "at most 315360000 (ten years)");
        }
        rule.scope.check(&mut e);
        rule.condition.check(&mut e);
        for c in &rule.channels {
            c.check(&mut e);
        }
        if rule.condition.watches_model().is_some() && !rule.scope.is_everything() {
            e.add(
                "scope",
                "a model monitoring rule watches a model, not prices: leave the scope empty",
            );
        }
        if matches!(rule.condition, Condition::Sourcing { .. }) && !rule.scope.is_everything() {
            e.add(
                "scope",
                "a sourcing rule watches the organization's RFQs: leave the scope empty",
            );
        }
        if let Condition::ForecastChange { .. } = rule.condition {
            if rule.scope.supplier_id.is_some() {
                e.add(
                    "scope",
                    "a forecast rule watches materials: scope it to a material, a category or all",
                );
            }
        }
        e.into_result()?;
        for (table, field, id) in [
            ("materials", "scope.material_id", &rule.scope.material_id),
            ("suppliers", "scope.supplier_id", &rule.scope.supplier_id),
        ] {
            if let Some(id) = id {
                let found: Option<String> = sqlx::query_scalar(&format!(
                    "SELECT id FROM {table} WHERE organization_id = $1 AND id = $2"
                ))
                .bind(org)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                if found.is_none() {
                    return Err(StoreError::Invalid(FieldErrors::one(
                        field,
                        format!("no such {} in the organization", &table[..table.len() - 1]),
                    )));
                }
            }
        }
        Ok(())
    }

    pub async fn create_alert_rule(&self, org: &str, new: NewAlertRule) -> Result<AlertRule> {
        let now = from_ms(now_ms());
        let rule = AlertRule {
            id: new_id(),
            name: new.name,
            scope: new.scope,
            condition: new.condition,
            severity: new.severity.unwrap_or(Severity::Medium),
            cooldown_seconds: new.cooldown_seconds.unwrap_or(3600),
            enabled: new.enabled.unwrap_or(true),
            channels: new.channels.unwrap_or_else(|| vec![Channel::Websocket]),
            created_at: now,
            updated_at: now,
        };
        self.check_rule(org, &rule).await?;
        let v = values(&rule, |secret| self.seal(secret));
        let mut tx = self.write_tx().await?;
        sqlx::query(&format!(
            "INSERT INTO alert_rules ({RULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(&rule.id)
        .bind(org)
        .bind(&rule.name)
        .bind(v.scope_kind)
        .bind(v.scope_value)
        .bind(v.condition)
        .bind(v.channels)
        .bind(rule.severity.as_str())
        .bind(rule.cooldown_seconds.min(i64::MAX as u64) as i64)
        .bind(rule.enabled as i64)
        .bind(now.timestamp_millis())
        .bind(now.timestamp_millis())
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::from_write(e, "an alert rule of this name exists"))?;
        self.record_change(&mut tx, Changed::of(ChangeKind::Rules, Some(org), &rule.id))
            .await?;
        tx.commit().await?;
        Ok(rule)
    }

    pub async fn alert_rule(&self, org: &str, id: &str) -> Result<AlertRule> {
        let owned: OwnedRule = sqlx::query_as(&format!(
            "SELECT {RULE_COLUMNS} FROM alert_rules WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("alert rule"))?;
        Ok(self.opened(owned)?.rule)
    }

    /// A rule as read, its webhook secrets opened.
    fn opened(&self, mut owned: OwnedRule) -> Result<OwnedRule> {
        for channel in &mut owned.rule.channels {
            if let Channel::Webhook(w) = channel {
                w.secret = self.open(&w.secret)?;
            }
        }
        Ok(owned)
    }

    /// Rewrites every stored secret not sealed with the current key (sealed with an older one, or stored
    /// before secrets were sealed): after a key rotation, or the first start with sealing. Answers how many
    /// were rewritten.
    pub async fn reseal_secrets(&self) -> Result<u64> {
        let Some(sealer) = self.sealer.clone() else {
            return Ok(0);
        };
        let mut rewritten = 0;
        let rules: Vec<(String, String)> =
            sqlx::query_as("SELECT id, channels FROM alert_rules ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        for (id, text) in rules {
            let mut channels = json(&text);
            let mut changed = false;
            for c in channels.as_array_mut().into_iter().flatten() {
                if let Some(secret) = c.pointer_mut("/webhook/secret") {
                    let stored = secret.as_str().unwrap_or_default().to_string();
                    if !sealer.is_current(&stored) {
                        *secret = serde_json::Value::String(sealer.seal(&sealer.open(&stored)?));
                        changed = true;
                    }
                }
            }
            if changed {
                sqlx::query("UPDATE alert_rules SET channels = $1 WHERE id = $2")
                    .bind(channels.to_string())
                    .bind(&id)
                    .execute(&self.pool)
                    .await?;
                rewritten += 1;
            }
        }
        let deliveries: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, secret FROM alert_deliveries WHERE status = 'pending' ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        for (id, stored) in deliveries {
            if !sealer.is_current(&stored) {
                sqlx::query("UPDATE alert_deliveries SET secret = $1 WHERE id = $2")
                    .bind(sealer.seal(&sealer.open(&stored)?))
                    .bind(&id)
                    .execute(&self.pool)
                    .await?;
                rewritten += 1;
            }
        }
        Ok(rewritten)
    }

    pub async fn alert_rules(&self, org: &str, page: &ListParams) -> Result<Listed<AlertRule>> {
        let mut wher = Sql::new(" WHERE organization_id = ");
        wher.bind(Value::Text(Some(org.into())));
        let listed: Listed<OwnedRule> = self
            .list(
                "alert_rules",
                RULE_COLUMNS,
                wher,
                " ORDER BY created_at, id",
                page,
            )
            .await?;
        Ok(Listed {
            items: listed
                .items
                .into_iter()
                .map(|o| self.opened(o).map(|o| o.rule))
                .collect::<Result<_>>()?,
            has_more: listed.has_more,
            total: listed.total,
            limit: listed.limit,
            offset: listed.offset,
        })
    }

    /// Every organization's rules (how the server builds its index at start).
    pub async fn all_alert_rules(&self) -> Result<Vec<OwnedRule>> {
        let rules: Vec<OwnedRule> = sqlx::query_as(&format!(
            "SELECT {RULE_COLUMNS} FROM alert_rules ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rules.into_iter().map(|o| self.opened(o)).collect()
    }

    pub async fn update_alert_rule(
        &self,
        org: &str,
        id: &str,
        patch: AlertRulePatch,
    ) -> Result<AlertRule> {
        let mut rule = self.alert_rule(org, id).await?;
        if let Some(v) = patch.name {
            rule.name = v;
        }
        if let Some(v) = patch.scope {
            rule.scope = v;
        }
        if let Some(v) = patch.condition {
            rule.condition = v;
        }
        if let Some(v) = patch.severity {
            rule.severity = v;
        }
        if let Some(v) = patch.cooldown_seconds {
            rule.cooldown_seconds = v;
        }
        if let Some(v) = patch.enabled {
            rule.enabled = v;
        }
        if let Some(v) = patch.channels {
            rule.channels = v;
        }
        self.check_rule(org, &rule).await?;
        let v = values(&rule, |secret| self.seal(secret));
        let mut tx = self.write_tx().await?;
        self.update(
            &mut tx,
            ("alert_rules", "alert rule"),
            org,
            id,
            vec![
                ("name", Value::Text(Some(rule.name.clone()))),
                ("scope_kind", Value::Text(Some(v.scope_kind.into()))),
                ("scope_value", Value::Text(v.scope_value)),
                ("condition", Value::Text(Some(v.condition))),
                ("channels", Value::Text(Some(v.channels))),
                ("severity", Value::Text(Some(rule.severity.as_str().into()))),
                (
                    "cooldown_seconds",
                    Value::Int(rule.cooldown_seconds.min(i64::MAX as u64) as i64),
                ),
                ("enabled", Value::Int(rule.enabled as i64)),
            ],
            "an alert rule of this name exists",
        )
        .await?;
        self.record_change(&mut tx, Changed::of(ChangeKind::Rules, Some(org), id))
            .await?;
        tx.commit().await?;
        self.alert_rule(org, id).await
    }

    pub async fn delete_alert_rule(&self, org: &str, id: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        // Children first: SQLite enforces the foreign keys but cascades only with its pragma on.
        sqlx::query("DELETE FROM alert_subjects WHERE rule_id IN (SELECT id FROM alert_rules WHERE organization_id = $1 AND id = $2)")
            .bind(org)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM alert_events WHERE organization_id = $1 AND rule_id = $2")
            .bind(org)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM alert_rules WHERE organization_id = $1 AND id = $2")
            .bind(org)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("alert rule"));
        }
        self.record_change(&mut tx, Changed::of(ChangeKind::Rules, Some(org), id))
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
