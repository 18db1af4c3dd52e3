"""The demo's second part: orders paid asynchronously, their captures told by webhook.

Each order runs `AsyncPaymentOrderSaga`: it parks at ``confirm_capture`` until the provider's
signed notice comes, through the same receiver as the HTTP endpoint
(`Shop.webhooks.receive`). Orders take turns through four scenarios:

- **on time**: the provider captures, its webhook comes at once and is then sent again (a
  provider retrying): ``consumed``, then ``duplicate``; the order completes. (The first answer
  is ``stored`` when the timer's pass was carrying the saga on at that instant: that pass
  consumes it. Either way the saga's wait step records the notice's event id.);
- **forged first**: a notice with the amount changed and the original signature comes first:
  refused, nothing delivered (the saga still waits, its inbox empty); the real one follows;
- **capture failed**: the provider could not capture: ``consumed``, the saga compensates;
- **late**: the provider captures, but its webhook comes only after the wait timed out: the
  timer (`Shop.run_timer`, ``wake_due``) compensated the order meanwhile, refunding the
  capture, and the webhook is ``ignored``.

Nothing here sleeps to synchronise: the timer drives the timeouts, and the late webhooks are
sent once their order's saga is terminal (``orchestrator.wait``). Every scenario's answers
are checked; a surprise is reported with the books' problems and breaks the verdict.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import anyio

from saga_orchestrator import SagaResult, SagaStatus, StepStatus
from saga_orchestrator.protocols import SagaInbox

from .domain import OrderData
from .shop import Shop
from .webhooks import WebhookSignatureError, sign

TIMER_INTERVAL_SECONDS = 0.05
"""How often the demo's timer looks for sagas whose wait is over."""

ON_TIME, FORGED_FIRST, CAPTURE_FAILED, LATE = "on time", "forged first", "capture failed", "late"
ROTATION = (ON_TIME, FORGED_FIRST, ON_TIME, CAPTURE_FAILED, ON_TIME, LATE)
"""The scenario of each order, in turn."""
REFUSED = "refused before the wait"
LABELS = {
    ON_TIME: "captured, webhook on time, sent twice",
    FORGED_FIRST: "captured, a forged webhook first",
    CAPTURE_FAILED: "capture failed",
    LATE: "captured, webhook after the timeout",
    REFUSED: "refused before the wait",
}
TAKEN = frozenset({"consumed", "stored"})
"""The answers to a notice the saga takes: consumed in the delivery's call, or stored while
another driver (the timer's pass) had the saga, which consumes it."""
EXPECTED: dict[str, list[frozenset[str]]] = {
    ON_TIME: [TAKEN, frozenset({"duplicate"})],
    FORGED_FIRST: [frozenset({"refused"}), TAKEN],
    CAPTURE_FAILED: [TAKEN],
    LATE: [frozenset({"ignored"})],
    REFUSED: [],
}
"""What the webhooks of each scenario may be answered, in order."""


@dataclass
class Outcome:
    """One order of the part: its scenario, what its webhooks were answered, its result."""

    scenario: str
    result: SagaResult[Any]
    answers: list[str] = field(default_factory=list)
    event_id: str | None = None
    """The genuine notice's event id."""
    surprises: list[str] = field(default_factory=list)


async def run_async_payments(
    shop: Shop, orders: Sequence[OrderData], *, concurrency: int
) -> list[Outcome]:
    """Place ``orders`` paid asynchronously, play the provider for each, and return what
    happened; the shop's timer runs meanwhile."""
    secret = shop.webhooks.secret
    limiter = anyio.CapacityLimiter(concurrency)
    outcomes: list[Outcome] = []

    async def deliver(outcome: Outcome, body: bytes, signature: str) -> None:
        try:
            _, delivery = await shop.webhooks.receive(body, signature)
        except WebhookSignatureError:
            outcome.answers.append("refused")
        else:
            outcome.answers.append(delivery.status.value)

    async def one(order: OrderData, scenario: str) -> None:
        async with limiter:
            result = await shop.place(order, payment="async")
            if result.status is not SagaStatus.RUNNING:  # declined, or a fault: compensated
                outcomes.append(Outcome(REFUSED, result))
                return
            outcome = Outcome(scenario, result)
            outcomes.append(outcome)
            payment = await shop.async_payments.find_by_order(order.order_id)
            assert payment is not None
            fail = "card expired" if scenario == CAPTURE_FAILED else None
            notice = await shop.async_payments.capture(payment.id, fail_reason=fail)
            outcome.event_id = notice.event_id
            body = notice.body()
            signature = sign(body, secret)
            if scenario == FORGED_FIRST:
                forged = dataclasses.replace(notice, amount=Decimal("0.01")).body()
                await deliver(outcome, forged, signature)
                await _still_waiting(shop, outcome)
        if scenario == LATE:  # the timer ends the wait; then the webhook comes
            try:
                await shop.orchestrator.wait(
                    result.saga_id,
                    timeout_seconds=shop.capture_timeout_seconds + 60,
                    poll_seconds=TIMER_INTERVAL_SECONDS,
                )
            except TimeoutError:
                outcome.surprises.append("late: its wait did not end a minute after its time")
        await deliver(outcome, body, signature)
        if scenario == ON_TIME:
            await deliver(outcome, body, signature)  # the provider sends it again

    async with anyio.create_task_group() as timer:
        timer.start_soon(shop.run_timer, TIMER_INTERVAL_SECONDS)
        async with anyio.create_task_group() as tg:
            for index, order in enumerate(orders):
                tg.start_soon(one, order, ROTATION[index % len(ROTATION)])
        timer.cancel_scope.cancel()

    for outcome in outcomes:
        stored = await shop.orchestrator.get(outcome.result.saga_id)
        assert stored is not None
        outcome.result = SagaResult.from_context(stored)
        _check(outcome)
    return outcomes


async def finish_waiting(shop: Shop, waiting: Sequence[SagaResult[Any]]) -> list[SagaResult[Any]]:
    """Run the timer until the sagas ``recover()`` left waiting for a capture end their wait
    (their webhook will not come: the process that would have sent it is gone). Sagas whose
    wait lasts more than a minute more are left waiting (the books then say so)."""
    results: list[SagaResult[Any]] = []
    now = shop.orchestrator.clock.now()

    async def finish(saga_id: Any, seconds: float) -> None:
        try:
            result = await shop.orchestrator.wait(
                saga_id, timeout_seconds=seconds, poll_seconds=TIMER_INTERVAL_SECONDS
            )
        except TimeoutError:
            return
        results.append(result)

    async with anyio.create_task_group() as timer:
        timer.start_soon(shop.run_timer, TIMER_INTERVAL_SECONDS)
        async with anyio.create_task_group() as tg:
            for result in waiting:
                until = next((s.wait_until for s in result.steps if s.wait_until), None)
                left = (until - now).total_seconds() if until is not None else float("inf")
                if left <= 60:
                    tg.start_soon(finish, result.saga_id, max(left, 0) + 10)
        timer.cancel_scope.cancel()
    return results


async def _still_waiting(shop: Shop, outcome: Outcome) -> None:
    """After a refused webhook: the saga must still wait, with nothing kept for it."""
    saga_id = outcome.result.saga_id
    stored = await shop.orchestrator.get(saga_id)
    assert stored is not None
    state = stored.steps[stored.current_step_index]
    if state.status is not StepStatus.WAITING:
        outcome.surprises.append(f"after a forged webhook, its wait is {state.status.value}")
    repository = shop.repository
    inbox = await repository.saga_events(saga_id) if isinstance(repository, SagaInbox) else []
    if inbox:
        outcome.surprises.append(f"a forged webhook was delivered: {len(inbox)} event(s) kept")


def _check(outcome: Outcome) -> None:
    order_id = outcome.result.data.order_id
    expected = EXPECTED[outcome.scenario]
    if len(outcome.answers) != len(expected) or any(
        answer not in allowed for answer, allowed in zip(outcome.answers, expected, strict=False)
    ):
        wanted = " then ".join("/".join(sorted(allowed)) for allowed in expected)
        outcome.surprises.append(
            f"webhooks answered {outcome.answers}, expected {wanted} ({outcome.scenario})"
        )
    consumed = {state.event_id for state in outcome.result.steps}
    if outcome.scenario in (ON_TIME, FORGED_FIRST, CAPTURE_FAILED) and (
        outcome.event_id not in consumed
    ):
        outcome.surprises.append(f"{outcome.scenario}: its notice was never consumed")
    if outcome.scenario == LATE and outcome.event_id in consumed:
        outcome.surprises.append("late: its notice was consumed after the timeout")
    status = outcome.result.status
    if outcome.scenario in (CAPTURE_FAILED, LATE, REFUSED) and status is not SagaStatus.COMPENSATED:
        outcome.surprises.append(f"{outcome.scenario}: the order is {status.value}")
    outcome.surprises[:] = [f"order {order_id}: {text}" for text in outcome.surprises]


def report_async(outcomes: Sequence[Outcome], timeout_seconds: float) -> list[str]:
    """Print the part's table; return its surprises (empty when every answer was expected)."""
    print(
        f"\nasynchronous payments: {len(outcomes)} orders, each capture confirmed by a signed "
        f"webhook within {timeout_seconds:g} s"
    )
    print(f"{'scenario':<40}{'orders':>7}  {'webhook answers':<36}outcome")
    for scenario in (ON_TIME, FORGED_FIRST, CAPTURE_FAILED, LATE, REFUSED):
        group = [o for o in outcomes if o.scenario == scenario]
        if not group:
            continue
        answers = Counter(a for o in group for a in o.answers)
        results = Counter(o.result.status.value for o in group)
        print(
            f"{LABELS[scenario]:<40}{len(group):>7}  {_counts(answers) or '-':<36}"
            f"{_counts(results)}"
        )
    if any("stored" in o.answers for o in outcomes):
        print("(stored: the timer's pass had the saga at that instant, and consumed the notice)")
    surprises = [text for o in outcomes for text in o.surprises]
    if not surprises:
        print(
            "every webhook answered as expected: on time consumed, resent duplicate, forged "
            "refused, late ignored"
        )
    return surprises


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} x{n}" for name, n in counter.most_common())
