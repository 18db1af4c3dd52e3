"""Rebuilding sagas from storage: (saga_type, saga_version) → factory with their dependencies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .definitions import BaseSaga
from .errors import SagaDefinitionError, UnknownSagaTypeError, UnknownSagaVersionError
from .state import SagaContext

__all__ = ["SagaFactory", "SagaRegistry"]

SagaFactory = Callable[[Any], BaseSaga[Any]]
"""Builds a saga, with its services, around stored data: ``lambda data: MySaga(data, svc)``."""


class SagaRegistry:
    """Maps each ``saga_type`` (and definition version) to the factory that rebuilds its
    sagas after a restart.

    A factory registered without ``version`` serves the sagas whose stored ``saga_version``
    equals the ``saga_version`` of the saga it builds; one registered with ``version=N``
    serves the sagas started by version N, and is preferred for them. While sagas of an old
    definition are in flight, register it beside the new one:

    ```python
    registry.register("order", lambda data: OrderSagaV1(data, services), version=1)
    registry.register("order", lambda data: OrderSaga(data, services))  # version 2
    ```
    """

    def __init__(self) -> None:
        self._factories: dict[str, SagaFactory] = {}
        self._versioned: dict[tuple[str, int], SagaFactory] = {}

    def register(self, saga_type: str, factory: SagaFactory, *, version: int | None = None) -> None:
        """Use ``factory(data)`` to rebuild stored sagas of ``saga_type``: those of definition
        version ``version`` (an int >= 1), or, without it, those of the version its sagas
        declare. Registering the same type (and version) again replaces the factory."""
        if not isinstance(saga_type, str) or not saga_type:
            raise SagaDefinitionError(f"saga_type must be a non-empty string, got {saga_type!r}")
        if not callable(factory):
            raise SagaDefinitionError(f"factory for {saga_type!r} is not callable")
        if version is None:
            self._factories[saga_type] = factory
            return
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise SagaDefinitionError(
                f"version for {saga_type!r} must be an int >= 1, got {version!r}"
            )
        self._versioned[(saga_type, version)] = factory

    def __contains__(self, saga_type: object) -> bool:
        """Whether a factory (of any version) is registered for ``saga_type``."""
        return saga_type in self.saga_types

    @property
    def saga_types(self) -> frozenset[str]:
        """The saga types that have a factory."""
        return frozenset(self._factories) | {saga_type for saga_type, _ in self._versioned}

    def versions(self, saga_type: str) -> frozenset[int]:
        """The definition versions registered explicitly (``version=``) for ``saga_type``."""
        return frozenset(v for t, v in self._versioned if t == saga_type)

    def rebuild(self, context: SagaContext[Any]) -> BaseSaga[Any]:
        """A saga object driving the stored ``context``.

        Raises [`UnknownSagaTypeError`][saga_orchestrator.errors.UnknownSagaTypeError] when no
        factory is registered for its type,
        [`UnknownSagaVersionError`][saga_orchestrator.errors.UnknownSagaVersionError] when
        none builds its definition version, and
        [`SagaDefinitionMismatchError`][saga_orchestrator.errors.SagaDefinitionMismatchError]
        when the matching definition's steps differ.
        """
        saga_type, version = context.saga_type, context.saga_version
        factory = self._versioned.get((saga_type, version))
        if factory is None:
            factory = self._factories.get(saga_type)
        if factory is None:
            if saga_type in self:
                raise UnknownSagaVersionError(
                    self._no_version(context, None), saga_id=context.saga_id
                )
            raise UnknownSagaTypeError(
                f"no factory registered for saga_type {saga_type!r} "
                f"(registered: {sorted(self.saga_types) or 'none'})",
                saga_id=context.saga_id,
            )
        saga = factory(context.data)
        if not isinstance(saga, BaseSaga):
            raise SagaDefinitionError(
                f"factory for {saga_type!r} returned {type(saga).__name__}, not a BaseSaga"
            )
        built = type(saga).saga_version
        if built != version:
            raise UnknownSagaVersionError(self._no_version(context, built), saga_id=context.saga_id)
        saga.attach(context)
        return saga

    def find(self, context: SagaContext[Any]) -> BaseSaga[Any] | None:
        """``rebuild(context)``, or ``None`` when no factory builds its type and version."""
        if context.saga_type not in self:
            return None
        try:
            return self.rebuild(context)
        except UnknownSagaTypeError:
            return None

    def _no_version(self, context: SagaContext[Any], built: int | None) -> str:
        known = sorted(self.versions(context.saga_type))
        parts = [f"version {v} (registered with version=)" for v in known]
        if built is not None:
            parts.append(f"version {built} (its unversioned factory)")
        return (
            f"no definition registered for {context.saga_type!r} version "
            f"{context.saga_version} (registered: {', '.join(parts) or 'none'}); register it "
            f"beside the new one until its sagas are finished: register({context.saga_type!r}, "
            f"factory, version={context.saga_version})"
        )
