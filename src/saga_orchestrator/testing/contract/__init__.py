"""The adapter contract suite: the tests the built-in storage adapters pass, for yours.

Subclass a contract class in one of your test modules (the subclass's name must start with
``Test``, as pytest collects classes), give it a fixture that returns or yields a fresh, empty
store, and run pytest:

```python
import pytest

from saga_orchestrator.testing.contract import SagaRepositoryContract


class TestMyRepository(SagaRepositoryContract):
    @pytest.fixture
    async def saga_repository(self):
        async with MyRepository("mysql://...") as repository:
            yield repository
```

- [`SagaRepositoryContract`][saga_orchestrator.testing.contract.SagaRepositoryContract], on
  your fixture ``saga_repository`` (and ``second_saga_repository``, if your store can be
  shared): the [`SagaRepository`][saga_orchestrator.protocols.SagaRepository] protocol, its
  optional capabilities, and sagas run through
  [`SagaOrchestrator`][saga_orchestrator.orchestrator.SagaOrchestrator] on it.
- [`IdempotencyStoreContract`][saga_orchestrator.testing.contract.IdempotencyStoreContract],
  on your fixture ``idempotency_store``: the
  [`IdempotencyStore`][saga_orchestrator.protocols.IdempotencyStore] protocol, and
  ``purge_before`` if the store has it.
- [`SagaInboxContract`][saga_orchestrator.testing.contract.SagaInboxContract], on your fixture
  ``saga_repository`` (and ``second_saga_repository``): the
  [`SagaInbox`][saga_orchestrator.protocols.SagaInbox] capability, with sagas that wait for
  events and timers (each test skips if the repository has no ``SagaInbox``).
- [`OutboxContract`][saga_orchestrator.testing.contract.OutboxContract], on your fixture
  ``outbox_repository``: a repository with ``stores_events = True`` and the
  [`OutboxSource`][saga_orchestrator.protocols.OutboxSource] methods, read by an
  [`OutboxRelay`][saga_orchestrator.outbox.OutboxRelay].

The tests are async and marked ``anyio``: anyio's pytest plugin, installed with anyio, runs
them and your async fixtures on the event loops that the ``anyio_backend`` fixture names.
Define ``anyio_backend`` (in the subclass, the module or a ``conftest.py``) to choose them:
``"asyncio"``, ``"trio"``, or a parametrized fixture for both; without one, anyio's own default
applies. Write your fixtures with ``@pytest.fixture``, not ``@pytest_asyncio.fixture``. With
pytest-asyncio installed, keep its default ``asyncio_mode = "strict"``, in which the tests run
as they do without it: in auto mode it takes them over, and each errors, saying so.

Tests of optional capabilities (``list_saga_ids``, ``count_by_status``,
``mark_stranded``/``list_stranded``, ``purge_before``, ``purge_sent_before``, a second
instance on the same store) skip, saying why, when the object under test lacks them.

This module imports pytest; [`saga_orchestrator.testing`][saga_orchestrator.testing] does not.
"""

# One module per contract: _repository (and its sagas run through an orchestrator,
# _orchestration), _idempotency, _outbox, _waits; _support holds what they share. The public names
# are re-exported here, and documented here.

from __future__ import annotations

try:
    import pytest  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "saga_orchestrator.testing.contract is a pytest plugin: pip install pytest"
    ) from exc

# isort: off
from ._repository import SagaRepositoryContract
from ._idempotency import IdempotencyStoreContract
from ._outbox import OutboxContract
from ._waits import SagaInboxContract
# isort: on

__all__ = [
    "IdempotencyStoreContract",
    "OutboxContract",
    "SagaInboxContract",
    "SagaRepositoryContract",
]
