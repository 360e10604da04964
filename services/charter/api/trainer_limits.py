"""Size limits of a caller's `charter.trainer.v1.RunSpec`, checked at the door (StartRun) before the
spec is converted: every string at most `MAX_STRING` characters (`spec.name` `MAX_NAME`), every
repeated field at most `MAX_ITEMS` entries, the hyper-parameters at most `MAX_HYPERPARAMETERS_BYTES`
serialised. A spec past one is an INVALID_ARGUMENT naming the field and the limit.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from charter.core.errors import InvalidArgument

__all__ = ["MAX_HYPERPARAMETERS_BYTES", "MAX_ITEMS", "MAX_NAME", "MAX_STRING", "check_spec_sizes"]

MAX_STRING = 4096
"""Characters in any string of a spec (paths, addresses, ids, quantities)."""
MAX_NAME = 256
"""Characters in `spec.name`."""
MAX_ITEMS = 1024
"""Entries in any repeated field (data files, principle ids, …)."""
MAX_HYPERPARAMETERS_BYTES = 64 * 1024
"""The hyper-parameters' serialised size."""


def check_spec_sizes(spec: Message, prefix: str = "spec") -> None:
    """Raise InvalidArgument for the first field of `spec` past its limit."""
    for field, value in spec.ListFields():
        name = f"{prefix}.{field.name}"
        if field.message_type is not None and field.message_type.full_name == "google.protobuf.Struct":
            size = value.ByteSize()
            if size > MAX_HYPERPARAMETERS_BYTES:
                raise InvalidArgument(
                    f"{name}: {size} bytes, over the limit of {MAX_HYPERPARAMETERS_BYTES}", field=name
                )
            continue
        repeated = field.is_repeated
        items = list(value) if repeated else [value]
        if repeated and len(items) > MAX_ITEMS:
            raise InvalidArgument(f"{name}: {len(items)} entries, over the limit of {MAX_ITEMS}", field=name)
        for i, item in enumerate(items):
            where = f"{name}[{i}]" if repeated else name
            if field.type == FieldDescriptor.TYPE_STRING:
                limit = MAX_NAME if where == "spec.name" else MAX_STRING
                if len(item) > limit:
                    raise InvalidArgument(
                        f"{where}: {len(item)} characters, over the limit of {limit}", field=where
                    )
            elif field.type == FieldDescriptor.TYPE_MESSAGE and not _is_map(field):
                check_spec_sizes(item, where)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry
