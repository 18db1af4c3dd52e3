"""The spec's order saga written for DBOS Transact, for ``engine.py``'s side-by-side rows.

One DBOS workflow, ``order_fulfillment``, with the saga's 4 steps as DBOS steps (reserve
inventory, process payment, create shipment, send confirmation). If a step raises the
business error (``NoCarrierError``: shipping fails at step 3 on the fail@3 path), the steps
already done are compensated in reverse order, each compensation a DBOS step too (refund the
payment, release the inventory), and the workflow returns ``"compensated"``; otherwise
``"completed"``. DBOS checkpoints the workflow's input and status and every step's output (or
error) in its system database before going on, which is its durability guarantee; nothing of
that is turned off here.

The step bodies are the very methods of the example's ``OrderFulfillmentSaga`` (its actions
and compensations), called on one instance bound to the benchmark's no-op ``Services``, with
the same ``OrderData`` (dataclasses, ``Decimal`` total, UUIDs) as the saga-orchestrator rows.
The workflow is async (``async def`` workflow and steps), started with
``DBOS.start_workflow_async`` and awaited through its handle: DBOS runs async workflows on the
caller's event loop and its database calls in its own executor threads
(``asyncio.to_thread``), so 16, 64 or 256 workflows in flight are 16, 64 or 256 asyncio tasks,
as for saga-orchestrator.

Needs ``pip install 'saga-orchestrator[bench]'`` (DBOS Transact 3.4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from dbos import DBOS, DBOSConfig

from order_fulfillment.domain import OrderData
from order_fulfillment.saga import OrderFulfillmentSaga
from workload import NoCarrierError, Services, make_order, make_saga

APP_NAME = "saga-bench"

# The saga whose methods the steps run, bound to the current scenario's services.
_binding: OrderFulfillmentSaga = make_saga(make_order(), Services())


def bind(services: Services) -> None:
    """Make the steps call ``services`` (one scenario runs at a time)."""
    global _binding
    _binding = make_saga(make_order(), services)


@DBOS.step(name="reserve_inventory")
async def reserve_inventory(data: OrderData) -> dict[str, Any]:
    return await OrderFulfillmentSaga._reserve_inventory(_binding, data)


@DBOS.step(name="process_payment")
async def process_payment(data: OrderData) -> dict[str, Any]:
    return await OrderFulfillmentSaga._process_payment(_binding, data)


@DBOS.step(name="create_shipment")
async def create_shipment(data: OrderData) -> dict[str, Any]:
    return await OrderFulfillmentSaga._create_shipment(_binding, data)


@DBOS.step(name="send_confirmation")
async def send_confirmation(data: OrderData) -> dict[str, Any]:
    return await OrderFulfillmentSaga._send_confirmation(_binding, data)


@DBOS.step(name="release_inventory")
async def release_inventory(data: OrderData) -> None:
    await OrderFulfillmentSaga._release_inventory(_binding, data)


@DBOS.step(name="refund_payment")
async def refund_payment(data: OrderData) -> None:
    await OrderFulfillmentSaga._refund_payment(_binding, data)


@DBOS.step(name="cancel_shipment")
async def cancel_shipment(data: OrderData) -> None:
    await OrderFulfillmentSaga._cancel_shipment(_binding, data)


_Step = Callable[[OrderData], Coroutine[Any, Any, Any]]
_STEPS: tuple[tuple[_Step, _Step | None], ...] = (
    (reserve_inventory, release_inventory),
    (process_payment, refund_payment),
    (create_shipment, cancel_shipment),
    (send_confirmation, None),  # the last step: nothing after it can fail
)


@DBOS.workflow(name="order_fulfillment")
async def order_fulfillment(data: OrderData) -> str:
    done: list[_Step | None] = []
    for action, compensation in _STEPS:
        try:
            result = await action(data)
        except NoCarrierError:
            for undo in reversed(done):
                if undo is not None:
                    await undo(data)
            return "compensated"
        for key, value in (result or {}).items():
            setattr(data, key, value)
        done.append(compensation)
    return "completed"


async def run_one(data: OrderData) -> tuple[str, str]:
    """Start the workflow, wait for it; its id and result."""
    handle = await DBOS.start_workflow_async(order_fulfillment, data)
    return handle.get_workflow_id(), await handle.get_result()


def launch(url: str) -> None:
    """Create and launch DBOS on the system database ``url`` (defaults otherwise)."""
    config: DBOSConfig = {
        "name": APP_NAME,
        "system_database_url": url,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()


def destroy() -> None:
    """Shut DBOS down (closes its connections); ``launch`` may be called again."""
    DBOS.destroy()
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    # DBOS made its executor the loop's default (for asyncio.to_thread); it is shut down now.
    loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="asyncio-default"))


def verify(url: str, ids: list[str], result: str, checkpoints: int) -> str | None:
    """Check in the system database that every workflow of ``ids`` ended SUCCESS with
    ``result`` and has ``checkpoints`` step outputs recorded; a description of what is wrong,
    or None."""
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT status, count(*) FROM dbos.workflow_status"
            " WHERE workflow_uuid = ANY(%s) GROUP BY status",
            (ids,),
        ).fetchall()
        statuses = {status: count for status, count in rows}
        row = connection.execute(
            "SELECT count(*), count(*) FILTER (WHERE error IS NOT NULL)"
            " FROM dbos.operation_outputs WHERE workflow_uuid = ANY(%s)",
            (ids,),
        ).fetchone()
    outputs, errors = (row[0], row[1]) if row is not None else (0, 0)
    problems = []
    if statuses != {"SUCCESS": len(ids)}:
        problems.append(f"statuses {statuses} for {len(ids)} workflows")
    if outputs != checkpoints * len(ids):
        problems.append(f"{outputs} step checkpoints, expected {checkpoints * len(ids)}")
    if result == "compensated" and errors != len(ids):
        problems.append(f"{errors} recorded step errors, expected {len(ids)}")
    return "; ".join(problems) or None
