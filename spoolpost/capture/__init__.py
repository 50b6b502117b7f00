"""Capture: build an event (:mod:`~spoolpost.capture.events`, stamped by
:mod:`~spoolpost.capture.ids` and :mod:`~spoolpost.capture.timestamps`), encode it
(:mod:`~spoolpost.capture.encoding`), and hand it to the spool
(:mod:`~spoolpost.capture.pipeline`); :mod:`~spoolpost.capture.api` holds the
PostHog-shaped capture methods (see docs/architecture.md)."""
