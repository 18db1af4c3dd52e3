"""Every failure point of the spec's flow diagram compensates exactly as drawn.

    Reserve Inventory  fails → order rejected (nothing to undo)
    Process Payment    fails → release inventory
    Create Shipment    fails → refund + release
    Send Confirmation  fails → cancel shipment + refund + release

A declared refusal (a business error) means the step did not act, so only the steps before it are
undone. A timeout leaves the outcome unknown, so the timed-out step's own compensation runs
first: it looks the effect up by the action's key (the order, the payment's idempotency key)
since no id came back, and finds nothing here because the fakes' hanging calls never act. The
cancellation email is sent: the customer may have received the confirmation.
"""

from __future__ import annotations

import pytest

from order_fulfillment.errors import (
    InsufficientStockError,
    PaymentDeclinedError,
    ServiceRejectedError,
)
from saga_orchestrator import SagaOrchestrator, SagaStatus, StepStatus
from saga_orchestrator.protocols import SagaRepository
from saga_orchestrator.testing import ManualClock
from tests.fakes import FastTimeoutSaga, RecordingServices, Script, make_order

FORWARD = ["reserve", "charge", "create_shipment", "email:order_confirmed"]
STEPS = ["reserve_inventory", "process_payment", "create_shipment", "send_confirmation"]

RAISED = {
    "reserve": (InsufficientStockError("SKU-001"), []),
    "charge": (PaymentDeclinedError("Insufficient funds"), ["release"]),
    "create_shipment": (ServiceRejectedError("no carrier"), ["refund", "release"]),
    "email:order_confirmed": (
        ServiceRejectedError("mailbox unavailable"),
        ["cancel_shipment", "refund", "release"],
    ),
}

TIMED_OUT = {
    "reserve": ["release_order"],
    "charge": ["find_payment", "release"],
    "create_shipment": ["find_shipment", "refund", "release"],
    "email:order_confirmed": ["email:order_cancelled", "cancel_shipment", "refund", "release"],
}


@pytest.mark.parametrize("failing", FORWARD)
@pytest.mark.anyio
async def test_raised_failure_compensates_as_the_diagram_says(
    failing: str, saga_repo: SagaRepository
) -> None:
    """A business error at each step undoes exactly the earlier steps, in reverse order."""
    error, undo = RAISED[failing]
    services = RecordingServices(Script(failures={failing: error}))
    result = await SagaOrchestrator(saga_repo).execute(services.saga())

    upto = FORWARD.index(failing)
    assert services.calls == FORWARD[: upto + 1] + undo
    assert result.status is SagaStatus.COMPENSATED
    assert result.error is not None
    assert result.error.startswith(f"{STEPS[upto]}: {type(error).__name__}")
    stored = await saga_repo.get(result.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.COMPENSATED
    assert [s.status for s in stored.steps] == (
        [StepStatus.COMPENSATED] * upto
        + [StepStatus.FAILED]
        + [StepStatus.PENDING] * (len(STEPS) - upto - 1)
    )


@pytest.mark.parametrize("failing", FORWARD)
@pytest.mark.anyio
async def test_timed_out_step_counts_as_possibly_done(
    failing: str, saga_repo: SagaRepository
) -> None:
    """A step that times out on every attempt is compensated too, before the earlier ones."""
    services = RecordingServices(Script(hangs={failing}))
    saga = FastTimeoutSaga(
        make_order(),
        inventory=services,
        payment=services,
        shipping=services,
        notification=services,
    )
    orchestrator = SagaOrchestrator(saga_repo, clock=ManualClock())
    result = await orchestrator.execute(saga)

    upto = FORWARD.index(failing)
    attempts = [failing] * 3  # timeouts are transient: the default policy tries 3 times
    assert services.calls == FORWARD[:upto] + attempts + TIMED_OUT[failing]
    assert result.status is SagaStatus.COMPENSATED
    failed = result.steps[upto]
    assert failed.status is StepStatus.COMPENSATED
    assert failed.effect_possible
    assert failed.attempts == 3
    assert failed.error is not None
    assert "TimeoutError" in failed.error
