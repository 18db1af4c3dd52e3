"""The how-to guides' code runs, and prints what the pages say it prints.

Every ``docs/snippets/howto_*.py`` is run here, in a subprocess and a temporary directory. A
page shows a snippet's output in the fenced block that follows an HTML comment
``<!-- output: NAME -->``; the test for NAME runs the snippet and compares its output with that
block, after replacing what changes from run to run (UUIDs, timestamps, durations). Files
the pages include from the repository (the example, ``deploy/``) run elsewhere in the suite; for
them this module only checks that the line ranges the pages include still hold the code the
pages describe.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SNIPPETS = DOCS / "snippets"
GUIDES = DOCS / "how-to"
EXAMPLE_PAGES = DOCS / "example"

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?\+00:00")


def normalize(text: str, *extra: tuple[str, str]) -> list[str]:
    """Non-blank lines, with UUIDs, timestamps and the given (pattern, replacement) masked."""
    text = UUID.sub("<uuid>", text)
    text = TIMESTAMP.sub("<time>", text)
    for pattern, replacement in extra:
        text = re.sub(pattern, replacement, text)
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def shown(name: str) -> str:
    """The fenced block that follows ``<!-- output: name -->`` in one of the pages."""
    for page in sorted(GUIDES.glob("*.md")):
        match = re.search(
            rf"<!-- output: {re.escape(name)} -->\n```[a-z]*\n(.*?)```", page.read_text(), re.S
        )
        if match:
            return match.group(1)
    raise AssertionError(f"no page shows output {name!r}")


def run(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def python(snippet: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, str(SNIPPETS / snippet), *args], cwd)


# ---------------------------------------------------------------------- every snippet runs

# How each snippet is exercised: the test that runs it.
COVERED = {
    "howto_custom_adapters.py": "test_script_prints_what_the_page_shows",
    "howto_custom_adapters_test.py": "test_the_library_tests_pass_against_the_dict_repository",
    "howto_observability_logging.py": "test_script_prints_what_the_page_shows",
    "howto_observability_otel.py": "test_script_prints_what_the_page_shows",
    "howto_observability_prometheus.py": "test_script_prints_what_the_page_shows",
    "howto_operating_methods.py": "test_script_prints_what_the_page_shows",
    "howto_storage_processes.py": "test_script_prints_what_the_page_shows",
    "howto_upgrading.py": "test_script_prints_what_the_page_shows",
    "howto_workers.py": "test_workers_script_prints_what_the_page_shows",
    "howto_testing_saga.py": "test_testing_guide_tests_pass",
    "howto_testing_test.py": "test_testing_guide_tests_pass",
    "howto_testing_asyncio.py": "test_testing_guide_tests_pass",
    "howto_operating_refunds_down.py": "test_failed_sagas_are_retried_as_the_page_shows",
    "howto_webhooks.py": "test_script_prints_what_the_page_shows",
}


def test_every_howto_snippet_is_exercised() -> None:
    assert sorted(p.name for p in SNIPPETS.glob("howto_*.py")) == sorted(COVERED)


# Scripts whose whole output a page shows: (arguments, extra normalization).
SCRIPTS: dict[str, tuple[Callable[[Path], list[str]], tuple[tuple[str, str], ...]]] = {
    "howto_custom_adapters.py": (lambda tmp: [], ()),
    "howto_observability_logging.py": (lambda tmp: [], ()),
    "howto_observability_otel.py": (lambda tmp: [], ()),
    "howto_observability_prometheus.py": (lambda tmp: [], ()),
    "howto_operating_methods.py": (lambda tmp: [], ()),
    "howto_storage_processes.py": (
        lambda tmp: [str(tmp / "sagas.db")],
        ((r"in \d+ transactions", "in <n> transactions"),),
    ),
    "howto_upgrading.py": (lambda tmp: [str(tmp / "payments.db")], ()),
    "howto_webhooks.py": (lambda tmp: [str(tmp)], ()),
}


@pytest.mark.parametrize("snippet", sorted(SCRIPTS))
def test_script_prints_what_the_page_shows(snippet: str, tmp_path: Path) -> None:
    arguments, extra = SCRIPTS[snippet]
    result = python(snippet, *arguments(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert normalize(result.stdout, *extra) == normalize(shown(snippet), *extra)


def test_workers_script_prints_what_the_page_shows(postgres_url: str, tmp_path: Path) -> None:
    """Two worker processes on PostgreSQL run the submitted sagas and stop on SIGTERM."""
    result = python("howto_workers.py", postgres_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert normalize(result.stdout) == normalize(shown("howto_workers.py"))


def test_testing_guide_tests_pass(tmp_path: Path) -> None:
    """The tests of the testing guide pass, with pytest-asyncio and anyio's plugin alike."""
    for path in SNIPPETS.glob("howto_testing_*.py"):
        shutil.copy(path, tmp_path)
    result = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-v",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            "-W",
            "error",
            "howto_testing_test.py",
            "howto_testing_asyncio.py",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [
        line for line in result.stdout.splitlines() if "::test_" in line or " passed in " in line
    ]
    duration = (r"passed in \d+\.\d+s", "passed in <t>s")
    assert normalize("\n".join(lines), duration) == normalize(shown("pytest-testing"), duration)


def test_the_library_tests_pass_against_the_dict_repository(tmp_path: Path) -> None:
    """The custom-adapters page's test module, the contract kit subclassed for the page's dict
    adapters, passes when run with the page's command, and prints what the page shows."""
    page = (GUIDES / "custom-adapters.md").read_text()
    for path in SNIPPETS.glob("howto_custom_adapters*.py"):
        shutil.copy(path, tmp_path)
    command = re.search(r"```bash\npython -m pytest (.*?)\n```", page)
    assert command, "custom-adapters.md has no pytest command"
    result = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            "-W",
            "error",
            *command.group(1).split(),
        ],
        tmp_path,
        120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    lines = result.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("howto_custom_adapters_"))
    # Where the kit is installed, its line numbers and the duration (and so the width of the
    # last line) vary; the rest is as shown.
    masks = (
        (r"in \d+\.\d+s", "in <t>s"),
        (r"(SKIPPED \[\d+\]) \S*contract\S*\.py:\d+:", r"\1 <kit>:"),
        (r"=+", "="),
    )
    assert normalize("\n".join(lines[first:]), *masks) == normalize(shown("contract-tests"), *masks)


# ---------------------------------------------------------------------- operating


def test_failed_sagas_are_retried_as_the_page_shows(tmp_path: Path) -> None:
    """The refunds-down script leaves two orders FAILED; the command line lists them, and
    retries them only with --app, as the operating page shows."""
    db = str(tmp_path / "orders.db")
    cli = [sys.executable, "-m", "saga_orchestrator.cli"]
    app = ["--app", "order_fulfillment.admin:orchestrator", "--db", db]
    age = (r"(?<=  )\d+[smhd](?=  )", "<age>")

    def transcript(*results: subprocess.CompletedProcess[str], exits: bool = False) -> str:
        text = ""
        for result in results:
            text += result.stdout + result.stderr
            if exits:
                text += f"[exit {result.returncode}]\n"
        return text

    made = python("howto_operating_refunds_down.py", db, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    listed = run([*cli, "--db", db, "list", "--status", "failed"], tmp_path)
    assert normalize(transcript(made, listed), age) == [
        line for line in normalize(shown("operating-failed"), age) if not line.startswith("$ ")
    ]

    first, second = (line.split()[0] for line in made.stdout.splitlines())
    retries = [
        run([*cli, "--db", db, "retry", first], tmp_path),
        run([*cli, *app, "retry", first], tmp_path),
        run([*cli, *app, "retry", first], tmp_path),
        run([*cli, *app, "retry", second], tmp_path),
    ]
    assert normalize(transcript(*retries, exits=True)) == [
        line for line in normalize(shown("operating-retry")) if not line.startswith("$ ")
    ]

    failed = run([*cli, "--db", db, "list", "--status", "failed", "--json"], tmp_path)
    assert json.loads(failed.stdout) == []


# ---------------------------------------------------------------------- included files

# Each line range the pages include from the repository: its first and last lines, stripped.
# When the example changes, fix the ranges in the pages, then here.
RANGES = {
    ("examples/order_fulfillment/admin.py", 28, 35): (
        "@asynccontextmanager",
        "yield shop.orchestrator",
    ),
    ("examples/order_fulfillment/api/app.py", 42, 57): (
        "@asynccontextmanager",
        "background.cancel_scope.cancel()",
    ),
    ("examples/order_fulfillment/api/idempotency.py", 85, 87): (
        "def saga_id_for(order_id: UUID) -> UUID:",
        'return uuid5(_SAGA_NAMESPACE, f"order-{order_id}")',
    ),
    ("examples/order_fulfillment/api/models.py", 60, 94): (
        "class _Strict(BaseModel):",
        "shipping_address: ShippingAddressRequest",
    ),
    ("examples/order_fulfillment/api/orders.py", 74, 98): (
        "async def _run_saga(",
        'return JSONResponse(body.model_dump(mode="json"), status_code=400)',
    ),
    ("examples/order_fulfillment/api/orders.py", 148, 193): (
        "async def create_order(",
        "return response",
    ),
    ("examples/order_fulfillment/async_payments.py", 49, 121): (
        "class PaymentStatus(StrEnum):",
        "...",
    ),
    ("examples/order_fulfillment/async_payments.py", 251, 260): (
        "async def capture(self, payment_id: UUID, *, fail_reason: str | None = None) -> CaptureNotice:",  # noqa: E501
        '"""',
    ),
    ("examples/order_fulfillment/async_saga.py", 48, 69): (
        "def accept_capture(data: OrderData, payload: Mapping[str, Any]) -> dict[str, Any]:",
        "return {}",
    ),
    ("examples/order_fulfillment/async_saga.py", 72, 116): (
        "class AsyncPaymentOrderSaga(OrderFulfillmentSaga):",
        "]",
    ),
    ("examples/order_fulfillment/async_saga.py", 118, 142): (
        "async def _authorize_payment(self, data: OrderData) -> dict[str, Any]:",
        ")",
    ),
    ("examples/order_fulfillment/db.py", 88, 102): (
        "def _in_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:",
        "return await anyio.to_thread.run_sync(self._in_transaction, fn)",
    ),
    ("examples/order_fulfillment/domain.py", 19, 51): (
        "@dataclass",
        "tracking_number: str | None = None",
    ),
    ("examples/order_fulfillment/faults.py", 28, 86): (
        "@dataclass(frozen=True, kw_only=True)",
        'raise ServiceUnavailableError(f"{operation}: reply lost after the effect (injected)")',
    ),
    ("examples/order_fulfillment/saga.py", 29, 60): (
        "class OrderFulfillmentSaga(BaseSaga[OrderData]):",
        "super().__init__(order_data)",
    ),
    ("examples/order_fulfillment/saga.py", 62, 88): (
        "def define_steps(self) -> list[SagaStep[OrderData]]:",
        "]",
    ),
    ("examples/order_fulfillment/saga.py", 92, 144): (
        "async def _reserve_inventory(self, data: OrderData) -> dict[str, Any]:",
        "return {}",
    ),
    ("examples/order_fulfillment/saga.py", 148, 211): (
        "async def _release_inventory(self, data: OrderData) -> None:",
        ")",
    ),
    ("examples/order_fulfillment/saga.py", 214, 223): (
        "def _fencing() -> dict[str, Any]:",
        'return {"fencing_token": run.fencing_token, "saga_id": run.saga_id}',
    ),
    ("examples/order_fulfillment/services.py", 80, 211): (
        "# Every method also takes `fencing_token` and `saga_id` (both optional): the running step's",  # noqa: E501
        "...",
    ),
    ("examples/order_fulfillment/services.py", 217, 268): ("class _Service:", "return result"),
    ("examples/order_fulfillment/services.py", 307, 343): ("def _check_fence(", "return None"),
    ("examples/order_fulfillment/services.py", 394, 446): ("async def reserve(", "return result"),
    ("examples/order_fulfillment/services.py", 448, 476): ("async def release(", ")"),
    ("examples/order_fulfillment/services.py", 514, 522): (
        "def _release(c: sqlite3.Connection, column: str, value: str, reason: str, now: datetime) -> None:",  # noqa: E501
        ")",
    ),
    ("examples/order_fulfillment/services.py", 559, 613): ("async def charge(", "return result"),
    ("examples/order_fulfillment/services.py", 615, 645): ("async def refund(", ")"),
    ("examples/order_fulfillment/services.py", 647, 670): (
        "async def find_by_idempotency_key(",
        "return payment",
    ),
    ("examples/order_fulfillment/services.py", 713, 763): ("async def create(", "return result"),
    ("examples/order_fulfillment/services.py", 765, 799): ("async def cancel(", ")"),
    ("examples/order_fulfillment/services.py", 862, 886): ("async def send_email(", ")"),
    ("examples/order_fulfillment/shop.py", 127, 127): (
        "self.orchestrator.register(OrderFulfillmentSaga.saga_type, self.saga)",
        "self.orchestrator.register(OrderFulfillmentSaga.saga_type, self.saga)",
    ),
    ("examples/order_fulfillment/shop.py", 127, 128): (
        "self.orchestrator.register(OrderFulfillmentSaga.saga_type, self.saga)",
        "self.orchestrator.register(AsyncPaymentOrderSaga.saga_type, self.async_saga)",
    ),
    ("examples/order_fulfillment/shop.py", 153, 161): (
        "def saga(self, order: OrderData) -> OrderFulfillmentSaga:",
        ")",
    ),
    ("examples/order_fulfillment/shop.py", 163, 173): (
        "def async_saga(self, order: OrderData) -> AsyncPaymentOrderSaga:",
        ")",
    ),
    ("examples/order_fulfillment/shop.py", 199, 212): (
        "async def run_timer(self, interval_seconds: float = 1.0) -> NoReturn:",
        "await anyio.sleep(interval_seconds)",
    ),
    ("examples/order_fulfillment/shop.py", 290, 302): (
        "async def check_invariants(self) -> list[str]:",
        '"""',
    ),
    ("examples/order_fulfillment/webhooks.py", 277, 297): (
        "async def receive(self, body: bytes, signature: str | None) -> tuple[CaptureNotice, Delivery]:",  # noqa: E501
        "return notice, delivery",
    ),
}

INCLUDE = re.compile(r'--8<-- "([^":]+)(?::([^"]*))?"')


def _includes() -> list[tuple[Path, str, str]]:
    found = []
    for page in sorted([*GUIDES.glob("*.md"), *EXAMPLE_PAGES.glob("*.md")]):
        for match in INCLUDE.finditer(page.read_text()):
            found.append((page, match.group(1), match.group(2) or ""))
    return found


def test_included_line_ranges_still_hold_the_code_the_pages_describe() -> None:
    ranges = set()
    for page, path, selector in _includes():
        if not re.fullmatch(r"\d+:\d*", selector):
            continue
        start_text, _, end_text = selector.partition(":")
        lines = (ROOT / path).read_text().splitlines()
        start, end = int(start_text), int(end_text or len(lines))
        ranges.add((path, start, end))
        assert (path, start, end) in RANGES, f"{page.name}: {path}:{selector} is not in RANGES"
        first, last = RANGES[path, start, end]
        assert lines[start - 1].strip() == first, f"{page.name}: {path}:{selector} moved"
        assert lines[end - 1].strip() == last, f"{page.name}: {path}:{selector} moved"
    assert ranges == set(RANGES)


def test_included_files_and_sections_exist() -> None:
    for page, path, selector in _includes():
        target = SNIPPETS / path if (SNIPPETS / path).exists() else ROOT / path
        assert target.is_file(), f"{page.name}: {path} does not exist"
        if selector and not re.fullmatch(r"\d+:\d*", selector):
            text = target.read_text()
            assert f"# --8<-- [start:{selector}]" in text, f"{page.name}: {path}:{selector}"
            assert f"# --8<-- [end:{selector}]" in text, f"{page.name}: {path}:{selector}"
