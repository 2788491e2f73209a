-- A rebuild's shadow tables get their secondary indexes only once they are full (decision
-- 0014): whether they have them yet, so that a resumed rebuild builds them exactly once.
ALTER TABLE projection_versions ADD COLUMN shadow_indexed boolean NOT NULL DEFAULT false;
