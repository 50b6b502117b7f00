-- spoolpost spool schema, version 1.
-- Applied by spoolpost.migrations inside one BEGIN IMMEDIATE transaction and
-- recorded in schema_migrations and PRAGMA user_version.
--
-- The capture path is one INSERT into `events`. Nothing else is written on
-- that path: the table has no index that a new row enters (every index below is
-- partial and excludes fresh rows), so a commit dirties as few pages as possible.

-- Who the spool belongs to (host, API-key fingerprint).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Persisted totals: delivered, dead, dropped, filtered, ...
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Events waiting for delivery. `body` holds the encoded event JSON exactly as
-- it is sent; times are wall-clock UTC seconds (time.time()).
CREATE TABLE events (
    id               INTEGER PRIMARY KEY,   -- capture order
    uuid             TEXT    NOT NULL,
    body             BLOB    NOT NULL,
    size             INTEGER NOT NULL,      -- bytes of body
    captured_at      REAL    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'leased')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL    NOT NULL,
    lease_token      TEXT,
    lease_expires_at REAL,
    last_error       TEXT,
    first_failed_at  REAL,
    last_failed_at   REAL
);

-- Retried events waiting out their backoff, by due time.
CREATE INDEX events_retry ON events (next_attempt_at) WHERE attempts > 0 AND state = 'pending';
-- A lease's rows, for acks, reschedules and lease recovery.
CREATE INDEX events_lease ON events (lease_token) WHERE lease_token IS NOT NULL;

-- Dead letters: events the endpoint rejected or that ran out of attempts or age.
CREATE TABLE dead_events (
    id              INTEGER PRIMARY KEY,
    event_id        INTEGER NOT NULL,       -- its id in `events`
    uuid            TEXT    NOT NULL,
    body            BLOB    NOT NULL,
    size            INTEGER NOT NULL,
    captured_at     REAL    NOT NULL,
    attempts        INTEGER NOT NULL,
    reason          TEXT    NOT NULL,       -- too_large, rejected, max_attempts, expired
    status          INTEGER,                -- the HTTP status, when there was one
    detail          TEXT,                   -- a body excerpt or error text
    first_failed_at REAL,
    last_failed_at  REAL,
    dead_at         REAL    NOT NULL
);
CREATE INDEX dead_events_event_id ON dead_events (event_id);

-- One row per live lease: who holds it, until when.
CREATE TABLE leases (
    token       TEXT PRIMARY KEY,
    host        TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    pid_start   TEXT    NOT NULL,           -- process start time, tells a reused pid apart
    created_at  REAL    NOT NULL,
    expires_at  REAL    NOT NULL
) WITHOUT ROWID;
