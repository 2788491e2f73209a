-- Outbound webhooks (decision 0016). Endpoints and their health are shared by every node:
-- the circuit, the 5-day failure rule and the rate limit hold across nodes because they
-- live here, not in one process. Messages are written by the `webhooks_outbox` subscriber
-- in the same transaction as its checkpoint; deliveries (one per endpoint and message) are
-- claimed by the workers with leases.
CREATE TABLE webhook_endpoints
(
    endpoint_id                uuid PRIMARY KEY,
    -- NULL: an admin's endpoint, for every organizer's raffles.
    organizer_id               text,
    url                        text        NOT NULL,
    description                text        NOT NULL DEFAULT '',
    -- Empty: every type.
    event_types                text[]      NOT NULL DEFAULT '{}',
    raffle_id                  uuid,
    enabled                    boolean     NOT NULL DEFAULT true,
    disabled_reason            text,
    rate_limit_per_sec         integer CHECK (rate_limit_per_sec > 0),
    secret                     text        NOT NULL,
    previous_secret            text,
    previous_secret_expires_at timestamptz,
    created_at                 timestamptz NOT NULL,
    updated_at                 timestamptz NOT NULL,
    -- Health: failures in a row, since when it has failed without a success, the circuit.
    consecutive_failures       integer     NOT NULL DEFAULT 0,
    failing_since              timestamptz,
    circuit_open_until         timestamptz,
    circuit_opened             integer     NOT NULL DEFAULT 0,
    -- The rate limit's theoretical arrival time (GCRA): the next send is allowed from then.
    rate_tat                   timestamptz
);
CREATE INDEX webhook_endpoints_organizer ON webhook_endpoints (organizer_id);

CREATE TABLE webhook_messages
(
    msg_id      text PRIMARY KEY,
    raffle_id   uuid        NOT NULL,
    sequence    bigint      NOT NULL,
    event_type  text        NOT NULL,
    order_id    uuid,
    -- The exact body sent (and signed).
    payload     text        NOT NULL,
    -- When the event that made it was committed.
    recorded_at timestamptz NOT NULL
);

CREATE TABLE webhook_deliveries
(
    endpoint_id     uuid        NOT NULL REFERENCES webhook_endpoints ON DELETE CASCADE,
    msg_id          text        NOT NULL REFERENCES webhook_messages,
    raffle_id       uuid        NOT NULL,
    -- Deliveries of one (endpoint, raffle, order_key) go out in sequence order; the key is
    -- the order id, or the raffle id for raffle-wide messages.
    order_key       uuid        NOT NULL,
    sequence        bigint      NOT NULL,
    event_type      text        NOT NULL,
    -- pending (to send or retry), succeeded, dead (dead-lettered after the last attempt).
    status          text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    lease_until     timestamptz,
    leased_by       uuid,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (endpoint_id, msg_id)
) WITH (fillfactor = 70);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (endpoint_id, raffle_id, order_key, sequence)
    WHERE status = 'pending';
-- Leased deliveries, for an endpoint's attempts in flight (leases are cleared on settling).
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (endpoint_id) WHERE lease_until IS NOT NULL;
CREATE INDEX webhook_deliveries_listing ON webhook_deliveries (endpoint_id, created_at DESC);

-- The delivery streams' last sequences (`events` rows of aggregate type `webhook_delivery`,
-- one stream per raffle): the row lock orders concurrent appends to one stream.
CREATE TABLE webhook_streams
(
    raffle_id     uuid PRIMARY KEY,
    last_sequence bigint NOT NULL
);

-- A message's attempts, read back from its raffle's delivery stream.
CREATE INDEX events_webhook_message ON events ((payload ->> 'msg_id'))
    WHERE aggregate_type = 'webhook_delivery';
