"""The business errors of the example's services. None is retryable: they are answers."""

from __future__ import annotations


class PaymentDeclinedError(Exception):
    """The customer's payment was refused (insufficient funds, card declined)."""


class InsufficientStockError(Exception):
    """Not enough stock to reserve every item of the order."""


class ShipmentAlreadyDispatchedError(Exception):
    """The shipment left the warehouse; it can no longer be cancelled, only returned."""
