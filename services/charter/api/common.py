"""Protobuf <-> domain conversions shared by the servicers (the only place both worlds meet)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from charter_proto.common.v1 import (
    constitution_pb2,
    conversation_pb2,
    critique_pb2,
    provenance_pb2,
    sampling_pb2,
)
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError

from charter import __version__
from charter.constitution.registry import LoadedConstitution
from charter.core.errors import InvalidArgument
from charter.inference.policy import PolicyVersion
from charter.inference.types import Completion, Message, ModelInfo, Sampling

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

V = TypeVar("V", bound=int)


def enum_names(enum: _EnumTypeWrapper[V], prefix: str) -> dict[V, str]:
    """A protobuf enum's values -> lower-case names without the enum's prefix: the names records,
    summaries and pages use (`enum_names(label_pb2.LabelStatus, "LABEL_STATUS_")[1] == "ok"`)."""
    return {value: name.removeprefix(prefix).lower() for name, value in enum.items()}


ROLE_NAMES = enum_names(conversation_pb2.Role, "ROLE_")
STEP_STATUS_NAMES = enum_names(critique_pb2.StepStatus, "STEP_STATUS_")
FINISH_NAMES = enum_names(sampling_pb2.FinishReason, "FINISH_REASON_")
"""finish reason -> "stop" | "length" (as `inference.types.Completion` names them)."""
# the enum's other names, lower-cased, are exactly the roles `Message` takes
_ROLES = cast(
    "dict[conversation_pb2.Role.ValueType, Literal['system', 'user', 'assistant']]",
    {v: name for v, name in ROLE_NAMES.items() if v != conversation_pb2.ROLE_UNSPECIFIED},
)
_ROLE_VALUES = {v: k for k, v in _ROLES.items()}
_FINISH = {"stop": sampling_pb2.FINISH_REASON_STOP, "length": sampling_pb2.FINISH_REASON_LENGTH}


MAX_TURNS = 512
"""Most messages in one conversation of a request."""
MAX_TEXT_CHARS = 1_000_000
"""Most characters in one conversation (all its messages) or one response of a request: far past any
model's context, checked before anything is tokenised (tokenising a 60 MB string alone takes minutes)."""


def check_text(text: str, field: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidArgument(
            f"{field}: {len(text)} characters exceed the limit of {MAX_TEXT_CHARS}", field=field
        )


def messages(conversation: conversation_pb2.Conversation, where: str) -> list[Message]:
    if not conversation.messages:
        raise InvalidArgument(f"{where}.messages: the conversation is empty", field=f"{where}.messages")
    if len(conversation.messages) > MAX_TURNS:
        raise InvalidArgument(
            f"{where}.messages: {len(conversation.messages)} messages exceed the limit of {MAX_TURNS}",
            field=f"{where}.messages",
        )
    if sum(len(m.content) for m in conversation.messages) > MAX_TEXT_CHARS:
        raise InvalidArgument(
            f"{where}.messages: more than {MAX_TEXT_CHARS} characters in all", field=f"{where}.messages"
        )
    out = []
    for i, m in enumerate(conversation.messages):
        if m.role not in _ROLES:
            raise InvalidArgument(f"{where}.messages[{i}].role: set a role (system, user or assistant)")
        out.append(Message(role=_ROLES[m.role], content=m.content))
    if all(not m.content.strip() for m in out):
        raise InvalidArgument(f"{where}.messages: every message is empty", field=f"{where}.messages")
    return out


def item_traceparents(values: Sequence[str], count: int) -> list[str]:
    """A request's `item_traceparents`, one per item ("" for an item without): the field holds none
    or exactly one per item."""
    if values and len(values) != count:
        raise InvalidArgument(
            f"item_traceparents: {len(values)} for {count} items; send none or one per item",
            field="item_traceparents",
        )
    return list(values) or [""] * count


def conversation_proto(items: Sequence[Message], conversation_id: str = "") -> conversation_pb2.Conversation:
    return conversation_pb2.Conversation(
        id=conversation_id,
        messages=[conversation_pb2.Message(role=_ROLE_VALUES[m.role], content=m.content) for m in items],
    )


def sampling(params: sampling_pb2.SamplingParams, default_max_tokens: int) -> Sampling:
    values: dict[str, object] = {"n": params.n or 1, "max_tokens": params.max_tokens or default_max_tokens}
    if params.HasField("temperature"):
        values["temperature"] = params.temperature
    if params.HasField("top_p"):
        values["top_p"] = params.top_p
    if params.stop:
        values["stop"] = tuple(params.stop)
    if params.HasField("seed"):
        values["seed"] = params.seed
    try:
        return Sampling.model_validate(values)
    except ValidationError as err:
        e = err.errors(include_url=False)[0]
        field = ".".join(str(p) for p in e["loc"])
        raise InvalidArgument(
            f"sampling.{field}: {e['msg']} (value: {e.get('input')!r})", field=f"sampling.{field}"
        ) from None


def sampling_proto(s: Sampling) -> sampling_pb2.SamplingParams:
    return sampling_pb2.SamplingParams(
        n=s.n,
        temperature=s.temperature,
        top_p=s.top_p,
        max_tokens=s.max_tokens,
        stop=list(s.stop),
        seed=s.seed,
    )


def completion_proto(c: Completion) -> sampling_pb2.Completion:
    return sampling_pb2.Completion(
        text=c.text,
        prompt_tokens=c.prompt_tokens,
        completion_tokens=c.completion_tokens,
        finish_reason=_FINISH[c.finish_reason],
    )


def model_proto(info: ModelInfo, version: PolicyVersion | None = None) -> sampling_pb2.ModelRef:
    """The model that produced an artifact; with the generator's `version`, its digest and id too."""
    if version is None:
        return sampling_pb2.ModelRef(name=info.name, engine=info.engine, revision=info.revision)
    revision = version.digest or info.revision
    return sampling_pb2.ModelRef(
        name=info.name, engine=info.engine, revision=revision, policy_version=version.id
    )


def constitution_ref(loaded: LoadedConstitution) -> constitution_pb2.ConstitutionRef:
    return constitution_pb2.ConstitutionRef(id=loaded.id, version=loaded.version, digest=loaded.digest)


def timestamp(seconds: float | None = None) -> Timestamp:
    """A protobuf Timestamp of `seconds` since the epoch (None: now)."""
    ts = Timestamp()
    ts.FromNanoseconds(time.time_ns() if seconds is None else int(seconds * 1e9))
    return ts


def now() -> Timestamp:
    return timestamp()


def seconds(message: Any, name: str) -> float | None:
    """Seconds since the epoch of the Timestamp field `name` of `message` (None when unset)."""
    return getattr(message, name).ToNanoseconds() / 1e9 if message.HasField(name) else None


def provenance(
    loaded: LoadedConstitution | None,
    principle_ids: Sequence[str],
    model: ModelInfo,
    s: Sampling,
    seed: int,
    request_id: str = "",
) -> provenance_pb2.Provenance:
    return provenance_pb2.Provenance(
        constitution=constitution_ref(loaded) if loaded else None,
        principle_ids=list(principle_ids),
        model=model_proto(model),
        sampling=sampling_proto(s),
        seed=seed,
        created_at=now(),
        charter_version=__version__,
        request_id=request_id,
    )
