"""The API's request and response bodies, and money parsing.

Requests are strict: unknown fields are refused and nothing is coerced. Money travels as a
decimal string ("29.99"), never as a JSON number.
"""

import re
from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from ..shop import MAX_LINES, MAX_QUANTITY

_MONEY_PATTERN = re.compile(r"^-?\d{1,15}(?:\.\d{1,15})?$")
_JSON_KINDS = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}


# ---------------------------------------------------------------------------- requests


def _money(value: object) -> object:
    """A price as a decimal string ("29.99"): JSON numbers are lossy, NaN and exponents absurd."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise PydanticCustomError(
            "money_string",
            'money must be a decimal string such as "29.99", not a JSON {kind}',
            {"kind": _JSON_KINDS.get(type(value), type(value).__name__)},
        )
    if not _MONEY_PATTERN.match(value):
        raise PydanticCustomError(
            "money_format",
            'money must be a finite decimal string such as "29.99" (no exponent, NaN or '
            "Infinity; at most 15 digits on either side of the point)",
        )
    return Decimal(value)


Money = Annotated[
    Decimal | None,
    BeforeValidator(_money),
    WithJsonSchema({"type": "string", "pattern": _MONEY_PATTERN.pattern, "examples": ["29.99"]}),
]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class _Strict(BaseModel):
    """Unknown fields are refused and nothing is coerced (no `true` for 1, no "2" for 2)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class OrderItemRequest(_Strict):
    sku: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        examples=["SKU-001"]
    )
    quantity: Annotated[StrictInt, Field(ge=1, le=MAX_QUANTITY, examples=[2])]
    unit_price: Money = Field(
        default=None,
        description="Optional: the price the client saw, as a string. Refused unless it is "
        "the catalog price; the order is always priced from the catalog.",
    )
    name: Text | None = Field(default=None, description="Optional; must match the catalog.")


class ShippingAddressRequest(_Strict):
    street: Text = Field(examples=["123 Main St"])
    city: Text = Field(examples=["Anytown"])
    state: Text = Field(examples=["CA"])
    postal_code: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20)
    ] = Field(examples=["12345"])
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] = Field(
        description="ISO 3166-1 alpha-2 code, upper case.", examples=["US"]
    )


class CreateOrderRequest(_Strict):
    customer_id: Annotated[UUID, Strict(False)]  # a JSON string is the only way to send one
    items: Annotated[list[OrderItemRequest], Field(min_length=1, max_length=MAX_LINES)]
    shipping_address: ShippingAddressRequest


# ---------------------------------------------------------------------------- responses


class OrderResponse(BaseModel):
    order_id: UUID
    status: str
    tracking_number: str | None = None


class OrderFailureDetail(BaseModel):
    error: str
    reason: str | None
    order_id: UUID


class OrderFailure(BaseModel):
    """The spec's body for an order whose saga did not complete (it was compensated)."""

    detail: OrderFailureDetail


class OrderStatusResponse(BaseModel):
    order_id: UUID
    saga_status: str
    current_step: str | None
    completed_steps: list[str]
    error: str | None


class Health(BaseModel):
    status: Literal["ok"]


class FieldError(BaseModel):
    field: str
    """Dotted path of the offending field, such as ``items[0].quantity``."""
    location: str
    """Where it was: ``body``, ``path``, ``query`` or ``header``."""
    message: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None
