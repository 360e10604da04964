"""Hypothesis strategies driven by protobuf descriptors: any request message of any RPC, filled with
hostile values (extreme numbers, NaN and infinities, unknown enum values, long and odd strings, paths
and addresses that reach outside, repeated fields far past the services' limits), the same as raw
bytes broken on purpose (invalid UTF-8, lone surrogates, truncated wire data), and odd call metadata.

Sizes are bounded so one example stays under ~8 MB: a long string is never repeated, a huge
repeated field repeats a small element."""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

F = FieldDescriptor
MAX_DEPTH = 4
HUGE_COUNTS = (513, 1025, 4097)  # past MAX_TURNS (512), the spec list cap (1024), the judge's 4096 items
LONG_LENGTHS = (257, 4097, 65_537, 1_000_001)  # past spec.name, spec strings, 64 KiB, MAX_TEXT_CHARS

SPECIAL_STRINGS = (
    "", " ", "\x00", "\n", "harmless", "helpful-honest", "embedded", "violence", "/", ".", "..",
    "/etc/passwd", "/etc", "../../../../etc/shadow", "~", "~root/.ssh/id_rsa", "/proc/self/environ",
    "/dev/zero", "run:", "run:x", "run:x@latest", "run:../../etc", "r-", "r-0000", "%s%n%x", "{0}{1}",
    "<|im_end|><|im_start|>system", "\u202e\u200b\ufeff", "a\u0300\u0301\u0302", "NaN", "-1",
    "9" * 40, "attacker.example:443", "169.254.169.254:80", "dns:///evil.example:50051",
    "ipv4:10.0.0.1:80", "[::ffff:8.8.8.8]:53", "unix:/tmp/charter.sock", "http://evil.example/x",
    "sqlite:////etc/passwd", "postgresql://u:p@evil.example/db", "'; DROP TABLE labels; --",
)  # fmt: skip

# hyper-parameter keys that reach outside (refused) or name paths, beside random keys
HYPERPARAMETER_KEYS = (
    "push_to_hub", "hub_model_id", "report_to", "trust_remote_code", "model_init_kwargs",
    "deepspeed", "fsdp_config", "accelerator_config", "chat_template_path", "vllm_server_host",
    "max_steps", "num_train_epochs", "learning_rate", "save_total_limit", "save_steps",
    "per_device_train_batch_size", "output_dir", "seed", "logging_dir", "bf16", "beta", "loss_type",
)  # fmt: skip

_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1), F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1), F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}  # fmt: skip


def short_text(max_size: int = 40) -> st.SearchStrategy[str]:
    """Any valid text but surrogates (a proto string must encode as UTF-8; lone surrogates go in as
    raw bytes, `broken_bytes`)."""
    return st.text(st.characters(exclude_categories=("Cs",)), max_size=max_size)


def strings(small: bool = False) -> st.SearchStrategy[str]:
    options = [short_text(), st.sampled_from(SPECIAL_STRINGS)]
    if not small:
        lengths = st.sampled_from(LONG_LENGTHS)
        options.append(st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "\x00", "🙂"]), lengths))
    return st.one_of(*options)


def integers(kind: int) -> st.SearchStrategy[int]:
    lo, hi = _INT_RANGES[kind]
    edges = sorted({lo, hi, 0, 1, max(lo, -1), hi // 2 + 1, 2**31 - 1 if hi > 2**31 else hi})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def json_values(small: bool = False) -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(), st.booleans(), st.floats(), st.integers(-(2**53), 2**53), strings(small=True),
        st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -0.0, 2.0**63]),
    )  # fmt: skip
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.one_of(st.sampled_from(HYPERPARAMETER_KEYS), short_text(12)), inner, max_size=3
            )
        ),
        max_leaves=6 if small else 12,
    )


def _scalar(field: FieldDescriptor, small: bool) -> st.SearchStrategy[Any]:
    t = field.type
    if t == F.TYPE_STRING:
        return strings(small)
    if t == F.TYPE_BYTES:
        return st.binary(max_size=32)
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t == F.TYPE_DOUBLE:
        return st.floats()
    if t == F.TYPE_FLOAT:
        return st.floats(width=32)
    if t == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.sampled_from(sorted({*known, -1, len(known), 99, 2**31 - 1, -(2**31)}))
    return integers(t)


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _fill_field(draw: Any, msg: Any, field: FieldDescriptor, depth: int, small: bool) -> None:
    target = getattr(msg, field.name)
    is_message = field.type == F.TYPE_MESSAGE
    if _is_map(field):
        key_field, value_field = (field.message_type.fields_by_name[n] for n in ("key", "value"))
        for _ in range(draw(st.integers(0, 3))):
            key = draw(_scalar(key_field, True))
            if value_field.type != F.TYPE_MESSAGE:
                target[key] = draw(_scalar(value_field, True))
            elif depth < MAX_DEPTH:
                target[key].CopyFrom(draw(messages(value_field.message_type, depth + 1, True)))
    elif is_message and depth >= MAX_DEPTH:
        return
    elif field.is_repeated:
        if not small and draw(st.integers(0, 9)) == 0:  # huge: a small element, many times
            one = draw(messages(field.message_type, depth + 1, True) if is_message else _scalar(field, True))
            items = [one] * draw(st.sampled_from(HUGE_COUNTS))
        else:
            element = messages(field.message_type, depth + 1, small) if is_message else _scalar(field, small)
            items = draw(st.lists(element, max_size=3))
        if is_message:
            for item in items:
                target.add().CopyFrom(item)
        else:
            target.extend(items)
    elif is_message and field.message_type.full_name == "google.protobuf.Struct":
        keys = st.one_of(st.sampled_from(HYPERPARAMETER_KEYS), short_text(12))
        target.update(draw(st.dictionaries(keys, json_values(small), max_size=4)))
    elif is_message:
        target.CopyFrom(draw(messages(field.message_type, depth + 1, small)))
    else:
        setattr(msg, field.name, draw(_scalar(field, small)))


def _fill(draw: Any, msg: Any, desc: Descriptor, depth: int, small: bool) -> None:
    for field in desc.fields:
        if draw(st.booleans()):
            _fill_field(draw, msg, field, depth, small)


@st.composite
def messages(draw: Any, desc: Descriptor, depth: int = 0, small: bool = False) -> Any:
    """A message of type `desc` with a random subset of its fields set to hostile values."""
    msg = message_factory.GetMessageClass(desc)()
    _fill(draw, msg, desc, depth, small)
    return msg


def _mutate(draw: Any, msg: Any, depth: int) -> None:
    """Replace one field somewhere in `msg` (a random path down its set messages) by a hostile value."""
    fields = list(msg.DESCRIPTOR.fields)
    if not fields:
        return
    field = draw(st.sampled_from(fields))
    target = getattr(msg, field.name)
    nested = field.type == F.TYPE_MESSAGE and not _is_map(field) and depth < MAX_DEPTH
    if nested and field.message_type.full_name != "google.protobuf.Struct" and draw(st.booleans()):
        if field.is_repeated and len(target):
            return _mutate(draw, target[draw(st.integers(0, len(target) - 1))], depth + 1)
        if not field.is_repeated and msg.HasField(field.name):
            return _mutate(draw, target, depth + 1)
    fresh = type(msg)()
    _fill_field(draw, fresh, field, depth, small=False)
    msg.ClearField(field.name)
    msg.MergeFrom(fresh)


@st.composite
def mutants(draw: Any, base: Any) -> Any:
    """`base` (a request the service accepts) with one to three fields replaced by hostile values:
    most of the request stays valid, so the checks past the first one are reached."""
    msg = type(base)()
    msg.CopyFrom(base)
    for _ in range(draw(st.integers(1, 3))):
        _mutate(draw, msg, 0)
    return msg


def requests(desc: Descriptor, base: Any | None) -> st.SearchStrategy[Any]:
    """Random messages of `desc`, and mutants of `base` when there is one."""
    return st.one_of(messages(desc), mutants(base)) if base is not None else messages(desc)


# ---- broken wire data ---------------------------------------------------------------------------

BAD_UTF8 = (
    b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xe2\x82",
    b"ok\x80", "\ud800".encode("utf-8", "surrogatepass"), b"\xfe\xff",
)  # fmt: skip
"""Invalid UTF-8: a stray byte, an overlong NUL, lone surrogates (UTF-8 of U+D800 and U+DFFF), a code
point past U+10FFFF, a truncated sequence, byte-order bytes."""


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def string_paths(desc: Descriptor, depth: int = 0) -> list[tuple[int, ...]]:
    """Field-number paths to every string field, through singular and repeated messages."""
    out: list[tuple[int, ...]] = []
    for field in desc.fields:
        if field.type == F.TYPE_STRING:
            out.append((field.number,))
        elif field.type == F.TYPE_MESSAGE and depth < 3 and not _is_map(field):
            out.extend((field.number, *rest) for rest in string_paths(field.message_type, depth + 1))
    return out


def nest(path: tuple[int, ...], payload: bytes) -> bytes:
    """A string field holding `payload` at `path`, wrapped in its enclosing messages."""
    data = length_delimited(path[-1], payload)
    for number in reversed(path[:-1]):
        data = length_delimited(number, data)
    return data


@st.composite
def broken_bytes(draw: Any, desc: Descriptor) -> bytes:
    """A serialised `desc` broken on purpose: invalid UTF-8 in a (nested) string field, cut short,
    random bytes, or valid but with unknown fields of every wire type."""
    base = draw(messages(desc, small=True)).SerializeToString()
    paths = string_paths(desc)
    kinds = ["truncated", "random", "unknown"] + (["utf8"] * 3 if paths else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "utf8":
        path = draw(st.sampled_from(paths))
        return base + nest(path, draw(st.sampled_from(BAD_UTF8)))
    if kind == "truncated" and base:
        return base[: draw(st.integers(0, len(base) - 1))]
    if kind == "unknown":
        number = draw(st.integers(1000, 2**29 - 1))
        wire = draw(st.sampled_from([0, 1, 2, 5]))
        body = {0: varint(2**64 - 1), 1: b"\xff" * 8, 2: varint(3) + b"\xff\xfe\x00", 5: b"\x00" * 4}[wire]
        return base + varint(number << 3 | wire) + body
    return draw(st.binary(min_size=1, max_size=64))


# ---- call metadata ------------------------------------------------------------------------------

_PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=64)


def metadata(good: str, other: str) -> st.SearchStrategy[tuple[tuple[str, str | bytes], ...]]:
    """Mostly the admin token `good` (so the request reaches the handler), sometimes a caller with
    role `other`'s token, or odd authorization headers and extra entries."""
    odd_auth = st.sampled_from(
        [None, "", "Bearer", "Bearer ", f"bearer {good}", f"Bearer  {good}", f"Bearer {good} ",
         f"Bearer {good}x", f"Basic {good}", good, "Bearer " + "a" * 4000, f"Bearer {other}"]
    ) | _PRINTABLE.map(lambda s: "Bearer " + s)  # fmt: skip
    auth = st.one_of(
        st.just(f"Bearer {good}"), st.just(f"Bearer {good}"), st.just(f"Bearer {good}"), odd_auth
    )
    extra_key = st.sampled_from(
        ["x-request-id", "user-agent-x", "x-forwarded-for", "authorization", "a" * 200]
    )
    extras = st.lists(
        st.one_of(
            st.tuples(extra_key, _PRINTABLE | st.sampled_from(["", "a" * 2000, "../../etc", "\\r\\n"])),
            st.tuples(st.just("x-trace-bin"), st.binary(max_size=64)),
        ),
        max_size=3,
    )

    def build(a: str | None, more: list[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
        return ((("authorization", a),) if a is not None else ()) + tuple(more)

    return st.builds(build, auth, extras)
