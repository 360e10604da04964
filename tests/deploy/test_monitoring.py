"""The monitoring component's dashboard and alert rules pass scripts/monitoring_checks.py, and each
check catches the break it is there for: every case below breaks one thing in a copy of the sources
and expects the finding that names it (issue 20)."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import SCRIPTS

Obj = dict[str, Any]


@pytest.fixture(scope="session")
def mon() -> ModuleType:
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    import monitoring_checks

    return monitoring_checks


@pytest.fixture(scope="session")
def parser_bin(checker: ModuleType) -> Path:
    """The lint tools' bin folder (promql-parser), installed on first use as check_deploy does."""
    return checker.ensure_tools(checker.TOOLS_VENV)


def broken_copy(mon: ModuleType, tmp_path: Path, dashboard=None, rules=None) -> dict[str, Path]:
    """Copies of the dashboard and rules in tmp_path, each edited by its function when given."""
    board = json.loads(mon.DASHBOARD.read_text())
    if dashboard:
        dashboard(board)
    docs = list(yaml.safe_load_all(mon.RULES.read_text()))
    if rules:
        rules(docs)
    (tmp_path / "grafana-dashboard.json").write_text(json.dumps(board))
    (tmp_path / "prometheusrules.yaml").write_text(yaml.safe_dump_all(docs))
    return {"dashboard": tmp_path / "grafana-dashboard.json", "rules": tmp_path / "prometheusrules.yaml"}


def panel(board: Obj, title: str) -> Obj:
    return next(p for p in board["panels"] if p.get("title") == title)


def alert(docs: list[Obj], name: str) -> Obj:
    rules = [r for d in docs for g in d["spec"]["groups"] for r in g["rules"]]
    return next(r for r in rules if r.get("alert") == name)


def test_metrics_are_read_from_the_code(mon: ModuleType) -> None:
    metrics = mon.defined_metrics()
    assert metrics["charter_rpc_total"] == {"service", "method", "code"}
    assert metrics["charter_judge_confidence_bucket"] == {"le"}
    assert {"charter_judge_confidence_sum", "charter_judge_confidence_count"} <= set(metrics)
    assert metrics["charter_health_serving"] == {"service"}
    assert metrics["charter_review_queue_depth"] == frozenset()
    assert "charter_rpc_total_total" not in metrics and "charter_rpc_duration_seconds" not in metrics


def test_sources_are_clean_with_the_fallback(mon: ModuleType) -> None:
    assert mon.check(None) == []


@pytest.mark.integration
def test_sources_are_clean_with_promql_parser(mon: ModuleType, parser_bin: Path) -> None:
    assert mon.check(parser_bin) == []


@pytest.mark.integration
@pytest.mark.parametrize("with_parser", [True, False], ids=["promql-parser", "fallback"])
def test_unknown_metric_in_the_dashboard_is_rejected(
    mon: ModuleType, parser_bin: Path, tmp_path: Path, with_parser: bool
) -> None:
    def typo(board: Obj) -> None:
        target = panel(board, "Judge labels/s by status")["targets"][0]
        target["expr"] = target["expr"].replace("charter_judge_labels_total", "charter_judge_label_total")

    paths = broken_copy(mon, tmp_path, dashboard=typo)
    found = mon.check(parser_bin if with_parser else None, **paths)
    assert len(found) == 1, found
    assert (
        "'Judge labels/s by status' target A: metric 'charter_judge_label_total' is not defined" in found[0]
    )


@pytest.mark.integration
def test_unknown_label_and_unknown_metric_in_a_rule_are_rejected(
    mon: ModuleType, parser_bin: Path, tmp_path: Path
) -> None:
    def edit(docs: list[Obj]) -> None:
        alert(docs, "CharterServiceNotServing")["expr"] = 'charter_health_serving{grpc_service="x"} == 0'
        alert(docs, "CharterConstitutionRejected")["expr"] = "max(charter_constitution_rejects) == 1"

    found = mon.check(parser_bin, **broken_copy(mon, tmp_path, rules=edit))
    assert found == [
        "prometheusrules.yaml: CharterServiceNotServing: charter_health_serving has no label grpc_service",
        "prometheusrules.yaml: CharterConstitutionRejected: metric 'charter_constitution_rejects' is not "
        "defined in services/charter",
    ]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("expr", "error"),
    [
        ("sum(rate(charter_rpc_total[5m])", "unclosed left parenthesis"),
        ("rate(charter_rpc_total) > 0", "expected type matrix in call to function 'rate'"),
        ("charter_rpc_total > > 1", ""),
    ],
)
def test_a_broken_rule_expression_is_rejected(
    mon: ModuleType, parser_bin: Path, tmp_path: Path, expr: str, error: str
) -> None:
    def edit(docs: list[Obj]) -> None:
        alert(docs, "CharterHighErrorRate")["expr"] = expr

    found = mon.check(parser_bin, **broken_copy(mon, tmp_path, rules=edit))
    assert len(found) == 1, found
    assert found[0].startswith("prometheusrules.yaml: CharterHighErrorRate: PromQL does not parse: ")
    assert error in found[0]


def test_the_fallback_still_catches_unbalanced_brackets(mon: ModuleType, tmp_path: Path) -> None:
    def edit(docs: list[Obj]) -> None:
        alert(docs, "CharterHighErrorRate")["expr"] = "sum(rate(charter_rpc_total[5m])"

    found = mon.check(None, **broken_copy(mon, tmp_path, rules=edit))
    assert found == ["prometheusrules.yaml: CharterHighErrorRate: PromQL does not parse: unclosed '('"]


BOARD_BREAKS: list[tuple[str, Callable[[Obj], None], str]] = [
    ("duplicate id", lambda b: panel(b, "Judge status mix").update(id=2), "id missing or not unique"),
    ("overlap", lambda b: panel(b, "Judge status mix")["gridPos"].update(x=6), "gridPos overlaps panel 2"),
    ("off grid", lambda b: panel(b, "Queue depth")["gridPos"].update(x=20), "outside the 24-column grid"),
    ("no unit", lambda b: panel(b, "Queue depth")["fieldConfig"]["defaults"].pop("unit"), "no unit"),
    ("no expr", lambda b: panel(b, "Queue depth")["targets"][0].pop("expr"), "target A has no expr"),
    (
        "fixed datasource",
        lambda b: panel(b, "Queue depth").update(datasource={"type": "prometheus", "uid": "prom"}),
        "datasource is not",
    ),
    (
        "undefined variable",
        lambda b: panel(b, "Queue depth")["targets"][0].update(
            expr='max(charter_review_queue_depth{x="$cluster"})'
        ),
        "$cluster is not a variable",
    ),
    (
        "no datasource variable",
        lambda b: b["templating"]["list"].pop(0),
        "no template variable `datasource`",
    ),
    ("old schema", lambda b: b.update(schemaVersion=16), "schemaVersion 16"),
]


@pytest.mark.parametrize(
    ("edit", "expected"), [b[1:] for b in BOARD_BREAKS], ids=[b[0] for b in BOARD_BREAKS]
)
def test_each_dashboard_check_catches_its_break(
    mon: ModuleType, tmp_path: Path, edit: Callable[[Obj], None], expected: str
) -> None:
    found = mon.check(None, **broken_copy(mon, tmp_path, dashboard=edit))
    assert any(expected in f for f in found), found


RULE_BREAKS: list[tuple[str, Callable[[Obj], None], str]] = [
    ("no severity", lambda r: r["labels"].pop("severity"), "labels.severity is not one of"),
    ("no for", lambda r: r.pop("for"), "no `for` duration"),
    ("no summary", lambda r: r["annotations"].pop("summary"), "no summary annotation"),
    (
        "runbook anchor missing",
        lambda r: r["annotations"].update(runbook_url="docs/reliability.md#nowhere"),
        "is no heading of reliability.md",
    ),
]


@pytest.mark.parametrize(("edit", "expected"), [b[1:] for b in RULE_BREAKS], ids=[b[0] for b in RULE_BREAKS])
def test_each_rule_check_catches_its_break(
    mon: ModuleType, tmp_path: Path, edit: Callable[[Obj], None], expected: str
) -> None:
    found = mon.check(
        None, **broken_copy(mon, tmp_path, rules=lambda d: edit(alert(d, "CharterHighErrorRate")))
    )
    assert len(found) == 1, found
    assert found[0].startswith("prometheusrules.yaml: CharterHighErrorRate: ") and expected in found[0]


@pytest.mark.integration
def test_the_render_ships_dashboard_and_rules(
    checker: ModuleType, mon: ModuleType, render_of: Callable[[str], list[Obj]]
) -> None:
    objects = render_of("overlays/gpu-full")
    configmap = next(
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "charter-grafana-dashboard"
    )
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["charter.json"]) == json.loads(mon.DASHBOARD.read_text())
    monitor = next(
        o for o in objects if o["kind"] == "ServiceMonitor" and o["metadata"]["name"] == "charter-services"
    )
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True  # the metrics' own `service` label
    rule = next(o for o in objects if o["kind"] == "PrometheusRule")
    assert checker.validate_schemas([rule, configmap]) == []

    broken = copy.deepcopy(rule)
    broken["spec"]["groups"][0]["rules"][0]["fro"] = "15m"  # a typo of `for`
    found = "\n".join(checker.validate_schemas([broken]))
    assert "PrometheusRule/charter-alerts: spec.groups.0.rules.0: Additional properties" in found
