"""Weights pushed into a served model: what a push must contain, read from safetensors headers.

A trainer pushes its policy to the generator after each update (`GeneratorService.PushWeights`) and
samples the next rollouts there. A push is a folder of safetensors files holding every tensor of the
served model's checkpoint, under the same names and with the same shapes (the dtype may differ: the
engine casts). `check_push` compares the two folders' headers (no tensor is read) before anything
is loaded, so a push meant for another model changes nothing.

Example:
    tensors = check_push("/tmp/charter-push-1", served_folder)   # InvalidArgument when they differ
    await engine.load_weights("/tmp/charter-push-1")
"""

from __future__ import annotations

from pathlib import Path

from charter.core.errors import FailedPrecondition, InvalidArgument

_SHOWN = 5


def checkpoint_shapes(folder: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape in the folder's safetensors files (headers only)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - a safe_open handle is not a dict
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def check_push(pushed: str | Path, served: str | Path) -> int:
    """The number of tensors pushed, once they match the served checkpoint name for name and shape.

    Raises `InvalidArgument` (a file that is not safetensors, tensors missing, unknown or of another
    shape) or `FailedPrecondition` (the served model has no safetensors checkpoint to compare with)."""
    want = checkpoint_shapes(served)
    if not want:
        raise FailedPrecondition(
            f"the served model's folder {served} has no safetensors checkpoint to check pushed weights "
            "against",
            field="model",
        )
    try:
        got = checkpoint_shapes(pushed)
    except Exception as err:  # safetensors raises its own error type for a bad header
        raise InvalidArgument(f"data: not a safetensors file ({err})", field="data") from None
    if not got:
        raise InvalidArgument("data: no tensors were pushed", field="data")
    problems = []
    if missing := sorted(want.keys() - got.keys()):
        problems.append(f"{len(missing)} missing ({_names(missing)})")
    if unknown := sorted(got.keys() - want.keys()):
        problems.append(f"{len(unknown)} the served model does not have ({_names(unknown)})")
    if shaped := sorted(k for k in got.keys() & want.keys() if got[k] != want[k]):
        shown = ", ".join(f"{k} {list(got[k])} != {list(want[k])}" for k in shaped[:_SHOWN])
        problems.append(f"{len(shaped)} of another shape ({shown}{', ...' if len(shaped) > _SHOWN else ''})")
    if problems:
        message = f"data: the pushed weights do not fit the served model: tensors {'; '.join(problems)}"
        raise InvalidArgument(message, field="data")
    return len(got)


def _names(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")
