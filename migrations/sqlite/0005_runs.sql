-- Every serving process's run: when it started and, after a clean shutdown, when it stopped and
-- how many of the reservations it took were never settled (0 unless a settlement was lost).
-- `tollgate ledger verify` reports a run that stopped with unsettled requests as a problem, and
-- counts runs with no recorded stop (still running, or killed).
CREATE TABLE runs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at_ms   INTEGER NOT NULL,
    stopped_at_ms   INTEGER,
    unsettled       INTEGER
);
