"""A training run as the trainer's domain sees it: plain dataclasses for the spec, the run and its events.

They mirror `charter.trainer.v1` (`proto/charter/trainer/v1/trainer.proto`) field for field;
`charter.api.trainer` converts between the two, so nothing below the API layer touches protobuf.
Enumerations become plain values: the algorithm and the executor are names (`"dpo"`, `"local"`; `""`
when unset), a run's state is `RunState` (numbered as the proto's `RunState`, which is also what the
run store's `state` column holds), a label filter's sources are the review proto's enum names.
Timestamps are seconds since the epoch (None: unset).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

ALGORITHMS = ("sft", "reward-model", "dpo", "ppo", "grpo", "rloo")
"""Every algorithm a run can train, by name."""
CONTINUOUS_ALGORITHMS = ("dpo", "reward-model")
"""The algorithms a continuous run (`RunSpec.continuous`) trains."""
EXECUTORS = ("local", "kubernetes")
ENSEMBLE_VARY = ("seed", "subset")
"""How a reward-model ensemble's members differ, by name."""


class RunState(enum.IntEnum):
    UNSPECIFIED = 0
    PENDING = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def label(self) -> str:
        """The lower-case name users see: pending, running, succeeded, failed, cancelled."""
        return self.name.lower()


TERMINAL = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})
ACTIVE = frozenset({RunState.PENDING, RunState.RUNNING})


@dataclass
class LabelFilter:
    constitution_id: str = ""
    principle_ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    """Names of `charter.review.v1.LabelSource` values."""
    min_confidence: float | None = None


@dataclass
class LabelStreamSource:
    address: str = ""
    from_cursor: int = 0
    to_cursor: int | None = None
    filter: LabelFilter | None = None


@dataclass
class FileSource:
    paths: list[str] = field(default_factory=list)


@dataclass
class DataSource:
    label_stream: LabelStreamSource | None = None
    files: FileSource | None = None
    """At most one of `label_stream` and `files` is set."""
    eval_fraction: float = 0.0

    @property
    def kind(self) -> str | None:
        """ "label_stream", "files", or None when no source is set."""
        if self.label_stream is not None:
            return "label_stream"
        return "files" if self.files is not None else None


STRATEGIES = ("ddp", "fsdp", "zero3")
"""How a run's processes share the model: the accelerate configs in training/accelerate/."""


@dataclass
class Resources:
    """What a run asks for. `gpus`, `processes`, `cpu` and `memory` are per node (a pod)."""

    gpus: int = 0
    processes: int = 0
    """Per node; 0: one per GPU, at least one."""
    cpu: str = ""
    memory: str = ""
    nodes: int = 0
    """0 or 1: one node; more: a Kubernetes indexed Job, one pod per node."""
    strategy: str = ""
    """One of STRATEGIES; "": ddp."""

    @property
    def node_count(self) -> int:
        return max(self.nodes, 1)

    @property
    def process_count(self) -> int:
        """Processes on each node."""
        return self.processes or self.gpus or 1


@dataclass
class JudgeGold:
    """The AI judge as the watch's gold scorer (the policy's answer against the reference policy's)."""

    address: str = ""
    constitution_id: str = ""
    principles_per_label: int = 0
    """0: the constitution's own."""


@dataclass
class RewardWatch:
    """The reward-hacking watch of a PPO/GRPO/RLOO run (docs/trainer.md). 0 means "the default" for
    `probe_size`, `patience` and `max_new_tokens`; `spec.check` fills the defaults in."""

    every_steps: int = 0
    probe: FileSource | None = None
    """Prompt files; None: a seeded sample of the run's own prompts, held out of training."""
    probe_size: int = 0
    gold_reward_model: str | None = None
    gold_judge: JudgeGold | None = None
    """At most one of `gold_reward_model` and `gold_judge` is set."""
    patience: int = 0
    min_delta: float = 0.0
    stop_on_divergence: bool = False
    max_new_tokens: int = 0

    @property
    def gold(self) -> str | None:
        """ "reward_model", "judge", or None when no gold scorer is set."""
        if self.gold_reward_model is not None:
            return "reward_model"
        return "judge" if self.gold_judge is not None else None


@dataclass
class RewardModelEnsemble:
    """K reward models trained one after another as one run (docs/trainer.md, "Reward-model
    ensembles"). `spec.check` fills the default in (`vary` "" is "seed")."""

    size: int = 0
    vary: str = ""
    """One of `ENSEMBLE_VARY`, or "" (unset: "seed")."""
    subset_fraction: float = 0.0
    """With vary "subset": the share of the training rows each member samples, in (0, 1]."""


@dataclass
class ContinuousTraining:
    """A continuous run's rounds (docs/trainer.md, "Continuous runs"; the trigger is
    `charter.trainer.rounds.RoundTrigger`). 0 means "not this trigger" / "no limit"."""

    round_labels: int = 0
    round_seconds: float = 0.0
    max_rounds: int = 0


@dataclass
class RunSpec:
    name: str = ""
    algorithm: str = ""
    """One of `ALGORITHMS`; "" (unset) or any other value fails the spec's check."""
    base_model: str = ""
    data: DataSource = field(default_factory=DataSource)
    reward_model: str = ""
    hyperparameters: dict[str, Any] | None = None
    """JSON values as the spec gave them (numbers are floats, as in a protobuf Struct); None: unset."""
    executor: str = ""
    """"local", "kubernetes", or "" (whichever the service runs)."""
    resources: Resources = field(default_factory=Resources)
    seed: int = 0
    watch: RewardWatch | None = None
    """None: no reward-hacking watch."""
    ensemble: RewardModelEnsemble | None = None
    """None: one reward model (reward-model runs only)."""
    continuous: ContinuousTraining | None = None
    """None: one bounded run; else the run follows the label stream and trains in rounds."""


@dataclass
class Run:
    id: str
    spec: RunSpec = field(default_factory=RunSpec)
    state: RunState = RunState.UNSPECIFIED
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    reason: str = ""
    cursor_start: int | None = None
    cursor_end: int | None = None
    last_checkpoint: str = ""
    step: int = 0
    total_steps: int = 0
    last_metrics: dict[str, float] = field(default_factory=dict)
    output_dir: str = ""
    job_name: str = ""
    attempt: int = 0
    rows: int = 0
    latest_round: int = 0
    """Continuous runs: the newest published round (0: none yet)."""


@dataclass(frozen=True)
class MetricsEvent:
    step: int = 0
    values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointEvent:
    step: int = 0
    path: str = ""


@dataclass(frozen=True)
class StateEvent:
    state: RunState
    reason: str = ""


@dataclass(frozen=True)
class DataEvent:
    cursor_start: int = 0
    cursor_end: int = 0
    rows: int = 0
    labels_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    round: int = 0
    """Continuous runs: the round the data is for; 0: a bounded run."""


@dataclass(frozen=True)
class Round:
    """A published round of a continuous run (also the event that publishes it)."""

    run_id: str = ""
    round: int = 0
    cursor_start: int = 0
    cursor_end: int = 0
    rows: int = 0
    labels_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    model_dir: str = ""
    step: int = 0
    published_at: float | None = None


@dataclass(frozen=True)
class LogEvent:
    level: str = ""
    message: str = ""


EventKind = MetricsEvent | CheckpointEvent | StateEvent | DataEvent | LogEvent | Round


@dataclass(frozen=True)
class RunEvent:
    run_id: str
    sequence: int
    time: float
    kind: EventKind
