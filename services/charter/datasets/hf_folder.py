"""Hugging Face dataset folders: the data in a layout `datasets` reads directly, and a dataset card.

A folder written here is read by `datasets.load_dataset(folder)` — its `README.md` is a dataset card
whose YAML front matter names, per config and split, exactly the data files to read (`configs:` with
`data_files`) — and by the Hugging Face Hub when the folder is uploaded as it is.

- `render_card`: metadata -> `README.md` text (pure). The front matter holds the Hub's keys
  (`pretty_name`, `license`, `task_categories`, `tags`, `size_categories`, `configs`) and a `charter:`
  block with what made the data: constitutions (id, version, digest, principles — with their text only
  where a constitution file with that very digest is known), judge and its measured agreement (only
  where the data measures one), counts, source and licence, and the command.
- `write_saved_dataset`: `DatasetDict.save_to_disk` plus a card whose `configs` point at the saved
  `{split}/data-*.arrow` files, so one copy of the data serves `load_from_disk(folder)` and
  `load_dataset(folder)` (`charter export --format hf`). The folder is replaced as a whole.
- `source_license`: the licence of a source file, from a LICENSE file or a dataset card beside it.
- `push_folder`: upload a folder to the Hub with `huggingface_hub` (needs a token; `hub_token`).

Secrets never reach a card: `command_line` masks `--token` values and passwords in URLs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from charter import __version__
from charter.constitution.loader import SUFFIXES, load_constitution
from charter.constitution.schema import Constitution
from charter.core.errors import CharterError, FailedPrecondition

INSTALL_HINT = "pip install 'charter[train]'"
_SECRET_FLAGS = ("--token",)
_URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^/@\s]+@")
_LICENSES = (  # (pattern in a LICENSE file's first lines, Hugging Face licence id)
    (r"\bMIT License\b", "mit"),
    (r"Apache License,? Version 2\.0|\bApache License\b", "apache-2.0"),
    (r"BSD 3-Clause", "bsd-3-clause"),
    (r"BSD 2-Clause", "bsd-2-clause"),
    (r"Creative Commons Attribution 4\.0|\bCC BY 4\.0\b", "cc-by-4.0"),
    (r"Creative Commons Attribution-ShareAlike 4\.0|\bCC BY-SA 4\.0\b", "cc-by-sa-4.0"),
    (r"\bCC0\b", "cc0-1.0"),
)


# ---- what a card says ----------------------------------------------------------------------------
def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that is running (`sys.argv`), shell-quoted, with `--token` values and URL passwords
    masked as `***`."""
    args, out, hide = list(sys.argv if argv is None else argv), [], False
    for arg in args:
        if hide:
            out.append("***")
            hide = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag in _SECRET_FLAGS:
            out.append(f"{flag}=***" if eq else arg)
            hide = not eq
            continue
        out.append(_URL_PASSWORD.sub(r"\1***@", arg))
    return shlex.join(out)


def source_license(path: str | Path | None) -> str:
    """The Hugging Face licence id of a source file's data: from a LICENSE file in its folder (MIT,
    Apache-2.0, BSD, CC), else from the `license` of a dataset card (README.md) there; `unknown`."""
    if path is None:
        return "unknown"
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "COPYING"):
        try:
            head = (folder / name).read_text(encoding="utf-8", errors="replace")[:2000]
        except OSError:
            continue
        for pattern, licence in _LICENSES:
            if re.search(pattern, head):
                return licence
    card = read_card(folder / "README.md")
    found = card.get("license") if card else None
    return str(found) if isinstance(found, str) and found else "unknown"


def read_card(path: Path) -> dict[str, Any] | None:
    """The YAML front matter of a dataset card, or None (no file, no front matter, bad YAML)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---\n", 4)
    try:
        data = yaml.safe_load(text[4:end]) if end > 0 else None
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def known_constitutions(directory: Path | None) -> dict[str, Constitution]:
    """The valid constitution files of a folder, by digest (none when the folder is missing)."""
    if directory is None or not directory.is_dir():
        return {}
    found = {}
    for path in sorted(directory.iterdir()):
        if path.suffix in SUFFIXES and path.is_file() and not path.name.startswith("."):
            try:
                constitution = load_constitution(path)
            except (CharterError, OSError):
                continue
            found[constitution.digest] = constitution
    return found


def constitutions_block(
    refs: Iterable[tuple[Mapping[str, Any], Iterable[str]]], known: Mapping[str, Constitution]
) -> list[dict[str, Any]]:
    """One entry per constitution the data names — (constitution reference {id, version, digest},
    principle ids used) per row — with its row count and principles: every principle of the
    constitution with its text where a file with that digest is known, else the ids the rows name."""
    rows: Counter[tuple[str, str, str]] = Counter()
    used: dict[tuple[str, str, str], set[str]] = {}
    for ref, principle_ids in refs:
        key = (str(ref.get("id") or ""), str(ref.get("version") or ""), str(ref.get("digest") or ""))
        if not any(key):
            continue
        rows[key] += 1
        used.setdefault(key, set()).update(principle_ids)
    block = []
    for key, count in rows.items():
        constitution = known.get(key[2])
        principles: list[dict[str, Any]] = (
            [
                {
                    "id": p.id,
                    "comparison_question": p.comparison_question,
                    "critique_request": p.critique_request,
                    "revision_request": p.revision_request,
                }
                for p in constitution.principles
            ]
            if constitution is not None
            else [{"id": pid} for pid in sorted(used[key])]
        )
        block.append(
            {"id": key[0], "version": key[1], "digest": key[2], "rows": count,
             "principles_used": sorted(used[key]), "principles": principles}
        )  # fmt: skip
    return block


def agreement(agree: int, of: int, reference: str) -> dict[str, Any] | None:
    """A measured agreement (None when nothing was measured)."""
    return {"reference": reference, "agree": agree, "of": of, "rate": round(agree / of, 4)} if of else None


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M" if n < 1_000_000 else "n>1M"


def render_card(meta: Mapping[str, Any]) -> str:
    """A dataset card from `meta`: `pretty_name`, `summary` (a paragraph), `license`, `task_categories`,
    `tags`, `rows` (all rows, for `size_categories`), `configs` (the Hub's list of {config_name,
    data_files: [{split, path}], default}) and `charter` (the provenance block, as it is)."""
    charter = dict(meta.get("charter") or {})
    front = {
        "pretty_name": meta["pretty_name"],
        "license": meta.get("license") or "unknown",
        "task_categories": list(meta.get("task_categories") or ["text-generation"]),
        "tags": list(meta.get("tags") or []),
        "size_categories": [size_category(int(meta.get("rows") or 0))],
        "configs": list(meta.get("configs") or []),
        "charter": charter,
    }
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=100).rstrip(), "---"]
    lines += ["", f"# {meta['pretty_name']}", "", str(meta.get("summary") or "").strip(), ""]
    configs = front["configs"]
    if configs:
        lines += ["## Loading", "", "```python", "from datasets import load_dataset", ""]
        lines += [f'load_dataset("PATH", "{c["config_name"]}")' for c in configs]
        lines += ["```", "", "(PATH: this folder, or the Hub repository it was uploaded to.)", ""]
    for c in charter.get("constitutions") or []:
        lines += [
            f"## Constitution `{c['id']}` {c['version']}",
            "",
            f"Digest `{c['digest']}`, {c['rows']} rows.",
            "",
        ]
        for p in c["principles"]:
            text = p.get("comparison_question") or p.get("critique_request")
            lines.append(f"- `{p['id']}`" + (f": {text}" if text else ""))
        lines.append("")
    people = [("Model", m) for m in charter.get("models") or []] + [
        ("Judge", j) for j in charter.get("judges") or []
    ]
    if people or charter.get("judge_agreement"):
        lines += ["## Models", ""]
        lines += [f"- {role}: `{m['model']}` ({m['engine']}), {m['rows']} rows" for role, m in people]
        if a := charter.get("judge_agreement"):
            lines.append(f"- Judge agreement with {a['reference']}: {a['agree']}/{a['of']} ({a['rate']:.1%})")
        lines.append("")
    counts = charter.get("counts") or {}
    if counts:
        lines += ["## Counts", "", "```yaml", yaml.safe_dump(counts, sort_keys=False).rstrip(), "```", ""]
    if charter.get("command"):
        lines += ["## Command", "", "```sh", str(charter["command"]), "```", ""]
    return "\n".join(lines)


def charter_block(**fields: Any) -> dict[str, Any]:
    """The card's `charter:` block: the fields given (None left out), then the Charter version."""
    return {**{k: v for k, v in fields.items() if v is not None}, "charter_version": __version__}


def judges_block(judges: Iterable[Mapping[str, Any] | None]) -> list[dict[str, Any]]:
    """The judge models the rows name ({name, engine}), with their row counts."""
    seen = Counter((str(j.get("name") or ""), str(j.get("engine") or "")) for j in judges if j)
    return [{"model": m, "engine": e, "rows": n} for (m, e), n in seen.items() if m or e]


def export_card(
    records: list[dict[str, Any]], rows: int, *, licence: str, command: str, known: Mapping[str, Constitution]
) -> dict[str, Any]:
    """The card of a ledger export (`charter export --format hf`): `records` are the export's full JSONL
    records of every accepted label (`charter.api.review.record`), `rows` the preference rows kept.

    Human decisions: `human_decided` labels a person decided (routed for review, or audited), of which
    `human_overrides` chose otherwise than the AI judge; the judge's agreement with those decisions is
    measured over the labels people decided — the routed ones, so not a random sample."""
    total = len(records)
    human = [r for r in records if r["label_source"] == "human"]
    overrides = sum(r["choice"] != r["ai"]["choice"] for r in human)
    counts = {
        "accepted_labels": total,
        "rows": {"train": rows},
        "left_out_ties": sum(r["choice"] == "tie" for r in records),
        "by_label_source": dict(Counter(r["label_source"] for r in records)),
        "by_ai_status": dict(Counter(r["ai"]["status"] for r in records)),
        "by_choice": dict(Counter(r["choice"] for r in records)),
    }
    routing = {
        "human_decided": len(human),
        "human_decided_rate": round(len(human) / total, 4) if total else 0.0,
        "human_overrides": overrides,
        "human_override_rate": round(overrides / total, 4) if total else 0.0,
    }
    judges = judges_block(r["judge"] for r in records)
    return {
        "pretty_name": "Charter preference labels (review ledger export)",
        "summary": (
            f"{rows} preference pairs in TRL's conversational format (`prompt`, `chosen`, `rejected`) "
            "with the soft label `p_chosen` and provenance, exported from Charter's review ledger: "
            f"{total} accepted labels, {len(human)} decided by a person ({overrides} overriding the AI "
            "judge), ties left out."
        ),
        "license": licence,
        "task_categories": ["text-generation"],
        "tags": ["charter", "constitutional-ai", "rlaif", "preference", "dpo"],
        "charter": charter_block(
            kind="ledger-export",
            constitutions=constitutions_block(
                ((r["constitution"], r["principle_ids"]) for r in records), known
            ),
            judges=judges,
            judge_agreement=agreement(len(human) - overrides, len(human), "human reviewers (routed labels)"),
            counts=counts,
            routing=routing,
            source_license=licence,
            command=command,
        ),
    }


# ---- writing and uploading -----------------------------------------------------------------------
def require_datasets() -> Any:
    """The `datasets` module; FailedPrecondition naming the extra to install when it is missing."""
    try:
        import datasets
    except ImportError as err:
        raise FailedPrecondition(
            f"Hugging Face dataset folders need the datasets library: {INSTALL_HINT}"
        ) from err
    return datasets


def _table(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Columns from rows: every key any row has, in first-seen order, None where a row lacks it."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [r.get(k) for r in rows] for k in keys}


def write_saved_dataset(
    out: Path, splits: Mapping[str, list[dict[str, Any]]], meta: Mapping[str, Any]
) -> None:
    """`out` becomes a `save_to_disk` folder of `splits` with a card (`meta` as `render_card` takes it,
    its `configs` and `rows` filled in here). Written beside `out` and swapped in; an existing `out`
    must be such a folder (or empty) and is replaced. Every split needs a row (`save_to_disk` writes no
    data file for an empty one, which neither reader can then read)."""
    datasets = require_datasets()
    empty = [name for name, rows in splits.items() if not rows]
    if empty or not splits:
        raise FailedPrecondition(
            f"{out}: no rows for split {(empty or ['train'])[0]!r}; a dataset folder needs at least one "
            "(are the filters too narrow?)"
        )
    if out.exists() and any(out.iterdir()) and not (out / "dataset_dict.json").exists():
        raise FailedPrecondition(f"{out}: not a dataset folder this command wrote; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    with _scratch(datasets, out.parent, f".{out.name}.") as tmp:
        data = datasets.DatasetDict(
            {name: datasets.Dataset.from_dict(_table(rows)) for name, rows in splits.items()}
        )
        data.save_to_disk(str(tmp / "data"))
        files = [{"split": name, "path": f"{name}/data-*.arrow"} for name in splits]
        card = {**meta, "rows": sum(map(len, splits.values())),
                "configs": [{"config_name": "default", "data_files": files}]}  # fmt: skip
        (tmp / "data" / "README.md").write_text(render_card(card), encoding="utf-8")
        old = tmp / "old"
        if out.exists():
            out.rename(old)
        try:
            (tmp / "data").rename(out)
        except OSError:
            if old.exists():
                old.rename(out)  # the earlier export stays
            raise


def write_disk_layout(folder: Path, parquet: Path) -> bool:
    """Beside a pipeline's files, the `save_to_disk` layout of its default config (`dataset_dict.json`
    and `train/`), so `datasets.load_from_disk(folder)` reads the folder as `load_dataset(folder)`
    does (the card's `configs` name the Parquet files, so the arrow copy does not confuse it). Only
    where `datasets` is installed (the `train` extra); returns whether it was written."""
    import importlib.util

    if importlib.util.find_spec("datasets") is None:
        return False
    import datasets
    import pyarrow.parquet as pq

    with _scratch(datasets, folder, ".disk-layout.") as tmp:
        layout = datasets.DatasetDict({"train": datasets.Dataset(pq.read_table(parquet))})
        layout.save_to_disk(str(tmp / "data"))
        shutil.rmtree(folder / "train", ignore_errors=True)
        (tmp / "data" / "train").rename(folder / "train")
        os.replace(tmp / "data" / "dataset_dict.json", folder / "dataset_dict.json")
    return True


@contextlib.contextmanager
def _scratch(datasets: Any, parent: Path, prefix: str) -> Iterator[Path]:
    """A temporary folder in `parent` to `save_to_disk` into (removed after), progress bars off."""
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=".tmp"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars:
            datasets.enable_progress_bars()


def hub_token() -> str:
    """A Hugging Face token (HF_TOKEN, or the one `hf auth login` stored); FailedPrecondition if none."""
    try:
        from huggingface_hub import get_token
    except ImportError as err:
        raise FailedPrecondition(f"--push-to-hub needs huggingface_hub: {INSTALL_HINT}") from err
    token = get_token()
    if not token:
        raise FailedPrecondition(
            "--push-to-hub: no Hugging Face token; set HF_TOKEN or log in with `hf auth login`"
        )
    return token


def push_folder(folder: Path, repo_id: str, *, token: str, private: bool = False) -> str:
    """Upload `folder` as dataset repository `repo_id` (created if missing); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, repo_type="dataset", commit_message="charter export"
    )
    return str(getattr(info, "commit_url", info))
