"""Offline checks of deploy/components/monitoring: the Grafana dashboard and the alert rules (issue 20).

Called by scripts/check_deploy.py (`make deploy-check`); no Grafana, Prometheus or cluster needed.

1. The dashboard (grafana-dashboard.json) is Grafana dashboard JSON as Grafana 10/11 loads it from a
   provisioning sidecar: uid, title, schemaVersion; a `datasource` template variable of type
   datasource (prometheus) that every panel and target uses as `${datasource}`; rows and panels with
   unique ids and gridPos boxes inside the 24-column grid that do not overlap; every non-row panel
   has targets with a refId (unique in the panel) and a PromQL `expr`, and a unit; every `$variable`
   is defined. No JSON schema of Grafana dashboards is published on PyPI: these are explicit checks.
2. The rules (prometheusrules.yaml): PrometheusRule objects whose groups and alert names are unique,
   each alert with a `for`, a severity label (critical, warning or info), summary, description and a
   runbook_url whose anchor is a heading of docs/reliability.md.
3. (scripts/promql_checks.py) Every PromQL expression (rules, panel targets, variable queries) is
   parsed by promql-parser (the Rust promql-parser crate behind a Python binding, PyPI; there is
   no promtool on PyPI), which also type-checks function arguments (rate() of an instant vector is
   an error). It is installed with
   the lint tools (deploy/checks/requirements.txt) and run in their virtual environment; without it
   (`check_deploy.py --no-lint`) the expressions only get a bracket-and-quote balance check.
4. Every metric an expression selects is one that services/charter defines (prometheus_client
   Counter, Gauge, Histogram, Summary, Info, Enum, read from the source with `ast`, with the series
   names each type exposes: `_total`, `_bucket`/`_sum`/`_count`, ...), and every label a selector
   matches on is one of that metric's labels or a label Prometheus adds when it scrapes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from promql_checks import CODE, check_exprs, defined_metrics, promql_ready  # noqa: F401 - defined_metrics: the tests' entry

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "components" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RULES = MONITORING / "prometheusrules.yaml"
RUNBOOK = ROOT / "docs" / "reliability.md"

SEVERITIES = frozenset({"critical", "warning", "info"})
GRAFANA_BUILTINS = frozenset({"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s",
                              "__range_ms", "__dashboard", "__from", "__to", "__name"})  # fmt: skip
PANEL_TYPES = frozenset({"row", "timeseries", "stat", "gauge", "bargauge", "table", "heatmap",
                         "state-timeline", "status-history", "piechart", "barchart", "text"})  # fmt: skip
GRID_COLUMNS = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

_DURATION = re.compile(r"^[0-9]+(ms|s|m|h|d|w|y)$")
_VARIABLE = re.compile(r"\$\{?(\w+)")
_SELECTOR = {"type": "object", "additionalProperties": {"type": "string"}}
_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
        "expr": {"type": ["string", "integer"]},
        "for": {"type": "string", "pattern": _DURATION.pattern},
        "keep_firing_for": {"type": "string", "pattern": _DURATION.pattern},
        "labels": _SELECTOR,
        "annotations": _SELECTOR,
    },
}


def crd_schema(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A custom resource's JSON schema: apiVersion, kind, metadata (a DNS-1123 name, string labels and
    annotations) and `spec`, nothing else."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    "namespace": {"type": "string"},
                    "labels": _SELECTOR,
                    "annotations": _SELECTOR,
                },
            },
            "spec": spec,
        },
    }


# kubernetes-validate knows no custom resources: check_deploy.py validates these with the subset of
# the Prometheus Operator's CRD schema that deploy/ writes (anything else is an error)
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): crd_schema(
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string", "pattern": _DURATION.pattern},
                            "rules": {"type": "array", "minItems": 1, "items": _RULE},
                        },
                    },
                }
            },
        },
    ),
}


# -- the metrics the code defines ----------------------------------------------------------------


def check_dashboard(dashboard: Path = DASHBOARD) -> tuple[list[str], dict[str, str]]:
    """Structural findings, and the PromQL of every target and variable query by where it is."""
    where = dashboard.name
    try:
        board = json.loads(dashboard.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        return [f"{where}: not JSON: {err}"], {}
    problems: list[str] = []
    exprs: dict[str, str] = {}
    if not isinstance(board, dict):
        return [f"{where}: not a JSON object"], {}
    for key, kind in (("uid", str), ("title", str), ("schemaVersion", int), ("panels", list)):
        if not isinstance(board.get(key), kind):
            problems.append(f"{where}: {key} missing or not a {kind.__name__}")
    if isinstance(board.get("uid"), str) and not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"]):
        problems.append(f"{where}: uid {board['uid']!r}: at most 40 letters, digits, - or _")
    if isinstance(board.get("schemaVersion"), int) and board["schemaVersion"] < 36:
        problems.append(f"{where}: schemaVersion {board['schemaVersion']} predates Grafana 9's (36)")

    variables = (board.get("templating") or {}).get("list") or []
    names = {v.get("name") for v in variables}
    source = next((v for v in variables if v.get("name") == "datasource"), None)
    if source is None or source.get("type") != "datasource" or source.get("query") != "prometheus":
        problems.append(f"{where}: no template variable `datasource` of type datasource, query prometheus")
    for v in variables:
        if v.get("type") == "query":
            here = f"{where}: variable {v.get('name')}"
            if v.get("datasource") != DATASOURCE:
                problems.append(f"{here}: datasource is not {DATASOURCE}")
            query = v.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", query or "")
            if m is None:
                problems.append(f"{here}: query is not label_values(<selector>, <label>)")
            else:
                exprs[here] = m.group(1)

    seen_ids: set[int] = set()
    boxes: list[tuple[str, dict[str, int]]] = []
    flat = []
    for panel in board.get("panels") or []:
        flat.append(panel)
        flat.extend(panel.get("panels") or [] if panel.get("type") == "row" else [])
    for panel in flat:
        pid, title = panel.get("id"), panel.get("title")
        here = f"{where}: panel {pid} {title!r}"
        if not isinstance(pid, int) or pid in seen_ids:
            problems.append(f"{here}: id missing or not unique")
        seen_ids.add(pid)
        if panel.get("type") not in PANEL_TYPES:
            problems.append(f"{here}: type {panel.get('type')!r} is not one of {sorted(PANEL_TYPES)}")
        if not title:
            problems.append(f"{here}: no title")
        grid = panel.get("gridPos")
        if not isinstance(grid, dict) or not all(isinstance(grid.get(k), int) for k in "hwxy"):
            problems.append(f"{here}: gridPos needs integer h, w, x, y")
        elif grid["w"] < 1 or grid["h"] < 1 or grid["x"] < 0 or grid["x"] + grid["w"] > GRID_COLUMNS:
            problems.append(f"{here}: gridPos {grid} is outside the {GRID_COLUMNS}-column grid")
        else:
            for other, box in boxes:
                if _overlap(grid, box):
                    problems.append(f"{here}: gridPos overlaps {other}")
            boxes.append((f"panel {pid}", grid))
        if panel.get("type") == "row":
            continue
        if panel.get("datasource") != DATASOURCE:
            problems.append(f"{here}: datasource is not {DATASOURCE}")
        if not isinstance(((panel.get("fieldConfig") or {}).get("defaults") or {}).get("unit"), str):
            problems.append(f"{here}: no unit (fieldConfig.defaults.unit)")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{here}: no targets")
        refs = [t.get("refId") for t in targets]
        if None in refs or len(set(refs)) != len(refs):
            problems.append(f"{here}: targets need unique refIds")
        for t in targets:
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{here}: target {t.get('refId')} has no expr")
                continue
            if t.get("datasource", DATASOURCE) != DATASOURCE:
                problems.append(f"{here}: target {t.get('refId')}: datasource is not {DATASOURCE}")
            for name in _VARIABLE.findall(expr):
                if name not in names and name not in GRAFANA_BUILTINS:
                    problems.append(f"{here}: target {t.get('refId')}: ${name} is not a variable")
            exprs[f"{here} target {t.get('refId')}"] = promql_ready(expr)
    return problems, exprs


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


# -- the rules --------------------------------------------------------------------------------------


def anchors(markdown: Path = RUNBOOK) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    found = set()
    for line in markdown.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            found.add(slug)
    return found


def check_rules(rules: Path = RULES, runbook: Path = RUNBOOK) -> tuple[list[str], dict[str, str]]:
    where = rules.name
    try:
        docs = [d for d in yaml.safe_load_all(rules.read_text(encoding="utf-8")) if d]
    except yaml.YAMLError as err:
        return [f"{where}: not YAML: {err}"], {}
    problems: list[str] = []
    exprs: dict[str, str] = {}
    headings = anchors(runbook)
    groups: set[str] = set()
    alerts: set[str] = set()
    for doc in docs:
        if doc.get("kind") != "PrometheusRule":
            problems.append(f"{where}: {doc.get('kind')} is not a PrometheusRule")
            continue
        for group in (doc.get("spec") or {}).get("groups") or []:
            if group.get("name") in groups:
                problems.append(f"{where}: group {group.get('name')!r} twice")
            groups.add(group.get("name"))
            for rule in group.get("rules") or []:
                name = rule.get("alert") or rule.get("record")
                here = f"{where}: {name}"
                exprs[here] = str(rule.get("expr", ""))
                if "alert" not in rule:
                    continue
                if name in alerts:
                    problems.append(f"{here}: alert name used twice")
                alerts.add(name)
                if not _DURATION.match(str(rule.get("for", ""))):
                    problems.append(f"{here}: no `for` duration")
                if (rule.get("labels") or {}).get("severity") not in SEVERITIES:
                    problems.append(f"{here}: labels.severity is not one of {sorted(SEVERITIES)}")
                notes = rule.get("annotations") or {}
                for key in ("summary", "description", "runbook_url"):
                    if not notes.get(key):
                        problems.append(f"{here}: no {key} annotation")
                url = notes.get("runbook_url") or ""
                page, _, anchor = url.partition("#")
                if url and (not page.endswith(runbook.name) or anchor not in headings):
                    problems.append(f"{here}: runbook_url {url!r} is no heading of {runbook.name}")
    return problems, exprs


# -- everything -------------------------------------------------------------------------------------


def check(
    bin_dir: Path | None,
    dashboard: Path = DASHBOARD,
    rules: Path = RULES,
    code: Path = CODE,
    runbook: Path = RUNBOOK,
) -> list[str]:
    """Every finding over the dashboard and the rules; `bin_dir`: the lint tools' venv (promql-parser),
    None for the fallback expression check."""
    board_problems, board_exprs = check_dashboard(dashboard)
    rule_problems, rule_exprs = check_rules(rules, runbook)
    listed = yaml.safe_load((MONITORING / "kustomization.yaml").read_text(encoding="utf-8"))
    generated = [f for g in listed.get("configMapGenerator") or [] for f in g.get("files") or []]
    wiring = []
    if not any(f.split("=")[-1] == DASHBOARD.name for f in generated):
        wiring.append(f"{MONITORING.name}/kustomization.yaml: no configMapGenerator ships {DASHBOARD.name}")
    if RULES.name not in (listed.get("resources") or []):
        wiring.append(f"{MONITORING.name}/kustomization.yaml: {RULES.name} is not a resource")
    return wiring + board_problems + rule_problems + check_exprs({**board_exprs, **rule_exprs}, bin_dir, code)
