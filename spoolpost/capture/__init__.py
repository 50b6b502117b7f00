"""Capture: build an event, encode it, and hand it to the spool (see
docs/architecture.md)."""
