"""The errors of the example's services.

Business answers given before anything was done (a declined card, no stock, an injected
rejection) derive from `ServiceRefusal`, whose `refused = True` declares them *refusals* to
saga-orchestrator: the library does not retry them, and the failed step is not compensated
because it did not act. Every other failure of a step, a bug included, may have acted and is
compensated. `ServiceUnavailableError` is a `ConnectionError`, so the library retries it and,
if it persists, compensates the step. `StaleCallError` is neither: see its docstring.
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


class StaleCallError(Exception):
    """A call carried a fencing token lower than one the service already saw for its order and
    saga: it comes from a process that lost the saga to another one (frozen past its lease,
    then woken up). The service refused it and did nothing.

    Deliberately *not* a `ServiceRefusal`. A refusal tells saga-orchestrator that the *step*
    did not act, so the step would be recorded as not done and left uncompensated. That is
    true of this call but not of the step: the call was refused precisely because another
    process has run the step since, possibly with effect. The refused caller cannot record
    anything anyway (its lease was taken over, so each of its writes is fenced with
    `SagaLeaseError`), so the choice only matters if such a write ever got through: as a plain
    error, the step then counts as possibly done and is compensated, which is safe; as a
    refusal, the new holder's effect would be left in place with nobody to undo it.
    `retryable = False`: a superseded caller has nothing to retry.
    """

    retryable = False
    """Not retried by saga-orchestrator's default rule."""


class ServiceUnavailableError(ConnectionError):
    """A transient failure: the call may or may not have taken effect; retry it."""
