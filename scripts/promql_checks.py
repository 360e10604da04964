"""PromQL checks for scripts/monitoring_checks.py: parse every expression with promql-parser (in the
lint tools' virtual environment; a bracket-and-quote balance check without it) and check that every
metric and label an expression selects is one services/charter defines (read from the source with
`ast`) or one Prometheus adds when it scrapes."""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path
from typing import Any

CODE = Path(__file__).resolve().parent.parent / "services" / "charter"

# labels the Prometheus Operator's scrape config puts on every series of a target (with the
# ServiceMonitor's honorLabels: true a metric's own `service` label wins over the target's)
TARGET_LABELS = frozenset({"namespace", "pod", "container", "endpoint", "service", "job", "instance"})

# Grafana's built-in variables, replaced by a duration before parsing where they stand for one
GRAFANA_DURATIONS = ("$__rate_interval", "${__rate_interval}", "$__interval", "${__interval}",
                     "$__range", "${__range}")  # fmt: skip

_METRIC_TYPES = {
    "Counter": ("_total",),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count"),
    "Summary": ("", "_sum", "_count"),
    "Info": ("_info",),
    "Enum": ("",),
}

# run with the lint tools' python (promql-parser lives there): expressions on stdin, one JSON answer
# per expression on stdout: {"error": message} or {"selectors": [[metric name, [label, ...]], ...]}
_PARSER = r"""
import json, sys
import promql_parser as p

answers = []
for expr in json.load(sys.stdin):
    try:
        tree = p.parse(expr)
    except Exception as err:
        answers.append({"error": str(err)})
        continue
    found = []
    def visit(node):
        if isinstance(node, p.VectorSelector):
            matchers = [m.name for m in node.matchers.matchers]
            name = node.name or next((m.value for m in node.matchers.matchers if m.name == "__name__"), None)
            found.append([name, [m for m in matchers if m != "__name__"]])
        return True
    p.walk(tree, visit)
    answers.append({"selectors": found})
print(json.dumps(answers))
"""


def defined_metrics(code: Path = CODE) -> dict[str, frozenset[str]]:
    """Every series name the services expose, with its labels: read from each prometheus_client
    metric constructed in `code` (a Counter `x` is exposed as `x_total`, a Histogram as `x_bucket`
    (label `le`), `x_sum`, `x_count`)."""
    series: dict[str, frozenset[str]] = {}
    for path in sorted(code.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "prometheus_client" not in text:  # collections.Counter is not a metric
            continue
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            kind = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            first = node.args[0]
            if kind not in _METRIC_TYPES or not (
                isinstance(first, ast.Constant) and isinstance(first.value, str)
            ):
                continue
            labels = _label_names(node)
            name = first.value.removesuffix("_total") if kind == "Counter" else first.value
            for suffix in _METRIC_TYPES[kind]:
                extra = {"le"} if suffix == "_bucket" else set()
                if kind == "Summary" and not suffix:
                    extra = {"quantile"}
                series[name + suffix] = frozenset(labels | extra)
    return series


def _label_names(call: ast.Call) -> set[str]:
    given = call.args[2] if len(call.args) > 2 else None
    for kw in call.keywords:
        if kw.arg == "labelnames":
            given = kw.value
    if isinstance(given, ast.List | ast.Tuple):
        return {e.value for e in given.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return set()


# -- PromQL -----------------------------------------------------------------------------------------


def promql_ready(expr: str) -> str:
    """A dashboard expression as Prometheus would get it: Grafana's interval variables as a duration
    (other `$variables` stand inside label values, where any string parses)."""
    for variable in GRAFANA_DURATIONS:
        expr = expr.replace(variable, "5m")
    return expr


def parse_all(exprs: list[str], bin_dir: Path | None) -> list[dict[str, Any]]:
    """promql-parser's verdict on each expression (in the lint tools' venv at `bin_dir`), or the
    fallback's when `bin_dir` is None."""
    if bin_dir is None:
        return [_fallback(e) for e in exprs]
    result = subprocess.run(
        [str(bin_dir / "python"), "-c", _PARSER],
        input=json.dumps(exprs),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise SystemExit(f"monitoring_checks: promql-parser failed to run: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout)


_NAME = re.compile(r"(?<![\w:$.])([a-zA-Z_:][\w:]*)\s*(\{([^}]*)\})?")
_WORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                    "unless", "offset", "inf", "nan"})  # fmt: skip


def _fallback(expr: str) -> dict[str, Any]:
    """Without promql-parser: brackets and quotes balanced, and the `charter_` selectors (name and
    matcher labels) found with a regular expression."""
    stack, quote = [], None
    for ch in expr:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in ")]}" and (not stack or "([{"[")]}".index(ch)] != stack.pop()):
            return {"error": f"unbalanced {ch!r}"}
    if quote or stack:
        return {"error": f"unclosed {quote or stack[-1]!r}"}
    found = []
    for m in _NAME.finditer(re.sub(r'"(\\.|[^"\\])*"', '""', expr)):
        name = m.group(1)
        if name.startswith("charter_"):
            labels = re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(3) or "")
            found.append([name, labels])
    return {"selectors": found}


def check_exprs(exprs: dict[str, str], bin_dir: Path | None, code: Path = CODE) -> list[str]:
    """Parse every expression (`where` -> PromQL) and check the metrics and labels it selects."""
    metrics = defined_metrics(code)
    problems = []
    wheres = list(exprs)
    for where, answer in zip(wheres, parse_all([exprs[w] for w in wheres], bin_dir), strict=True):
        if "error" in answer:
            problems.append(f"{where}: PromQL does not parse: {answer['error']}")
            continue
        for name, labels in answer["selectors"]:
            if name not in metrics:
                problems.append(f"{where}: metric {name!r} is not defined in services/charter")
                continue
            unknown = sorted(set(labels) - metrics[name] - TARGET_LABELS)
            if unknown:
                problems.append(f"{where}: {name} has no label {', '.join(unknown)}")
    return problems


# -- the dashboard -----------------------------------------------------------------------------------
