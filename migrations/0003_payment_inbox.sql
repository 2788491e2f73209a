-- Verified provider deliveries, stored before they are answered. The primary key collapses
-- duplicate deliveries; workers take rows with FOR UPDATE SKIP LOCKED.
CREATE TABLE payment_inbox
(
    provider        text        NOT NULL,
    event_id        text        NOT NULL,
    event_type      text        NOT NULL,
    payload         json        NOT NULL,
    -- What the delivery is about, when it says so (refunds find their order through it).
    payment_id      text,
    raffle_id       uuid,
    order_id        uuid,
    status          text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'done', 'ignored', 'rejected', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    outcome         text,
    received_at     timestamptz NOT NULL DEFAULT now(),
    processed_at    timestamptz,
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX payment_inbox_due ON payment_inbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX payment_inbox_payment ON payment_inbox (provider, payment_id) WHERE payment_id IS NOT NULL;
CREATE INDEX payment_inbox_failed ON payment_inbox (received_at) WHERE status IN ('failed', 'rejected');
