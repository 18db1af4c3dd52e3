"""The errors of the example's services.

Business answers (a declined card, no stock) are plain exceptions: the library does not retry
them and the step counts as not done. `ServiceUnavailableError` is a `ConnectionError`, so the
library retries it and, if it persists, counts the step as possibly done.
"""

from __future__ import annotations


class PaymentDeclinedError(Exception):
    """The customer's payment was refused (insufficient funds, card declined)."""


class InsufficientStockError(Exception):
    """Not enough stock to reserve every item of the order."""


class UnknownProductError(Exception):
    """An order names a SKU the catalog does not have."""


class ShipmentAlreadyDispatchedError(Exception):
    """The shipment left the warehouse; it can no longer be cancelled, only returned."""


class ReservationExpiredError(Exception):
    """The order's stock reservation expired (and was released) before shipping."""


class ServiceRejectedError(Exception):
    """A service refused the request for good (an injected permanent fault)."""


class ServiceUnavailableError(ConnectionError):
    """A transient failure: the call may or may not have taken effect; retry it."""
