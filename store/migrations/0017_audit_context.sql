-- Who acted from where: the actor's kind (key, user, system), the client's address and user agent, and
-- the request id that finds the request's log lines. NULL on rows recorded before these were kept.
ALTER TABLE audit_events ADD COLUMN actor_type TEXT;
ALTER TABLE audit_events ADD COLUMN ip TEXT;
ALTER TABLE audit_events ADD COLUMN user_agent TEXT;
ALTER TABLE audit_events ADD COLUMN request_id TEXT;
-- Retention deletes by age across organizations.
CREATE INDEX audit_events_at ON audit_events (at);
