"""The specification's three tests, verbatim but for their import lines.

They build the saga as `OrderFulfillmentSaga(order_data, inventory=..., ...)`, the spelling
the example's saga accepts besides the spec class's `inventory_service=`. The fixtures
`saga_repo`, `event_publisher` and `idempotency_store` (tests/conftest.py) run each test on
the in-memory and the SQLite adapters.
"""

import pytest
from unittest.mock import AsyncMock, MagicMock
from decimal import Decimal
from uuid import uuid4

from order_fulfillment.domain import OrderData, OrderItem, ShippingAddress
from order_fulfillment.errors import PaymentDeclinedError
from order_fulfillment.saga import OrderFulfillmentSaga
from saga_orchestrator import SagaOrchestrator, SagaStatus


@pytest.fixture
def mock_services():
    return {
        "inventory": AsyncMock(),
        "payment": AsyncMock(),
        "shipping": AsyncMock(),
        "notification": AsyncMock(),
    }


@pytest.fixture
def order_data():
    return OrderData(
        customer_id=uuid4(),
        items=[
            OrderItem(sku="SKU-001", quantity=2, unit_price=Decimal("29.99"), name="Widget"),
        ],
        shipping_address=ShippingAddress(
            street="123 Main St",
            city="Anytown",
            state="CA",
            postal_code="12345",
            country="US",
        ),
        total=Decimal("59.98"),
    )


@pytest.mark.asyncio
async def test_saga_happy_path(mock_services, order_data, saga_repo, event_publisher):
    """Test successful order fulfillment."""
    # Setup mocks
    mock_services["inventory"].reserve.return_value = MagicMock(id=uuid4())
    mock_services["payment"].charge.return_value = MagicMock(id=uuid4())
    mock_services["shipping"].create.return_value = MagicMock(
        id=uuid4(),
        tracking_number="TRACK123",
    )

    # Execute saga
    saga = OrderFulfillmentSaga(order_data, **mock_services)
    orchestrator = SagaOrchestrator(saga_repo, event_publisher)
    result = await orchestrator.execute(saga)

    # Assertions
    assert result.status == SagaStatus.COMPLETED
    assert result.data.tracking_number == "TRACK123"
    mock_services["inventory"].reserve.assert_called_once()
    mock_services["payment"].charge.assert_called_once()
    mock_services["shipping"].create.assert_called_once()
    mock_services["notification"].send_email.assert_called_once()


@pytest.mark.asyncio
async def test_saga_payment_failure_triggers_compensation(
    mock_services, order_data, saga_repo, event_publisher
):
    """Test that payment failure triggers inventory release."""
    # Setup mocks
    mock_services["inventory"].reserve.return_value = MagicMock(id=uuid4())
    mock_services["payment"].charge.side_effect = PaymentDeclinedError("Insufficient funds")

    # Execute saga
    saga = OrderFulfillmentSaga(order_data, **mock_services)
    orchestrator = SagaOrchestrator(saga_repo, event_publisher)
    result = await orchestrator.execute(saga)

    # Assertions
    assert result.status == SagaStatus.COMPENSATED
    mock_services["inventory"].release.assert_called_once()  # Compensation
    mock_services["payment"].refund.assert_not_called()  # Payment never succeeded


@pytest.mark.asyncio
async def test_saga_idempotency(mock_services, order_data, saga_repo, event_publisher, idempotency_store):
    """Test that saga steps are idempotent."""
    reservation_id = uuid4()
    mock_services["inventory"].reserve.return_value = MagicMock(id=reservation_id)

    # First execution
    saga1 = OrderFulfillmentSaga(order_data, **mock_services)
    orchestrator = SagaOrchestrator(saga_repo, event_publisher, idempotency_store)

    # Simulate partial execution - reserve succeeds, then crash
    await orchestrator._execute_step(saga1.context, saga1.context.steps[0])

    # Second execution - should use cached result
    mock_services["inventory"].reserve.reset_mock()
    saga2 = OrderFulfillmentSaga(order_data, **mock_services)
    saga2.context.saga_id = saga1.context.saga_id  # Same saga ID

    result = await orchestrator.execute(saga2)

    # Reserve should not be called again
    mock_services["inventory"].reserve.assert_not_called()
    assert result.data.reservation_id == reservation_id
