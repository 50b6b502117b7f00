-- spoolpost spool schema, version 2: the identity of a PostHog v1 request, kept
-- with the rows it carries so that a retry (after a restart too) keeps it.
--
-- PostHog's v1 capture protocol (POST /i/v1/analytics/events) asks that a
-- retried request keep its PostHog-Request-Id and its body's created_at, and
-- count PostHog-Attempt 1, 2, 3 (posthog-python 7.x, posthog/capture_v1.py).
-- The three columns are NULL until a row is first sent under v1, and nullable
-- with no default, so adding them rewrites no row and the capture INSERT is
-- unchanged. A claim keeps the rows of one stored request together and alone.
ALTER TABLE events ADD COLUMN request_id TEXT;           -- PostHog-Request-Id (a uuid)
ALTER TABLE events ADD COLUMN request_created_at TEXT;   -- the body's created_at (RFC 3339)
ALTER TABLE events ADD COLUMN request_attempts INTEGER;  -- v1 requests that carried the row
