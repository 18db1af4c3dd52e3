"""The order domain, as in the specification."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from uuid import UUID, uuid4


class OrderStatus(str, Enum):  # noqa: UP042 - as in the spec
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class OrderItem:
    sku: str
    quantity: int
    unit_price: Decimal
    name: str


@dataclass
class ShippingAddress:
    street: str
    city: str
    state: str
    postal_code: str
    country: str


@dataclass
class OrderData:
    """Data passed through the saga."""

    order_id: UUID = field(default_factory=uuid4)
    customer_id: UUID | None = None
    items: list[OrderItem] = field(default_factory=list)
    shipping_address: ShippingAddress | None = None
    total: Decimal = Decimal("0")
    currency: str = "USD"

    # Populated during saga execution
    reservation_id: UUID | None = None
    payment_id: UUID | None = None
    shipment_id: UUID | None = None
    tracking_number: str | None = None
