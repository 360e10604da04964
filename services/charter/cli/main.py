"""The `charter` command.

charter constitution check constitutions/
charter constitution import ../shared/data/constitutions/llm-swarm/constitution_anthropic.json
charter serve judge --port 50051
charter run pipelines/rl-cai.yaml
charter eval judge --data ../shared/data/hh-rlhf/harmless-base-test-dev.jsonl.gz --limit 100
charter serve review --config review.yaml
charter export --format trl-preference --out accepted.jsonl
charter train --spec training/dpo.yaml
charter runs watch r-0123456789abcdef
charter doctor
"""

from __future__ import annotations

import platform
import sys

import typer

from charter import __version__
from charter.cli import constitution, evaluate, models, review, train
from charter.cli.doctor import doctor
from charter.cli.export import export
from charter.cli.run import run
from charter.cli.serve import serve
from charter.core.errors import CharterError
from charter.core.processes import end_descendants, terminate_as_exit

app = typer.Typer(
    name="charter",
    help="Charter: constitution-driven critique/revision, AI preference labels, review and training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
)
app.add_typer(constitution.app, name="constitution")
app.add_typer(models.app, name="models")
app.add_typer(evaluate.app, name="eval")
app.add_typer(review.app, name="review")
app.add_typer(train.app, name="runs")
app.command()(serve)
app.command()(models.generate)
app.command()(run)
app.command()(export)
app.command()(train.train)
app.command()(doctor)


@app.command()
def version() -> None:
    """Print Charter's version and the versions of its runtime."""
    import google.protobuf
    import grpc

    typer.echo(
        f"charter {__version__}\npython {platform.python_version()}\n"
        f"grpcio {grpc.__version__}\nprotobuf {google.protobuf.__version__}"
    )


def main() -> None:
    # SIGTERM unwinds like Ctrl-C (engines close in their finally blocks), and whatever still runs
    # below this process when the command leaves (vLLM's engine core, a trainer worker) ends with it
    terminate_as_exit()
    try:
        app()
    except CharterError as err:  # a user's mistake: one line, no traceback
        typer.echo(f"error: {err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        end_descendants()


if __name__ == "__main__":
    main()
