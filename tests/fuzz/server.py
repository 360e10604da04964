"""The fuzzed server, in a process of its own so its memory is measured alone and a crash shows:
`python -m tests.fuzz.server FOLDER` hosts the five services on one `CharterServer` — generator,
critic-reviser and judge on the scripted `FakeEngine`, review on a SQLite ledger in FOLDER, the trainer
with `trainer_settings(FOLDER)` — writes its port to FOLDER/port once it serves, and stops when its stdin closes.

From the first call on, an audit hook (`tests.fuzz.audit`) writes every file opened outside the
allowed roots and every connection to another host to FOLDER/audit.log."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

from charter.app.catalog import SERVICES, Resources
from charter.core.server import CharterServer
from charter.core.settings import ServerSettings, load_settings

from tests.fuzz import audit
from tests.support import ROOT
from tests.support.fake_engine import FakeEngine
from tests.support.trainer import roots_for, trainer_settings

TOKENS = {
    "service": "fuzz-service-token-0123456789",
    "reviewer": "fuzz-reviewer-token-0123456789",
    "admin": "fuzz-admin-token-0123456789",
}


def allowed_roots(folder: Path) -> list[str]:
    """Where the services may open files: the trainer's allowed roots, the temporary folder; the
    checkout and the python install are added by `audit.recording`."""
    return [*roots_for(folder), tempfile.gettempdir()]


def warm_up() -> None:
    """Import what a spec check loads (TRL, torch) before the caller takes its memory baseline."""
    from charter.trainer.runs import ALGORITHMS
    from charter.trainer.spec import trl_config

    with tempfile.TemporaryDirectory() as out:
        for algorithm in ALGORITHMS:
            trl_config(algorithm, {}, output_dir=out, seed=0, use_cpu=True)


async def serve(folder: Path) -> None:
    tokens = [{"name": f"fuzz-{role}", "role": role, "token": t} for role, t in TOKENS.items()]
    settings = load_settings(
        constitutions={"directory": str(ROOT / "constitutions")},
        generator={"tokens": tokens}, critic={"tokens": tokens}, judge={"tokens": tokens},
        review={"database_url": f"sqlite:///{folder / 'ledger.db'}", "tokens": tokens, "web_port": None},
    )  # fmt: skip
    trainer = trainer_settings(folder, tokens=tokens, max_run_seconds=30, max_active_runs=2)
    shared, review, trainer_resources = (
        Resources(settings, engine=FakeEngine()),
        Resources(settings),
        Resources(trainer),
    )
    registrations = [SERVICES[n].registration_for(shared) for n in ("generator", "critic-reviser", "judge")]
    registrations += [
        SERVICES["review"].registration_for(review),
        SERVICES["trainer"].registration_for(trainer_resources),
    ]
    server = CharterServer(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0, health_probe_seconds=1),
        registrations,
    )  # fmt: skip
    port = await server.start()
    sink = os.open(folder / "audit.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    (folder / "port.tmp").write_text(str(port))
    (folder / "port.tmp").rename(folder / "port")
    loop = asyncio.get_running_loop()
    with audit.recording(allowed_roots(folder), sink=sink):
        await loop.run_in_executor(None, sys.stdin.read)  # until the test closes our stdin
    await server.stop(0)
    for r in (shared, review, trainer_resources):
        await r.close()


if __name__ == "__main__":
    warm_up()
    asyncio.run(serve(Path(sys.argv[1])))
