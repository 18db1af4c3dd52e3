"""The operator's command line: find, inspect, retry, cancel and recover stored sagas, and
deliver the events their wait steps wait for.

```bash
saga-orchestrator --db orders.db list --status failed
saga-orchestrator --db orders.db list --status running compensating --older-than 10m
saga-orchestrator --db orders.db list --type order_fulfillment --json
saga-orchestrator --db orders.db list --stranded    # unfinished: recover() could not resume them
saga-orchestrator --db orders.db show 1b9e4a52-0c1e-4d5e-9a4b-6f0d2b7c8e11
saga-orchestrator --app order_fulfillment.admin:orchestrator --db orders.db retry ID
saga-orchestrator --app order_fulfillment.admin:orchestrator --db orders.db cancel ID \\
    --reason "customer called"
saga-orchestrator --app order_fulfillment.admin:orchestrator --db orders.db recover
saga-orchestrator --app myapp.sagas:orchestrator --db orders.db deliver payment.captured \\
    --saga-id ID --event-id evt_123 --payload '{"amount": {"$decimal": "12.50"}}'
saga-orchestrator --app myapp.sagas:orchestrator --db postgresql://app@db/app worker
saga-orchestrator --version
python -m saga_orchestrator.cli --help
```

Where the sagas are: ``--db PATH`` opens an existing SQLite file with an orchestrator that
knows no saga type, which is enough to ``list`` and ``show``, and for ``deliver`` to store an
event in a saga's inbox. ``retry``, ``cancel`` and ``recover`` run compensations and steps, so
they need the sagas' code, and so does ``deliver`` for the saga to consume the event at once:
``--app MODULE:CALLABLE`` names a callable that takes the ``--db`` value (or ``None``) and
returns an async context manager yielding a configured
[`SagaOrchestrator`][saga_orchestrator.orchestrator.SagaOrchestrator], its registry filled
with the saga factories and their services:

```python
@contextlib.asynccontextmanager
async def orchestrator(db: str | None) -> AsyncIterator[SagaOrchestrator]:
    async with Shop(db) as shop:
        yield shop.orchestrator
```

Stored saga data names its dataclasses by module, so they are imported when a saga is read:
run the command where your code is importable (the current directory is on ``sys.path``, as
with ``python -m``).

``recover`` resumes every unfinished saga: run it only while no service process is driving
them (after a crash, with the service stopped). ``retry``, ``cancel`` and ``deliver`` are safe
at any time: a service driving the same saga sees the stored version move and stops.

``deliver EVENT`` is
[`SagaOrchestrator.deliver_event`][saga_orchestrator.orchestrator.SagaOrchestrator.deliver_event]:
``--saga-id`` or ``--correlation-id`` (exactly one), ``--event-id`` (required), and
``--payload JSON`` or ``--payload-file PATH`` (``-``: standard input), a JSON object in the
format of [`saga_orchestrator.serialization`][]: plain JSON values as they are (``"12.50"``
stays a string, ``12.5`` is a float), typed ones tagged (``{"$decimal": "12.50"}``,
``{"$uuid": "..."}``, ``{"$datetime": "...+00:00"}``). It prints what was done (``consumed``,
``stored``, ``duplicate`` or ``ignored``) and the saga's status, and exits 0, except 1 when the
event is ignored (the saga will never consume it: nothing stored) or no saga has that id or
correlation id, and 2 for bad input (nothing stored).

A saga whose stored state cannot be read (a corrupt row, data written by other code) does not
hide the others: ``list`` shows the readable ones and names each unreadable one on stderr (with
``--json``, as an entry ``{"saga_id": ..., "unreadable": "<what is wrong>"}`` in the array),
``recover`` resumes the others and names each saga it could not read or resume, and ``show``
of an unreadable saga says what is wrong; each then exits 1.

Exit status: 0 success, 1 the operation failed (unknown saga, wrong status, compensation
still failing, a stored saga that cannot be read or resumed, an event ignored), 2 bad usage
(bad input: nothing is stored), 130 interrupted (what was recorded stands; ``recover``
resumes).
"""

from __future__ import annotations

from .commands import AppFactory
from .parser import build_parser as build_parser
from .runner import main

__all__ = ["AppFactory", "main"]
