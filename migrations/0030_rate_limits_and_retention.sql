-- Rate limits shared by every node (src/limits/): one row per limited subject (API key or
-- client IP) and route class. `tat` is GCRA's theoretical arrival time, in seconds since the
-- Unix epoch: the bucket is full when tat <= now, empty when tat >= now + burst/rate. A node
-- leases a few tokens at a time by moving tat forward; rows of full buckets are deleted by
-- the retention task (a missing row is a full bucket).
CREATE TABLE rate_limit_buckets
(
    bucket     text             PRIMARY KEY,
    tat        double precision NOT NULL,
    -- Tokens the last lease granted (0: refused), returned by the lease statement.
    granted    integer          NOT NULL
);
-- A hot bucket's row is updated on every lease: room on the page, and no index on the
-- changing columns, keep those updates HOT (no index writes). Retention scans the table,
-- which holds only the subjects active in the last minute or so.
ALTER TABLE rate_limit_buckets SET (fillfactor = 70);

-- Retention (src/retention.rs) deletes settled inbox rows by age in small batches. Rows
-- arrive in received_at order, so a BRIN index finds the old ones at a few pages' cost and
-- adds almost nothing to the intake's inserts (a B-tree would add a page write per row).
CREATE INDEX payment_inbox_received_brin ON payment_inbox USING brin (received_at);

-- What retention keeps of a pruned delivery: which order a payment id paid for. A refund
-- may come months later and rarely names the order; the payload (with the buyer's email)
-- goes, this mapping stays.
CREATE TABLE payment_orders
(
    provider   text NOT NULL,
    payment_id text NOT NULL,
    raffle_id  uuid NOT NULL,
    order_id   uuid NOT NULL,
    PRIMARY KEY (provider, payment_id)
);
