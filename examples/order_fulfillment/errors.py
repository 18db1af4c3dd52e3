"""The errors of the example's services.

Business answers given before anything was done (a declined card, no stock, an injected
rejection) derive from `ServiceRefusal`, whose `refused = True` declares them *refusals* to
saga-orchestrator: the library does not retry them, and the failed step is not compensated
because it did not act. Every other failure of a step, a bug included, may have acted and is
compensated. `ServiceUnavailableError` is a `ConnectionError`, so the library retries it and,
if it persists, compensates the step.
"""

from __future__ import annotations


class ServiceRefusal(Exception):
    """A service said no before it did anything (the services stay free of saga imports)."""

    refused = True
    """saga-orchestrator's refusal marker: a step failing with this did not act."""


class PaymentDeclinedError(ServiceRefusal):
    """The customer's payment was refused (insufficient funds, card declined)."""


class InsufficientStockError(ServiceRefusal):
    """Not enough stock to reserve every item of the order."""


class UnknownProductError(ServiceRefusal):
    """An order names a SKU the catalog does not have."""


class ShipmentAlreadyDispatchedError(Exception):
    """The shipment left the warehouse; it can no longer be cancelled, only returned."""


class ReservationExpiredError(ServiceRefusal):
    """The order's stock reservation expired (and was released) before shipping."""


class ServiceRejectedError(ServiceRefusal):
    """A service refused the request for good (an injected permanent fault)."""


class ServiceUnavailableError(ConnectionError):
    """A transient failure: the call may or may not have taken effect; retry it."""
