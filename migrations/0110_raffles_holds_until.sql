-- When a raffle's last live hold ends (NULL: no hold), written with the batch that changes
-- its status or lets the last hold of a raffle off sale go. Start-up loads every raffle on
-- sale and every other one with this set, so that holds left live when sales closed still
-- expire after a restart (chaos finding C, docs/RELIABILITY.md).
ALTER TABLE raffles ADD COLUMN holds_until timestamptz;

-- Raffles closed before this column existed may have live holds: mark them all. A node that
-- loads one and finds no hold clears the mark, so each is loaded once more at most.
UPDATE raffles SET holds_until = updated_at WHERE status <> 'on_sale' AND status <> 'draft';

CREATE INDEX raffles_off_sale_with_holds ON raffles (raffle_id)
    WHERE holds_until IS NOT NULL AND status <> 'on_sale';
