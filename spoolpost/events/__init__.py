"""Events, from a capture call to the spool: build an event
(:mod:`~spoolpost.events.build`, stamped by :mod:`~spoolpost.events.ids` and
:mod:`~spoolpost.events.timestamps`), encode it (:mod:`~spoolpost.events.encoding`),
and hand it to the spool (:mod:`~spoolpost.events.pipeline`);
:mod:`~spoolpost.events.api` holds the PostHog-shaped capture methods (see
docs/architecture.md).

Not named ``capture``: ``spoolpost.capture`` is the module-level capture function,
as in posthog-python, and would hide a package of that name."""
