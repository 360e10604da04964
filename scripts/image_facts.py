"""What the Dockerfile says about the images' Python environments (scripts/image_env.py reads it):
the Python base image, and per image the stage that builds its venv, its extras, its lock, its
install RUN and, for the image that carries it, the embedded model's lock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dockerfile_parse import (
    Dockerfile,
    Instruction,
    parse,
    run_text,
)

TARGETS = {"service": "service-env", "trainer": "trainer-env"}
"""Image target -> the stage that builds its venv."""
BUILDER = "builder"
# The official python image's own ENV (Debian's PATH with /usr/local/bin first).
PYTHON_IMAGE_ENV = {"PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
_PYTHON_TAG = re.compile(
    r"^(?:[\w.-]+/)*python:(?P<version>3\.\d+\.\d+)-slim-(?P<debian>bookworm|trixie)(?:@sha256:[0-9a-f]{64})?$"
)
_GLIBC = {"bookworm": "2_36", "trixie": "2_41"}
_EMBEDDED_FLAGS = ("--no-deps", "--require-hashes")


class ImageEnvError(Exception):
    """The Dockerfile, a lock or the built environment is not right; says what to change."""


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
