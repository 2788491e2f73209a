-- The order an event is about (NULL for raffle-wide events): lets an order's buyer and
-- payments be read back without scanning the stream. postgres-es ignores the column.
ALTER TABLE events ADD COLUMN order_id uuid;
CREATE INDEX events_order ON events (order_id) WHERE order_id IS NOT NULL;

-- API keys: only a SHA-256 of the secret is kept (the secret is 256 random bits, so a
-- slow hash adds nothing).
CREATE TABLE api_keys
(
    key_id       uuid PRIMARY KEY,
    secret_hash  bytea       NOT NULL,
    role         text        NOT NULL CHECK (role IN ('admin', 'organizer', 'client')),
    organizer_id text,
    label        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    CHECK (role = 'admin' OR organizer_id IS NOT NULL)
);
