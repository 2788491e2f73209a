-- audit_index v4 (decision 0029) keeps its entries in read_audit_events and one table per key
-- kind; nothing reads v3's single table any more. Its rows are rebuilt from the log into the
-- new tables at start-up, so dropping it loses nothing.
DROP TABLE IF EXISTS read_audit_index;
