from __future__ import annotations

from pathlib import Path

import pytest
from charter.core.errors import InvalidArgument
from charter.core.settings import load_settings


def test_defaults() -> None:
    s = load_settings()
    assert s.server.port == 50051 and s.logging.format == "auto"


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARTER_SERVER__PORT", "6000")
    monkeypatch.setenv("CHARTER_LOGGING__LEVEL", "DEBUG")
    s = load_settings()
    assert s.server.port == 6000 and s.logging.level == "DEBUG"


def test_file_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "settings.yaml"
    f.write_text("server:\n  port: 7000\n  drain_seconds: 3\nconstitutions:\n  poll_seconds: 0.25\n")
    assert load_settings(f).server.port == 7000
    monkeypatch.setenv("CHARTER_SERVER__PORT", "7001")
    s = load_settings(f)
    assert s.server.port == 7001 and s.server.drain_seconds == 3 and s.constitutions.poll_seconds == 0.25
    assert load_settings(f, server={"port": 0}).server.port == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHARTER_SERVR__PORT": "1"}, "CHARTER_SERVR__PORT: unknown setting"),
        ({"CHARTER_SERVER__PROT": "1"}, "server.prot: unknown setting"),
        ({"CHARTER_SERVER__PORT": "99999"}, "server.port: Input should be less than or equal to 65535"),
        ({"CHARTER_LOGGING__FORMAT": "xml"}, "logging.format"),
    ],
)
def test_bad_environment_is_rejected(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(InvalidArgument, match=message.replace(".", r"\.")):
        load_settings()


def test_unknown_key_in_file(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("server:\n  port: 1\n  colour: blue\n")
    with pytest.raises(InvalidArgument, match=r"server\.colour: unknown setting \(value: 'blue'\)"):
        load_settings(f)


def test_bad_flag_value() -> None:
    with pytest.raises(InvalidArgument, match="port"):
        load_settings(server={"port": -1})


SECRET = "sk-very-secret-token-0123456789"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # a token entry written as a bare string, a token of the wrong type
        (f"review:\n  tokens:\n    - {SECRET}\n", "review.tokens.0: "),
        (
            "review:\n  tokens:\n    - {name: a, role: reviewer, token: 12345678901234}\n",
            "review.tokens.0.token",
        ),
        # a misplaced database URL: the password is masked, the rest is shown
        (
            "review:\n  databse: postgresql://charter:hunter2@db/charter\n",
            "postgresql://charter:***@db/charter",
        ),
        # a whole section of the wrong shape: its token entries are masked inside it
        (f"judge: [{{token: {SECRET}}}]\n", "'token': '***'"),
    ],
)
def test_settings_errors_never_show_a_secret(tmp_path: Path, text: str, shown: str) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(text)
    with pytest.raises(InvalidArgument) as err:
        load_settings(f)
    message = str(err.value)
    assert shown in message
    for secret in (SECRET, "12345678901234", "hunter2"):
        assert secret not in message


def test_a_token_entrys_role_is_still_shown(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(f"review:\n  tokens:\n    - {{name: a, role: wizard, token: {SECRET}}}\n")
    with pytest.raises(InvalidArgument, match=r"review\.tokens\.0\.role: .*\(value: 'wizard'\)") as err:
        load_settings(f)
    assert SECRET not in str(err.value)


def test_worker_variables_are_not_settings_and_unknown_ones_are_not_echoed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the trainer worker's environment: accepted, not rejected (and echoed) as unknown settings
    monkeypatch.setenv("CHARTER_REVIEW_TOKEN", SECRET)
    monkeypatch.setenv("CHARTER_JUDGE_TOKEN_FILE", "/var/run/secrets/judge-token")
    monkeypatch.setenv("CHARTER_GENERATOR_TOKEN", SECRET)  # PPO's rollout generator (app.generator_sampler)
    monkeypatch.setenv("CHARTER_TORCH_THREADS", "2")
    monkeypatch.setenv("CHARTER_PROGRESS_INTERVAL", "5")  # the CLI's progress lines (cli.progress)
    assert load_settings().server.port == 50051
    monkeypatch.setenv("CHARTER_REVIEW_TOKN", SECRET)  # a typo is still an error, without the value
    with pytest.raises(InvalidArgument, match="CHARTER_REVIEW_TOKN: unknown setting") as err:
        load_settings()
    assert SECRET not in str(err.value)
