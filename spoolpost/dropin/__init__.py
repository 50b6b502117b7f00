"""The drop-in for posthog-python: :class:`Posthog`, with posthog-python 7.x's
constructor and lenient call behaviour, over a strict :class:`~spoolpost.client.Client`.

``settings.py`` says what each posthog-python option means here, ``report.py`` tells
``on_error`` and counts what could not be stored, ``posthog.py`` is the class.
"""

from spoolpost.dropin.posthog import Posthog
from spoolpost.dropin.report import DeliveryInterrupted, EventsNotStored, EventsRejected

__all__ = ["DeliveryInterrupted", "EventsNotStored", "EventsRejected", "Posthog"]
