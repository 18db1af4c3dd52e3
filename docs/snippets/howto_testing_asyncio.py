"""The same kind of test with pytest-asyncio instead of anyio's plugin."""

from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

import pytest
from howto_testing_saga import CheckoutData, CheckoutSaga
from howto_testing_test import FakeServices

from saga_orchestrator import InMemorySagaRepository, SagaOrchestrator, SagaStatus
from saga_orchestrator.testing import FaultInjector, ManualClock


@pytest.mark.asyncio
async def test_a_lost_reply_on_the_charge_is_refunded() -> None:
    services = FakeServices()
    faults = FaultInjector().fail("charge", ConnectionError("reply lost"), after_call=True)
    orchestrator = SagaOrchestrator(
        InMemorySagaRepository(), clock=ManualClock(), interceptors=[faults]
    )
    result = await orchestrator.execute(
        CheckoutSaga(CheckoutData(uuid4(), Decimal("9.99")), services)
    )
    assert result.status is SagaStatus.COMPENSATED
    assert services.calls == ["reserve", "charge", "charge", "charge", "refund", "release"]
