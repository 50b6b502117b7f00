-- spoolpost spool schema, version 3: the lane an event is delivered on.
--
-- posthog-python 7.x's capture_ai() sends AI events to PostHog's dedicated
-- endpoint, POST /i/v0/ai/batch/, never to /batch or the v1 endpoint. The spool
-- keeps them in the same table; `lane` says where a row goes: NULL for the
-- analytics lane (capture(), the endpoint of the capture mode) and 'ai' for
-- capture_ai(). A claim never mixes lanes in one batch. Nullable with no
-- default, so adding the column rewrites no row. A dead letter keeps its lane,
-- so that a replay sends it where it belongs.
ALTER TABLE events ADD COLUMN lane TEXT;
ALTER TABLE dead_events ADD COLUMN lane TEXT;
