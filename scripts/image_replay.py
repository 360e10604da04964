"""Replaying an image's build without Docker: a scratch root stands in for the image's filesystem
(absolute paths move under it), every WORKDIR, COPY and RUN of the build stages runs as written, and
the runtime stage's files and ENV are laid out (scripts/image_env.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import (
    Dockerfile,
    DockerIgnore,
    Instruction,
    context_files,
    copy_args,
    run_text,
)
from image_facts import PYTHON_IMAGE_ENV, ImageEnvError

_HOST_ENV_DROP = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIP_USER", "PIP_TARGET",
                  "PIP_PREFIX", "PIP_REQUIRE_VIRTUALENV")  # fmt: skip


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
