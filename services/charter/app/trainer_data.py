"""A training worker's data: fetched once (the review stream over the spec's cursor range, or files)
and cached in DIR/data, so a resumed run trains on exactly the same rows; and the seeded eval split.

The review token for a stream source comes from `CHARTER_REVIEW_TOKEN` or the file named by
`CHARTER_REVIEW_TOKEN_FILE` (a mounted Secret).
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charter_proto.trainer.v1 import trainer_pb2

from charter.core.auth import environment_token
from charter.core.errors import InvalidArgument
from charter.core.files import write_atomic
from charter.trainer.executor import DATA_DIR

if TYPE_CHECKING:
    from charter.trainer.data import PreferenceData


@dataclass
class DataManifest:
    """What DIR/data/manifest.json records about the cached rows."""

    kind: str
    """"preference", "sft" or "prompts"."""
    rows: int
    cursor_start: int = 0
    cursor_end: int = 0
    labels_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def review_token() -> str:
    return environment_token("CHARTER_REVIEW_TOKEN")


async def read_label_stream(
    address: str, token: str, from_cursor: int, to_cursor: int | None, flt: Any
) -> PreferenceData:
    """Preference rows from the review service's accepted stream after `from_cursor` up to
    `to_cursor` (None: what is there now; else it waits for labels not accepted yet)."""
    from charter.api.review import preference_row
    from charter.client.review import ReviewClient
    from charter.trainer.data import from_stream

    async with ReviewClient(address, token=token) as review:
        labels = review.stream_labels(from_cursor, flt, follow=to_cursor is not None)
        try:
            rows = ((a.sequence, preference_row(a)) async for a in labels)
            return await from_stream(rows, from_cursor, to_cursor)
        finally:
            await labels.aclose()


def load_data(
    spec: trainer_pb2.RunSpec, algorithm: str, run_dir: Path
) -> tuple[list[dict[str, Any]], DataManifest, bool]:
    """(rows, manifest, fetched): the cached rows if DIR/data has them, else fetched and cached."""
    folder = run_dir / DATA_DIR
    rows_path, manifest_path = folder / "rows.jsonl", folder / "manifest.json"
    if manifest_path.exists():
        manifest = DataManifest(**json.loads(manifest_path.read_text(encoding="utf-8")))
        with open(rows_path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return rows, manifest, False
    source = spec.data
    if algorithm == "sft":
        if source.WhichOneof("source") != "files":
            raise InvalidArgument(
                "spec.data: SFT trains on SL-CAI outputs: give files (sft.jsonl or an output folder)",
                field="spec.data",
            )
        from charter.trainer.data import sft_rows

        rows = sft_rows(source.files.paths)
        manifest = DataManifest("sft", len(rows))
    elif source.WhichOneof("source") == "files":
        from charter.trainer.data import from_files

        data = from_files(source.files.paths, seed=spec.seed)
        rows = data.rows
        manifest = DataManifest("preference", len(rows), labels_read=data.labels_read)
    else:
        stream = source.label_stream
        if not stream.address:
            raise InvalidArgument(
                "spec.data.label_stream.address: no review service address (and the trainer has none)",
                field="spec.data.label_stream.address",
            )
        to_cursor = stream.to_cursor.sequence if stream.HasField("to_cursor") else None
        flt = stream.filter if stream.HasField("filter") else None
        data = asyncio.run(
            read_label_stream(stream.address, review_token(), stream.from_cursor.sequence, to_cursor, flt)
        )
        rows = data.rows
        manifest = DataManifest(
            "preference", len(rows), data.cursor_start, data.cursor_end, data.labels_read, data.skipped
        )
    if not rows:
        raise InvalidArgument("spec.data: the data source holds no usable rows", field="spec.data")
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(rows_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_atomic(manifest_path, json.dumps(asdict(manifest)))
    return rows, manifest, True


def split(
    rows: list[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval): a seeded shuffle, the last `fraction` held out (at least one row if fraction > 0)."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(len(rows) * fraction)), len(rows) - 1)
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]
