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
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dockerfile_parse import DockerfileError, DockerIgnore  # noqa: E402
from image_checks import check_service  # noqa: E402
from image_facts import TARGETS, ImageEnvError, read_facts  # noqa: E402
from image_locks import stale_locks, write_locks  # noqa: E402
from image_replay import Sandbox  # noqa: E402
from image_trainer import check_trainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


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
