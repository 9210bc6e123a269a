-- A model's traffic policy as JSON: {"split": [[version, percent], ...], "shadow": version | null}.
ALTER TABLE model_policies ADD COLUMN traffic TEXT;
