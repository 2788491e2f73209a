-- Snapshots are already compact binary: compressing them only costs the database CPU.
ALTER TABLE raffle_snapshots ALTER COLUMN payload SET STORAGE EXTERNAL;
