"""What the routes depend on: the shop and the key store, from the app's lifespan state."""

from typing import Annotated

from fastapi import Depends, Request

from ..shop import Shop
from .idempotency import IdempotencyKeys


def get_shop(request: Request) -> Shop:
    """The shop the application was created with (lifespan state)."""
    shop: Shop = request.state.shop
    return shop


def get_idempotency_keys(request: Request) -> IdempotencyKeys:
    keys: IdempotencyKeys = request.state.idempotency_keys
    return keys


ShopDep = Annotated[Shop, Depends(get_shop)]
KeysDep = Annotated[IdempotencyKeys, Depends(get_idempotency_keys)]
