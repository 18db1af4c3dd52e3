"""Rebuilding sagas from storage: saga_type → factory that supplies their dependencies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .definitions import BaseSaga
from .errors import SagaDefinitionError, UnknownSagaTypeError
from .state import SagaContext

__all__ = ["SagaFactory", "SagaRegistry"]

SagaFactory = Callable[[Any], BaseSaga[Any]]
"""Builds a saga, with its services, around stored data: ``lambda data: MySaga(data, svc)``."""


class SagaRegistry:
    """Maps each ``saga_type`` to the factory that rebuilds its sagas after a restart."""

    def __init__(self) -> None:
        self._factories: dict[str, SagaFactory] = {}

    def register(self, saga_type: str, factory: SagaFactory) -> None:
        """Use ``factory(data)`` to rebuild stored sagas of ``saga_type``."""
        if not isinstance(saga_type, str) or not saga_type:
            raise SagaDefinitionError(f"saga_type must be a non-empty string, got {saga_type!r}")
        if not callable(factory):
            raise SagaDefinitionError(f"factory for {saga_type!r} is not callable")
        self._factories[saga_type] = factory

    def __contains__(self, saga_type: object) -> bool:
        """Whether a factory is registered for ``saga_type``."""
        return saga_type in self._factories

    @property
    def saga_types(self) -> frozenset[str]:
        """The saga types that have a factory."""
        return frozenset(self._factories)

    def rebuild(self, context: SagaContext[Any]) -> BaseSaga[Any]:
        """A saga object driving the stored ``context``.

        Raises [`UnknownSagaTypeError`][saga_orchestrator.errors.UnknownSagaTypeError] when no
        factory is registered, and
        [`SagaDefinitionMismatchError`][saga_orchestrator.errors.SagaDefinitionMismatchError]
        when the current definition's steps differ.
        """
        factory = self._factories.get(context.saga_type)
        if factory is None:
            raise UnknownSagaTypeError(
                f"no factory registered for saga_type {context.saga_type!r} "
                f"(registered: {sorted(self._factories) or 'none'})",
                saga_id=context.saga_id,
            )
        saga = factory(context.data)
        if not isinstance(saga, BaseSaga):
            raise SagaDefinitionError(
                f"factory for {context.saga_type!r} returned {type(saga).__name__}, not a BaseSaga"
            )
        saga.attach(context)
        return saga
