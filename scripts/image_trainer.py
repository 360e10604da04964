"""The trainer image's check: its build replayed with the CPU build of the pinned torch standing in for
the lock's CUDA packages, then TRL's configs, the worker, accelerate, and the dev overlay's engine on
the embedded model (scripts/image_env.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from image_checks import check_runtime, run_in, snapshot, written_since
from image_facts import PYTHON_IMAGE_ENV, ImageEnvError, ImageFacts
from image_locks import torch_pin
from image_replay import Runtime, Sandbox, lay_out_runtime

_CUDA_ONLY = re.compile(r"^(torch|triton|nvidia-[\w.-]+|cuda-[\w.-]+)$")

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
    trl = json.loads(run_in(runtime, ["python", "-c", _TRL_PROBE], "TRL's config classes"))
    if not trl["torch"].startswith(pin):
        raise ImageEnvError(f"torch {trl['torch']} in the trainer env, expected {pin}")
    run_in(
        runtime,
        ["python", "-m", "charter.app.trainer_worker", "--help"],
        "python -m charter.app.trainer_worker --help",
    )
    run_in(runtime, ["accelerate", "launch", "--help"], "accelerate launch --help")
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
    before = snapshot(runtime.venv, runtime.workdir)
    found = json.loads(run_in(runtime, ["python", "-c", _EMBEDDED_PROBE], "embedded_gguf()", env=env))
    gguf = Path(found["gguf"])
    if not gguf.is_relative_to(runtime.venv):
        raise ImageEnvError(f"embedded_gguf() found {gguf}, outside the image's venv {runtime.venv}")
    started = time.monotonic()
    out = run_in(runtime, ["charter", "models", "prepare"], "charter models prepare", env=env)
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
    completion = run_in(
        runtime,
        ["charter", "generate", "Say hello.", "--max-tokens", "8"],
        "charter generate with the dev overlay's engine",
        env={**env, **DEV_ENGINE_SETTINGS},
    ).strip()
    sandbox.timings["charter generate (transformers, embedded)"] = round(time.monotonic() - started, 1)
    if not completion:
        raise ImageEnvError("charter generate on the embedded model printed nothing")
    written = written_since(before, runtime.venv, runtime.workdir)
    if written:
        raise ImageEnvError(f"preparing the embedded model wrote outside $HOME: {written[:10]}")
    return {"gguf": str(gguf.relative_to(runtime.venv)), "prepared": files, "completion": completion}
