-- Exports carry buyers' personal data, so each one is recorded: who took what, of which
-- raffle, with which filters, when it started and how it ended. The audit trail shows these
-- rows (`GET /v1/raffles/{id}/exports`, `tombola audit RAFFLE --exports`); they are never
-- updated except to record the end of the export they describe.
CREATE TABLE exports_log (
    export_id   uuid PRIMARY KEY,
    raffle_id   uuid NOT NULL,
    -- `key:<id>` for API keys, `operator:<user>` for the CLI: never a secret.
    actor       text NOT NULL,
    source      text NOT NULL CHECK (source IN ('api', 'operator')),
    what        text NOT NULL CHECK (what IN ('tickets', 'orders', 'events')),
    format      text NOT NULL CHECK (format IN ('csv', 'ndjson')),
    filters     jsonb NOT NULL DEFAULT '{}',
    request_id  text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    -- `running`, then `completed`, `aborted` (the client left) or `failed`.
    outcome     text NOT NULL DEFAULT 'running'
                CHECK (outcome IN ('running', 'completed', 'aborted', 'failed')),
    bytes       bigint
);
CREATE INDEX exports_log_by_raffle ON exports_log (raffle_id, started_at, export_id);
