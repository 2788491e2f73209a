-- The row-lock approach `tombola-bench hot|many` compares Tombola with: how raffle platforms
-- commonly sell numbers today. One row per ticket; a reservation is one call of
-- rowlock_reserve in its own transaction (synchronous_commit as the server has it).
--   * random picks: a partial index over free tickets, `LIMIT n FOR UPDATE SKIP LOCKED`
--     from a random starting number (so concurrent buyers do not queue on the same rows and
--     the scan does not walk the dead index entries of numbers sold at the front);
--   * explicit picks: the wanted rows locked in number order (no deadlocks), then one
--     conditional UPDATE only if every one is free or its hold has expired;
--   * holds expire by the same column: reservations treat an expired hold as free, and
--     rowlock_expire_holds() (run every second by the bench server) frees them for good.
-- Orders are a row each (buyer e-mail and amount), as Tombola's events carry them.

CREATE TABLE IF NOT EXISTS rowlock_tickets (
    raffle_id int NOT NULL,
    number int NOT NULL,
    status smallint NOT NULL DEFAULT 0, -- 0 free, 1 held, 2 sold
    order_id uuid,
    hold_expires_at timestamptz,
    PRIMARY KEY (raffle_id, number)
);

CREATE TABLE IF NOT EXISTS rowlock_orders (
    order_id uuid PRIMARY KEY,
    raffle_id int NOT NULL,
    email text NOT NULL,
    amount_minor bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Built after the bulk fill (see rowlock_indexes below), not here.
CREATE OR REPLACE FUNCTION rowlock_indexes() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    CREATE INDEX IF NOT EXISTS rowlock_free ON rowlock_tickets (raffle_id, number) WHERE status = 0;
    CREATE INDEX IF NOT EXISTS rowlock_by_order ON rowlock_tickets (order_id) WHERE order_id IS NOT NULL;
    CREATE INDEX IF NOT EXISTS rowlock_holds ON rowlock_tickets (hold_expires_at) WHERE status = 1;
END $$;

-- Reserves `quantity` random free numbers, or exactly `wanted`; returns the numbers held,
-- or an empty array (nothing changed) when there are not enough / one is taken.
CREATE OR REPLACE FUNCTION rowlock_reserve(
    p_raffle int, p_order uuid, p_email text, p_price bigint, p_tickets int,
    p_quantity int, p_wanted int[], p_hold interval
) RETURNS int[] LANGUAGE plpgsql AS $$
DECLARE
    picked int[];
    from_number int;
    free_count int;
BEGIN
    IF p_wanted IS NULL THEN
        from_number := 1 + floor(random() * p_tickets)::int;
        SELECT array_agg(number) INTO picked FROM (
            SELECT number FROM rowlock_tickets
             WHERE raffle_id = p_raffle AND status = 0 AND number >= from_number
             ORDER BY number LIMIT p_quantity FOR UPDATE SKIP LOCKED) s;
        IF coalesce(cardinality(picked), 0) < p_quantity THEN
            -- Wrapped around: the rest from the front.
            SELECT array_agg(number) INTO picked FROM (
                SELECT number FROM rowlock_tickets
                 WHERE raffle_id = p_raffle AND status = 0
                 ORDER BY number LIMIT p_quantity FOR UPDATE SKIP LOCKED) s;
        END IF;
        IF coalesce(cardinality(picked), 0) < p_quantity THEN
            RETURN '{}';
        END IF;
    ELSE
        SELECT count(*) INTO free_count FROM (
            SELECT number FROM rowlock_tickets
             WHERE raffle_id = p_raffle AND number = ANY (p_wanted)
               AND (status = 0 OR (status = 1 AND hold_expires_at < now()))
             ORDER BY number FOR UPDATE) s;
        IF free_count < cardinality(p_wanted) THEN
            RETURN '{}';
        END IF;
        picked := p_wanted;
    END IF;
    UPDATE rowlock_tickets
       SET status = 1, order_id = p_order, hold_expires_at = now() + p_hold
     WHERE raffle_id = p_raffle AND number = ANY (picked);
    INSERT INTO rowlock_orders (order_id, raffle_id, email, amount_minor)
    VALUES (p_order, p_raffle, p_email, p_price * cardinality(picked));
    RETURN picked;
END $$;

-- Pays a held order: its numbers become sold. Returns how many.
CREATE OR REPLACE FUNCTION rowlock_pay(p_order uuid) RETURNS int LANGUAGE sql AS $$
    WITH sold AS (
        UPDATE rowlock_tickets SET status = 2, hold_expires_at = NULL
         WHERE order_id = p_order AND status = 1 RETURNING 1)
    SELECT count(*)::int FROM sold;
$$;

-- Releases a held order's numbers.
CREATE OR REPLACE FUNCTION rowlock_release(p_order uuid) RETURNS int LANGUAGE sql AS $$
    WITH freed AS (
        UPDATE rowlock_tickets SET status = 0, order_id = NULL, hold_expires_at = NULL
         WHERE order_id = p_order AND status = 1 RETURNING 1)
    SELECT count(*)::int FROM freed;
$$;

-- Frees every hold that has expired; returns how many numbers.
CREATE OR REPLACE FUNCTION rowlock_expire_holds() RETURNS int LANGUAGE sql AS $$
    WITH freed AS (
        UPDATE rowlock_tickets SET status = 0, order_id = NULL, hold_expires_at = NULL
         WHERE status = 1 AND hold_expires_at < now() RETURNING 1)
    SELECT count(*)::int FROM freed;
$$;
