-- Key lifecycle: when a key was last used (to spot unused keys before revoking them), and
-- `revoked_at` may lie in the future: a rotated key keeps working until its grace period
-- ends. Recorded at most once a minute per key and node, off the request path.
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;
ALTER TABLE api_keys ADD COLUMN replaced_by uuid REFERENCES api_keys (key_id);
