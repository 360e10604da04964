"""Prometheus metrics shared by every service, and the `/metrics` HTTP endpoint."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

RPC_TOTAL = Counter(
    "charter_rpc_total", "Completed RPCs by method and status code.", ["service", "method", "code"]
)
RPC_SECONDS = Histogram(
    "charter_rpc_duration_seconds",
    "RPC wall time, including the whole stream for streaming RPCs.",
    ["service", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
RPC_IN_FLIGHT = Gauge("charter_rpc_in_flight", "RPCs being handled now.", ["service"])
RPC_MESSAGES_SENT = Counter(
    "charter_rpc_messages_sent_total", "Response messages sent (streams count each).", ["service", "method"]
)
JUDGE_LABELS = Counter(
    "charter_judge_labels_total",
    "Judge labels by status and swap consistency.",
    ["status", "swap_consistent"],
)
JUDGE_CONFIDENCE = Histogram(
    "charter_judge_confidence",
    "Confidence 2*|p_a - 0.5| of scored judge labels (a mass near 0 means a judge near chance).",
    buckets=(0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
)
REVIEW_LABELS = Counter(
    "charter_review_labels_total",
    "Labels written to the review ledger, by route and reason (duplicates not counted).",
    ["route", "reason"],
)
REVIEW_DECISIONS = Counter("charter_review_decisions_total", "Human decisions by choice.", ["choice"])
REVIEW_ACCEPTED = Counter(
    "charter_review_accepted_total", "Labels accepted for training, by who decided.", ["source"]
)
REVIEW_QUEUE_DEPTH = Gauge(
    "charter_review_queue_depth", "Review slots waiting for a reviewer (as of the last claim or Stats)."
)
REVIEW_STREAM_LAG = Gauge(
    "charter_review_stream_lag",
    "Accepted labels a StreamLabels consumer has not been sent yet: the ledger's last sequence minus "
    "the consumer's cursor, as of its stream's last page (0 once caught up; gone when its stream ends).",
    ["consumer"],
)
TRAINER_RUN_STEP = Gauge(
    "charter_trainer_run_step", "The last step a running training run reported.", ["run_id", "algorithm"]
)
TRAINER_RUN_TOTAL_STEPS = Gauge(
    "charter_trainer_run_total_steps",
    "The steps a running training run will take (0 until its worker knows).",
    ["run_id", "algorithm"],
)
TRAINER_RUNS_ENDED = Counter(
    "charter_trainer_runs_ended_total",
    "Training runs that ended, by state and algorithm.",
    ["state", "algorithm"],
)
HEALTH_SERVING = Gauge(
    "charter_health_serving",
    "1 while a gRPC service's grpc.health.v1 status is SERVING, 0 while NOT_SERVING (its backend's "
    "probe fails, or the server is draining).",
    ["service"],
)
CONSTITUTION_SERVING = Gauge(
    "charter_constitution_serving",
    "1 for the version (digest) each constitution serves now; 0 for versions it served before.",
    ["constitution_id", "digest"],
)
CONSTITUTION_REJECTED = Gauge(
    "charter_constitution_rejected",
    "1 while a constitution file's current content is rejected (its last good version keeps serving).",
    ["file"],
)
CONSTITUTION_RELOADS = Counter(
    "charter_constitution_reloads_total",
    "Constitution file changes seen, by outcome (loaded, reloaded, removed, failed, recovered).",
    ["outcome"],
)


class MetricsEndpoint:
    """`/metrics` on its own port (0 = a free port), in a daemon thread."""

    def __init__(self, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=REGISTRY)
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
