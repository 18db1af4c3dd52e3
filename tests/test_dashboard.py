"""The Grafana dashboard queries only metrics the example really exposes, with their labels.

The example demo runs in a real process and writes its metrics; every metric and label
matcher in deploy/grafana/order-fulfillment.json (and in the specification's four panels,
quoted below verbatim) must find samples there; `promtool check metrics` must accept the file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REQUIRE_SERVICES

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "order-fulfillment.json"

SPEC_QUERIES = [
    'sum(rate(saga_executions_total{saga_type="order_fulfillment", status="completed"}[5m]))\n/\n'
    'sum(rate(saga_executions_total{saga_type="order_fulfillment"}[5m]))',
    "histogram_quantile(0.95,\n"
    '  sum(rate(saga_duration_seconds_bucket{saga_type="order_fulfillment"}[5m])) by (le)\n)',
    'sum(rate(saga_step_failures_total{saga_type="order_fulfillment"}[5m])) by (step)',
    'sum(saga_states{saga_type="order_fulfillment", status="compensating"})',
]

SELECTOR = re.compile(r"\b([a-z_:][a-z0-9_:]*)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*=\s*"([^"]*)"')
GROUPING = re.compile(r"by \(([^)]*)\)")


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Metrics written by a real run of the example (with failures and compensations)."""
    out = tmp_path_factory.mktemp("metrics") / "metrics.prom"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "order_fulfillment",
            "--orders",
            "150",
            "--quiet",
            "--metrics-out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return out.read_text()


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return [q.replace("$saga_type", "order_fulfillment") for q in queries]


def _samples(exposition: str) -> list[tuple[str, dict[str, str]]]:
    return [
        (sample.name, sample.labels)
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    ]


@pytest.mark.slow
@pytest.mark.parametrize("query", SPEC_QUERIES + _dashboard_queries())
def test_every_query_finds_its_metric_and_labels(query: str, exposition: str) -> None:
    """Each selector matches samples; each grouping label exists on them."""
    samples = _samples(exposition)
    selectors = SELECTOR.findall(query)
    assert selectors, f"no metric selector in {query!r}"
    grouping = {label.strip() for match in GROUPING.findall(query) for label in match.split(",")}
    for metric, matchers in selectors:
        wanted = dict(MATCHER.findall(matchers))
        found = [
            labels
            for name, labels in samples
            if name == metric and all(labels.get(k) == v for k, v in wanted.items())
        ]
        assert found, f"{metric}{{{matchers}}} has no sample in the exposition"
        for label in grouping:
            assert all(label in labels for labels in found), f"{metric} lacks label {label}"


def test_dashboard_has_the_specs_panels_and_more() -> None:
    """The spec's four panels, by title, plus step latency and compensation rate."""
    titles = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    assert titles[:4] == [
        "Saga Completion Rate",
        "Average Saga Duration",
        "Step Failure Rate",
        "Active Compensations",
    ]
    assert {"Step Latency (p50 / p95)", "Compensation Rate"} <= set(titles)
    normalized = {" ".join(q.split()) for q in _dashboard_queries()}
    for query in SPEC_QUERIES:
        assert " ".join(query.split()) in normalized


@pytest.mark.slow
def test_promtool_accepts_the_exposition(exposition: str, tmp_path: Path) -> None:
    """Prometheus' own linter finds nothing wrong with the metrics' names, help and types."""
    promtool = shutil.which("promtool")
    if promtool is None:
        reason = "promtool not installed (Debian package prometheus; scripts/bootstrap adds it)"
        if REQUIRE_SERVICES:
            pytest.fail(reason)
        pytest.skip(reason)
    check = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
