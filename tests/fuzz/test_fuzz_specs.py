"""Fuzzed spec files (issue 18, "Fuzz"): constitution files (the loader and the registry that serves
them), pipeline specs (`charter run`'s loader), trainer run specs (`charter train`'s file loader, then
the trainer service's checks: `check_spec_sizes`, `spec_from_proto`, `spec.check` with the service's
limits) and RunSpec messages straight from the proto. Each is answered with a value or one of the
documented errors — Charter's own (`CharterError`: InvalidArgument, NotFound, …, a `ConstitutionError`
for constitutions) or pydantic's `ValidationError`, which the server maps to INVALID_ARGUMENT — never
another exception; and while a spec is checked, an audit hook sees no file opened outside the allowed
roots (trainer.allowed_roots, the temporary folder, the checkout, the python install) and no
connection or name lookup for another host."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from charter.api.trainer import spec_from_proto
from charter.api.trainer_limits import check_spec_sizes
from charter.cli.train import load_spec as load_run_spec
from charter.constitution.loader import ConstitutionError, load_constitution
from charter.constitution.registry import ConstitutionRegistry
from charter.core.errors import CharterError, InvalidArgument
from charter.pipelines.spec import load_spec as load_pipeline_spec
from charter.trainer.admission import Limits
from charter.trainer.spec import check
from charter_proto.trainer.v1 import trainer_pb2 as tp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.fuzz import audit
from tests.fuzz.documents import documents, fan_out
from tests.fuzz.strategies import requests
from tests.support import ROOT, subprocess_env
from tests.support.trainer import roots_for, trainer_settings

pytestmark = pytest.mark.integration

EXAMPLES = 300
SETTINGS = settings(
    derandomize=True, database=None, deadline=None, max_examples=EXAMPLES, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)  # fmt: skip
DOCUMENTED = (CharterError, ValidationError)
WORK = Path(tempfile.mkdtemp(prefix="charter-fuzz-specs-"))
"""Where fuzzed files are written (the checks may read there)."""
LIMITS = Limits.from_settings(trainer_settings(WORK).trainer)
ROOTS = [*roots_for(WORK), *map(str, LIMITS.roots), tempfile.gettempdir()]
COUNTS: dict[str, int] = {}


def seeds(pattern: str) -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted(ROOT.glob(pattern))]


CONSTITUTIONS = seeds("constitutions/*.yaml")
PIPELINES = seeds("pipelines/*.yaml")
RUN_SPECS = seeds("training/*.yaml")


def write(raw: bytes, suffix: str) -> Path:
    folder = Path(tempfile.mkdtemp(dir=WORK))
    path = folder / f"spec{suffix}"
    path.write_bytes(raw)
    return path


def checked(kind: str, action, allowed: tuple[type[BaseException], ...] = DOCUMENTED) -> Any:
    """Run `action` under the audit hook: its result, or None for an `allowed` error it raised."""
    COUNTS[kind] = COUNTS.get(kind, 0) + 1
    with audit.recording(ROOTS) as seen:
        try:
            result = action()
        except allowed:
            result = None
    assert not seen.opened_outside, f"checking a {kind} opened {seen.opened_outside}"
    assert not seen.remote, f"checking a {kind} reached another host: {seen.remote}"
    return result


def check_run_spec(spec: tp.RunSpec) -> Any:
    """What StartRun does before anything is recorded."""
    check_spec_sizes(spec)
    return check(spec_from_proto(spec), limits=LIMITS)


@pytest.fixture(scope="module", autouse=True)
def warm_up():
    """Load what a spec check imports (TRL, torch) before the audit hook records."""
    from charter.trainer.runs import ALGORITHMS
    from charter.trainer.spec import trl_config

    with tempfile.TemporaryDirectory() as out:
        for algorithm in ALGORITHMS:
            trl_config(algorithm, {}, output_dir=out, seed=0, use_cpu=True)
    yield
    print("\nspec fuzz inputs:", COUNTS)


@SETTINGS
@given(raw=documents(CONSTITUTIONS, ("yaml", "json")), suffix=st.sampled_from([".yaml", ".yml", ".json"]))
def test_fuzzed_constitutions_load_or_name_the_problem(raw: bytes, suffix: str) -> None:
    path = write(raw, suffix)

    def load() -> None:
        registry = ConstitutionRegistry(path.parent)
        registry.refresh()  # never raises for a bad file: it is kept out and reported
        assert len(registry.all()) + len(registry.errors) == 1
        try:
            load_constitution(path)
        except ConstitutionError as err:
            assert str(err).startswith(str(path))  # names the file
            assert path in registry.errors

    checked("constitution", load, allowed=())  # a refusal is a ConstitutionError, caught in load()


@SETTINGS
@given(raw=documents(PIPELINES))
def test_fuzzed_pipeline_specs_load_or_name_the_problem(raw: bytes) -> None:
    path = write(raw, ".yaml")
    checked("pipeline spec", lambda: load_pipeline_spec(path))


@SETTINGS
@given(raw=documents(RUN_SPECS))
def test_fuzzed_run_spec_files_are_checked_or_refused(raw: bytes) -> None:
    path = write(raw, ".yaml")
    checked("trainer spec file", lambda: check_run_spec(load_run_spec(path)))


BASE_RUN_SPEC = load_run_spec(ROOT / "training" / "reward-model.yaml")
BASE_RUN_SPEC.data.files.paths[:] = [
    str(Path(roots_for(WORK)[1]) / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz")
]


@SETTINGS
@given(spec=requests(tp.RunSpec.DESCRIPTOR, BASE_RUN_SPEC))
def test_fuzzed_run_spec_messages_are_checked_or_refused(spec: tp.RunSpec) -> None:
    checked("trainer spec message", lambda: check_run_spec(spec))


def test_the_audit_hook_sees_an_open_outside_the_roots_and_a_remote_connection() -> None:
    """The hook the tests above rely on does see what they must never do."""
    import socket

    with audit.recording(ROOTS) as seen:
        Path("/etc/hostname").read_bytes() if Path("/etc/hostname").exists() else open("/etc/passwd").close()
        with socket.socket() as s, contextlib.suppress(OSError):
            s.setblocking(False)
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed
    assert seen.opened_outside and seen.remote, (seen.opened_outside, seen.remote)


# ---- bugs the fuzz found (fixed): the minimal inputs ---------------------------------------------

DEEP = b"id: " + b"[" * 1000 + b"]" * 1000 + b"\n"
LOADERS = {
    "constitution": load_constitution,
    "pipeline spec": load_pipeline_spec,
    "trainer spec": load_run_spec,
}


@pytest.mark.parametrize("kind", LOADERS)
def test_deep_nesting_is_a_documented_error(kind: str) -> None:
    path = write(DEEP, ".yaml")
    with pytest.raises(CharterError, match="nested too deeply") as info:
        LOADERS[kind](path)
    assert str(info.value).startswith(str(path))
    if kind == "constitution":
        registry = ConstitutionRegistry(path.parent)
        registry.refresh()
        assert path in registry.errors and not registry.all()


@pytest.mark.parametrize(
    "raw",
    [
        b"data: {files: {paths: [1]}}\n",  # TypeError, train.py:73 (Path(1))
        b"data: {files: {paths: 1}}\n",  # TypeError: 'int' object is not iterable, train.py:72
        b'data: {files: {paths: ["a\\0b"]}}\n',  # ValueError: embedded null byte, train.py:73 (resolve)
        b"data: {label_stream: x}\n",  # AttributeError: 'str' object has no attribute 'get', train.py:60
        b"algorithm: .inf\n",  # OverflowError from ParseDict (an enum field), train.py:77
        b"name: \xff\n",  # UnicodeDecodeError from read_text, train.py:48
    ],
    ids=["path-int", "paths-int", "path-nul", "stream-str", "enum-inf", "bad-utf8"],
)
def test_wrongly_typed_run_spec_files_are_invalid_argument(raw: bytes) -> None:
    path = write(raw, ".yaml")
    with pytest.raises(InvalidArgument) as info:
        load_run_spec(path)
    field = {b"d": "data", b"a": "algorithm", b"n": "<byte 6>"}[raw[:1]]
    assert str(info.value).startswith(f"{path}: ") and field in str(info.value), str(info.value)


def test_a_non_finite_hyperparameter_is_invalid_argument() -> None:
    spec = tp.RunSpec()
    spec.CopyFrom(BASE_RUN_SPEC)
    spec.hyperparameters.update({"max_steps": float("nan"), "nested": {"a": [1, float("-inf")]}})
    with pytest.raises(InvalidArgument, match=r"^spec\.hyperparameters\.max_steps: nan is not a finite"):
        check_run_spec(spec)
    del spec.hyperparameters["max_steps"]
    with pytest.raises(InvalidArgument, match=r"^spec\.hyperparameters\.nested\.a\[1\]: -inf"):
        check_run_spec(spec)


FAN_OUT_SCRIPT = """
import sys, time
from pathlib import Path
from charter.core.errors import CharterError, InvalidArgument
from charter.constitution.loader import load_constitution
from charter.pipelines.spec import load_spec as load_pipeline_spec
from charter.cli.train import load_spec as load_run_spec
load = {"constitution": load_constitution, "pipeline spec": load_pipeline_spec, "trainer spec": load_run_spec}
started = time.monotonic()
try:
    load[sys.argv[2]](Path(sys.argv[1]))
except CharterError:
    pass
print(time.monotonic() - started)
"""
FAN_OUTS = {
    "constitution": b"bomb: %s\n",  # an unknown key: its value is shown in the error
    "pipeline spec": b"kind: %s\n",  # the kind is looked up, then shown
    "trainer spec": b"name: x\nhyperparameters: {bomb: %s}\n",  # a Struct: ParseDict would expand it
}


@pytest.mark.parametrize("kind", FAN_OUTS)
def test_an_alias_fan_out_is_refused_quickly(kind: str) -> None:
    path = write(FAN_OUTS[kind] % fan_out(8).encode(), ".yaml")
    try:
        done = subprocess.run(
            [sys.executable, "-c", FAN_OUT_SCRIPT, str(path), kind], capture_output=True, text=True, timeout=20,
            env={**subprocess_env(), "OMP_NUM_THREADS": "1"}, check=True,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("refusing the fan-out took more than 20 s")
    assert float(done.stdout) < 1.0, f"refusing the fan-out took {float(done.stdout):.1f} s"
