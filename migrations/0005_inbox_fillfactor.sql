-- Every inbox row is updated once, when it is settled. With full pages the new version went
-- to another page: the whole ~1 kB row was written to the WAL again and a second page was
-- dirtied. With room on the page the new version stays beside the old one, and the WAL
-- record carries only the changed tail of the row. The price: once vacuum has removed the
-- old versions, pages stay about half full (new rows do not fill them past half), so the
-- table is about twice as large as a packed one.
ALTER TABLE payment_inbox SET (fillfactor = 50);
