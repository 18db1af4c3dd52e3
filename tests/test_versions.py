"""Definition versions: sagas of version 1 in flight while version 2 starts new ones, across a
real restart (SIGKILL); a missing version is loud (report, stranded mark, CLI, metric), never
silently pending."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest
from prometheus_client import CollectorRegistry

from saga_orchestrator import (
    BaseSaga,
    InMemorySagaRepository,
    SagaDefinitionError,
    SagaOrchestrator,
    SagaRegistry,
    SagaStatus,
    SagaStep,
    SagaWorker,
    SQLiteSagaRepository,
    UnknownSagaVersionError,
)
from saga_orchestrator.cli import main as cli
from saga_orchestrator.errors import SagaDefinitionMismatchError, UnknownSagaTypeError
from saga_orchestrator.observability.prometheus import SagaStatesCollector
from saga_orchestrator.serialization import decode_context, encode_context
from tests.conftest import PostgresSchema
from tests.versions_child import PaymentData, PaymentSagaV1, PaymentSagaV2

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    """psycopg's async connections (the worker test) run on asyncio only."""
    return "asyncio"


ACTIVE = [SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING]


def crashed_v1_database(tmp_path: Path, count: int = 3) -> Path:
    """A SQLite file left by a version-1 process SIGKILLed with ``count`` sagas in ``capture``."""
    db = tmp_path / "payments.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-m", "tests.versions_child", str(db), str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    ) as child:
        assert child.stdout is not None
        assert child.stderr is not None
        line = child.stdout.readline()  # written once every saga is blocked inside `capture`
        if line != "ready\n":
            child.kill()
            pytest.fail(f"child did not get ready: {line!r} {child.stderr.read()}")
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
        assert child.stderr.read() == ""  # no MainModuleDataWarning: the class is in a module
    return db


def stored_steps(db: Path) -> dict[str, tuple[int, list[str], str]]:
    import sqlite3

    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT saga_id, state FROM sagas").fetchall()
    connection.close()
    found = {}
    for saga_id, state in rows:
        document = json.loads(state)
        steps = [s["name"] for s in document["steps"]]
        found[saga_id] = (document.get("saga_version", 1), steps, document["status"])
    return found


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_version_1_in_flight_drains_while_version_2_starts_new_sagas_across_a_restart(
    tmp_path: Path,
) -> None:
    """The killed version-1 sagas resume on version 1's steps; version 2 starts new ones at
    the same time; each is stored with the version that started it."""
    db = crashed_v1_database(tmp_path)
    old = stored_steps(db)
    assert len(old) == 3
    assert all(v == (1, ["authorize", "capture"], "running") for v in old.values())

    async def restart() -> tuple[Any, list[Any]]:
        async with SQLiteSagaRepository(db) as repository:
            orchestrator = SagaOrchestrator(repository)
            orchestrator.register("payment", PaymentSagaV1, version=1)
            orchestrator.register("payment", PaymentSagaV2)  # version 2, from the class
            new_results: list[Any] = []
            report: Any = None

            async def recover() -> None:
                nonlocal report
                report = await orchestrator.recover()

            async def start_new() -> None:
                saga = PaymentSagaV2(PaymentData(uuid4(), Decimal("25.00")))
                new_results.append(await orchestrator.execute(saga))

            async with anyio.create_task_group() as tg:
                tg.start_soon(recover)
                for _ in range(4):
                    tg.start_soon(start_new)
            assert await repository.list_stranded() == []
            return report, new_results

    report, new_results = anyio.run(restart)
    assert report.skipped == []
    assert sorted(str(r.saga_id) for r in report) == sorted(old)
    for result in report:
        assert result.status is SagaStatus.COMPLETED
        assert result.saga_version == 1
        assert [s.name for s in result.steps] == ["authorize", "capture"]
        assert result.data.captured
        assert not result.data.receipt_sent
    assert len(new_results) == 4
    for result in new_results:
        assert result.status is SagaStatus.COMPLETED
        assert result.saga_version == 2
        assert result.data.captured
        assert result.data.receipt_sent

    stored = stored_steps(db)
    assert {sid: v for sid, v in stored.items() if sid in old} == {
        sid: (1, ["authorize", "capture"], "completed") for sid in old
    }
    assert (
        sorted(v for sid, v in stored.items() if sid not in old)
        == [(2, ["authorize", "capture_funds", "send_receipt"], "completed")] * 4
    )


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_missing_version_is_reported_marked_stranded_listed_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Version 2 deployed alone: recover() skips the version-1 sagas with the reason, marks
    them stranded; `list` and `saga_states` show them; registering version 1 beside it
    resumes them and the marks no longer hold."""
    db = crashed_v1_database(tmp_path, count=2)
    registry = CollectorRegistry()

    async def deploy_v2_alone() -> tuple[Any, Any, Any]:
        async with SQLiteSagaRepository(db) as repository:
            orchestrator = SagaOrchestrator(repository)
            orchestrator.register("payment", PaymentSagaV2)
            report = await orchestrator.recover()
            with pytest.raises(UnknownSagaVersionError, match="version 1"):
                await orchestrator.resume(report.skipped[0].saga_id)
            states = SagaStatesCollector(repository, registry)
            await states.refresh()
            return report, await repository.list_stranded(), states

    report, stranded, _ = anyio.run(deploy_v2_alone)
    assert list(report) == []
    assert len(report.skipped) == 2
    for skipped in report.skipped:
        assert skipped.saga_type == "payment"
        assert skipped.saga_version == 1
        assert skipped.reason.startswith(
            "no definition registered for 'payment' version 1 (registered: version 2 (its "
        )
        assert "register('payment', factory, version=1)" in skipped.reason
    assert {s.saga_id for s in stranded} == {s.saga_id for s in report.skipped}
    assert (
        registry.get_sample_value("saga_states", {"saga_type": "payment", "status": "stranded"})
        == 2
    )
    assert (
        registry.get_sample_value("saga_states", {"saga_type": "payment", "status": "running"}) == 2
    )

    capsys.readouterr()
    assert cli(["--db", str(db), "list", "--stranded"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["SAGA_ID", "TYPE", "VER", "STATUS"]
    assert len(out) == 3
    for line in out[1:]:
        assert line.split()[1:5] == ["payment", "1", "running", "(stranded)"]
        assert "stranded: no definition registered for 'payment' version 1" in line
    assert cli(["--db", str(db), "list", "--json", "--saga-version", "1"]) == 0
    documents = json.loads(capsys.readouterr().out)
    assert len(documents) == 2
    assert all(
        d["saga_version"] == 1 and d["stranded"].startswith("no definition") for d in documents
    )
    saga_id = str(report.skipped[0].saga_id)
    assert cli(["--db", str(db), "show", saga_id]) == 0
    shown = capsys.readouterr().out
    assert "payment (definition version 1)" in shown
    assert "stranded        recover() or a worker could not resume it: no definition" in shown

    async def deploy_side_by_side() -> tuple[Any, Any]:
        async with SQLiteSagaRepository(db) as repository:
            orchestrator = SagaOrchestrator(repository)
            orchestrator.register("payment", PaymentSagaV1, version=1)
            orchestrator.register("payment", PaymentSagaV2)
            report = await orchestrator.recover()
            return report, await repository.list_stranded()

    report, stranded = anyio.run(deploy_side_by_side)
    assert report.skipped == []
    assert [r.status for r in report] == [SagaStatus.COMPLETED] * 2
    assert stranded == []
    assert cli(["--db", str(db), "list", "--stranded"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no sagas match" in captured.err
    assert cli(["--db", str(db), "list", "--type", "payment", "--saga-version", "1", "--status",
                "pending", "running", "compensating", "failed"]) == 0  # fmt: skip
    assert "no sagas match" in capsys.readouterr().err  # version 1 is drained


class Unversioned(BaseSaga[PaymentData]):
    saga_type = "payment"

    def define_steps(self) -> list[SagaStep[PaymentData]]:
        return [SagaStep("authorize", self.noop), SagaStep("capture", self.noop)]

    async def noop(self, data: PaymentData) -> None:
        return None


def test_routing_prefers_the_registered_version_then_the_unversioned_factory() -> None:
    """version=N serves version N; the unversioned factory serves the version its sagas
    declare; anything else raises UnknownSagaVersionError (an UnknownSagaTypeError) naming
    what is registered."""
    v1 = PaymentSagaV1(PaymentData(uuid4(), Decimal("1"))).context
    v2 = PaymentSagaV2(PaymentData(uuid4(), Decimal("1"))).context
    assert (v1.saga_version, v2.saga_version) == (1, 2)
    registry = SagaRegistry()
    registry.register("payment", PaymentSagaV2)
    assert type(registry.rebuild(v2)) is PaymentSagaV2
    with pytest.raises(UnknownSagaVersionError) as caught:
        registry.rebuild(v1)
    assert isinstance(caught.value, UnknownSagaTypeError)
    assert "registered: version 2 (its unversioned factory)" in str(caught.value)
    registry.register("payment", PaymentSagaV1, version=1)
    assert type(registry.rebuild(v1)) is PaymentSagaV1
    assert registry.versions("payment") == {1}
    assert "payment" in registry
    v1.saga_type = "x"
    with pytest.raises(UnknownSagaTypeError, match="no factory registered for saga_type 'x'"):
        registry.rebuild(v1)


def test_a_saga_is_stored_with_its_version_and_older_rows_read_as_version_1() -> None:
    context = PaymentSagaV2(PaymentData(uuid4(), Decimal("1"))).context
    document = json.loads(encode_context(context))
    assert document["saga_version"] == 2
    assert decode_context(json.dumps(document)).saga_version == 2
    del document["saga_version"]  # as written before versions existed
    assert decode_context(json.dumps(document)).saga_version == 1
    v1 = json.loads(encode_context(PaymentSagaV1(PaymentData(uuid4(), Decimal("1"))).context))
    assert "saga_version" not in v1  # version 1 documents are unchanged


@pytest.mark.parametrize("bad", [0, -1, True, 1.0, "2", None])
def test_bad_versions_are_refused(bad: Any) -> None:
    class Bad(Unversioned):
        saga_version = bad

    with pytest.raises(SagaDefinitionError, match="saga_version must be an int >= 1"):
        Bad(PaymentData(uuid4(), Decimal("1")))
    with pytest.raises(SagaDefinitionError, match="version for 'payment' must be an int >= 1"):
        SagaRegistry().register("payment", Unversioned, version=bad if bad is not None else 0)


def test_attach_refuses_a_context_of_another_version() -> None:
    v1 = PaymentSagaV1(PaymentData(uuid4(), Decimal("1"))).context
    saga = Unversioned(PaymentData(uuid4(), Decimal("1")))
    saga.attach(v1)  # same type, version and steps
    v1.saga_version = 3
    with pytest.raises(SagaDefinitionMismatchError, match="definition version 3"):
        saga.attach(v1)


@pytest.mark.anyio
async def test_stranded_marks_lapse_once_the_saga_moves_on() -> None:
    """A mark holds only at the stored version it was made at, and not for finished sagas."""
    repository = InMemorySagaRepository()
    orchestrator = SagaOrchestrator(repository)
    saga = Unversioned(PaymentData(uuid4(), Decimal("1")))
    result = await orchestrator.execute(saga)
    await repository.mark_stranded(result.saga_id, "why", saga_version=1)
    assert await repository.list_stranded() == []  # completed: not stranded
    await repository.mark_stranded(uuid4(), "not stored")
    assert await repository.list_stranded() == []


@pytest.mark.anyio
async def test_a_worker_lacking_a_version_strands_the_saga_and_one_that_has_it_finishes_it(
    postgres_schema: PostgresSchema,
) -> None:
    """A rolling deployment: a worker with only version 2 claims a version-1 saga, marks it
    stranded and puts it back; a worker with both versions then finishes it."""
    async with postgres_schema.repository(lease_seconds=10) as repository:
        starter = SagaOrchestrator(repository)
        saga = PaymentSagaV1(PaymentData(uuid4(), Decimal("5")))
        saga_id = await starter.submit(saga)

        v2_only = SagaOrchestrator(repository)
        v2_only.register("payment", PaymentSagaV2)
        worker = SagaWorker(v2_only, concurrency=1, poll_interval_seconds=0.05)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(10):
                while worker.stranded == 0:  # noqa: ASYNC110 - a counter, polled with a deadline
                    await anyio.sleep(0.02)
            worker.stop()
        stranded = await repository.list_stranded()
        assert [s.saga_id for s in stranded] == [saga_id]
        assert stranded[0].saga_version == 1
        assert "version 1" in stranded[0].reason
        assert (await starter.get(saga_id)).status is SagaStatus.RUNNING  # type: ignore[union-attr]
        postgres_schema.query("UPDATE sagas SET run_after = NULL")  # skip the minute's wait

    async with postgres_schema.repository(lease_seconds=10) as repository:
        both = SagaOrchestrator(repository)
        both.register("payment", PaymentSagaV1, version=1)
        both.register("payment", PaymentSagaV2)
        worker = SagaWorker(both, concurrency=1, poll_interval_seconds=0.05)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            result = await both.wait(saga_id, timeout_seconds=10, poll_seconds=0.05)
            worker.stop()
        assert result.status is SagaStatus.COMPLETED
        assert result.saga_version == 1
        assert await repository.list_stranded() == []
