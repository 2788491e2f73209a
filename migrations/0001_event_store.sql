-- The event log, in postgres-es's layout so its PostgresEventRepository reads every stream.
-- `payload` and `metadata` are `json` (not `jsonb`): json keeps the exact text, which the
-- hash chain covers.
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- postgres-es's own snapshot table (JSON), used by cqrs-es's framework (benchmark baseline).
CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- Tombola's engine snapshots: the compact binary encoding of tombola-domain, one row per
-- raffle, replaced as the stream grows. `last_hash` continues the hash chain after a load.
CREATE TABLE raffle_snapshots
(
    raffle_id     uuid PRIMARY KEY,
    last_sequence bigint      NOT NULL CHECK (last_sequence >= 0),
    last_hash     text        NOT NULL,
    format        smallint    NOT NULL,
    payload       bytea       NOT NULL,
    taken_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per raffle, written in the same transaction as the events that create it or
-- change its status (not on every batch: the hot path stays one insert): lets the engine
-- re-arm hold timers at start-up and the API list and scope raffles without loading them.
CREATE TABLE raffles
(
    raffle_id     uuid PRIMARY KEY,
    organizer_id  text        NOT NULL,
    title         text        NOT NULL,
    status        text        NOT NULL,
    status_sequence bigint    NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX raffles_status ON raffles (status);
CREATE INDEX raffles_organizer ON raffles (organizer_id);

-- Idempotency-Key records: stored with the events they produced, in the same transaction.
CREATE TABLE idempotency_keys
(
    scope        text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    raffle_id    uuid        NOT NULL,
    response     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
