-- How the anomaly model judged each observation when it was ingested or corrected: the score (NULL: not
-- scored, e.g. too little history before it), the severity when flagged (low, medium, high; NULL when not),
-- and the model version that scored it (name:version), so a score can be read against its thresholds.
ALTER TABLE prices ADD COLUMN anomaly_score DOUBLE PRECISION;
ALTER TABLE prices ADD COLUMN anomaly_severity TEXT CHECK (anomaly_severity IN ('low', 'medium', 'high'));
ALTER TABLE prices ADD COLUMN anomaly_model TEXT;
