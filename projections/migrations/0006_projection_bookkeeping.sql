-- The projection runtime's own bookkeeping, on the read database (which may be the write
-- database). The read models' tables are created by their projections (see
-- `Projection::schema`): the same DDL makes the live tables and a rebuild's shadow tables,
-- so the two can never drift apart.

-- How far each projection has applied each raffle's stream. Written in the same transaction
-- as the read-model rows: a crash loses both or neither. `slot` is 'live' for the tables
-- readers see, 'shadow' for a rebuild's tables until they are swapped in.
CREATE TABLE projection_checkpoints
(
    projection  text        NOT NULL,
    slot        text        NOT NULL CHECK (slot IN ('live', 'shadow')),
    raffle_id   uuid        NOT NULL,
    sequence    bigint      NOT NULL CHECK (sequence >= 0),
    -- When the event at `sequence` was recorded: lag in seconds without reading the log.
    recorded_at timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, slot, raffle_id)
);

-- A (projection, raffle) that failed: what, where, and when it is tried again. Deleted when
-- a batch for it commits.
CREATE TABLE projection_failures
(
    projection      text        NOT NULL,
    raffle_id       uuid        NOT NULL,
    sequence        bigint      NOT NULL,
    error           text        NOT NULL,
    attempts        integer     NOT NULL,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL,
    PRIMARY KEY (projection, raffle_id)
);

-- Which version of each projection the live tables hold, and a rebuild in progress.
CREATE TABLE projection_versions
(
    projection     text        NOT NULL PRIMARY KEY,
    version        integer     NOT NULL,
    -- The version a rebuild is building into the shadow tables, if one is under way.
    shadow_version integer,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
