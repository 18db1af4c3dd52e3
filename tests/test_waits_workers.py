"""Wait steps on PostgreSQL workers: 1,000 sagas parked at a wait across three worker
processes, their events delivered from another process in random order with duplicates, one
worker SIGKILLed meanwhile.

Every saga ends completed; each event is consumed once (one ``step.completed`` of the wait in
each saga's outbox, and the event's id on its wait step); the step after the wait runs once
per saga, except where the killed worker had called it (then again, by another worker, after
the killed one's lease expired: at least once, as after any crash); and no saga's calls ever
overlap in two workers.
"""

from __future__ import annotations

import itertools
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from uuid import UUID

import anyio
import pytest

from tests.conftest import PostgresSchema
from tests.test_workers import (  # noqa: F401  (fixtures)
    ROOT,
    Db,
    Workers,
    anyio_backend,
    db,
    orchestrator,
    stop,
    until,
    workers,
)
from tests.worker_child import JobData, MemoryRecorder, WaitJobSaga

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals"),
]

TOTAL = 1000


async def _parked(database: Db) -> bool:
    rows = await database.rows(
        "SELECT count(*) FROM sagas WHERE status = 'running' AND lease_owner IS NULL"
        " AND run_after > now() + interval '5 minutes'"
    )
    return bool(rows[0][0] == TOTAL)


async def _completed(database: Db) -> bool:
    rows = await database.rows("SELECT count(*) FROM sagas WHERE status = 'completed'")
    return bool(rows[0][0] == TOTAL)


async def _shipped(database: Db, at_least: int) -> bool:
    rows = await database.rows(
        "SELECT count(*) FROM step_runs WHERE step = 'c' AND ended_at IS NOT NULL"
    )
    return bool(rows[0][0] >= at_least)


def _deliverer(schema: PostgresSchema, events: Path) -> subprocess.Popen[bytes]:
    """A process delivering the events listed in ``events`` (tests.worker_child --deliver)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.worker_child",
            *("--conninfo", schema.url, "--schema", schema.name),
            *("--owner", "deliverer", "--deliver", str(events)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def test_1000_waiting_sagas_on_three_workers_one_killed(
    postgres_schema: PostgresSchema,
    db: Db,  # noqa: F811 - the fixture
    workers: Workers,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    children = await workers.start("w1", "w2", "w3", lease_seconds=2, poll=5)
    local = MemoryRecorder("test")
    async with postgres_schema.repository() as repository:
        orch = orchestrator(repository, local)
        limiter = anyio.CapacityLimiter(32)
        ids: list[UUID] = []

        async def submit(index: int) -> None:
            async with limiter:
                ids.append(await orch.submit(WaitJobSaga(JobData(label=str(index)), local)))

        async with anyio.create_task_group() as tg:
            for index in range(TOTAL):
                tg.start_soon(submit, index)
        await until(lambda: _parked(db), f"{TOTAL} sagas parked at their wait", 90)

        # Every saga's event, in random order, a tenth of them twice (one copy later on).
        events = [[str(saga_id), f"evt-{saga_id}"] for saga_id in ids]
        rng = random.Random(14)
        duplicates = rng.sample(events, TOTAL // 10)
        plan = events + duplicates
        rng.shuffle(plan)
        path = tmp_path / "events.json"
        path.write_text(json.dumps(plan))
        deliverer = _deliverer(postgres_schema, path)
        await until(lambda: _shipped(db, TOTAL // 5), "a fifth of the sagas shipped", 60)
        killed = children[0]
        killed.signal(signal.SIGKILL)
        assert await killed.exit_status() == -signal.SIGKILL
        killed_at: datetime = await db.now()
        out, err = await anyio.to_thread.run_sync(lambda: deliverer.communicate(timeout=120))
        assert deliverer.returncode == 0, err.decode()
        answers = Counter(json.loads(out.decode().strip().splitlines()[-1]))
        started = time.monotonic()
        await until(lambda: _completed(db), f"{TOTAL} sagas completed", 90)
        drained = time.monotonic() - started
    summaries = [await stop(child) for child in children[1:]]

    # Each event was stored once, and every duplicate was answered as one.
    assert answers["stored"] == TOTAL
    assert answers["duplicate"] == TOTAL // 10
    assert sum(answers.values()) == TOTAL + TOTAL // 10
    assert await db.statuses() == {"completed": TOTAL}
    kept = await db.rows("SELECT count(*), count(DISTINCT event_id) FROM saga_inbox")
    assert kept == [(TOTAL, TOTAL)]

    # Consumed once: each saga's wait completed once, with its own event.
    waits = await db.rows(
        "SELECT saga_id, count(*) FROM saga_events WHERE step = 'confirm'"
        " AND type = 'step.completed' GROUP BY saga_id"
    )
    assert len(waits) == TOTAL
    assert {count for _, count in waits} == {1}
    async with postgres_schema.repository() as repository:
        for saga_id in rng.sample(ids, 50):
            context = await repository.get(saga_id)
            assert context is not None
            assert context.steps[1].event_id == f"evt-{saga_id}"
            assert context.data.confirmation == f"evt-{saga_id}"

    # The step after the wait ran once per saga, or again only after the kill.
    calls = await db.calls()
    ships = Counter(call.saga_id for call in calls if call.step == "c")
    assert set(ships) == set(ids)
    # A call the kill cut short, or one that returned just before the kill, whose result the
    # killed worker never recorded: at least once, as after any crash.
    in_killed = {c.saga_id for c in calls if c.step == "c" and c.owner == killed.owner}
    cut_short = {c.saga_id for c in calls if c.ended_at is None}
    again = {saga_id for saga_id, n in ships.items() if n > 1}
    assert again <= in_killed, [
        (c.owner, c.step, c.phase, c.attempt, c.started_at, c.ended_at, c.outcome)
        for c in calls
        if c.saga_id in again - in_killed
    ]
    assert all(call.outcome == "done" for call in calls if call.owner != killed.owner)

    # No saga was ever driven by two workers at once.
    by_saga: dict[UUID, list[tuple[datetime, datetime, str]]] = {}
    for call in calls:
        end = call.ended_at or killed_at
        by_saga.setdefault(call.saga_id, []).append((call.started_at, end, call.owner))
    for saga_id, spans in by_saga.items():
        spans.sort()
        for (_, end, owner), (start, _, other) in itertools.pairwise(spans):
            assert owner == other or end <= start, (saga_id, spans)

    assert sum(s["lost"] for s in summaries) == 0
    assert await db.leased() == []
    print(
        f"\n{TOTAL} waiting sagas, {len(plan)} deliveries ({dict(answers)}), worker"
        f" {killed.owner} killed; all completed {drained:.1f} s after the last delivery;"
        f" {len(cut_short)} calls cut short by the kill"
    )
