"""Remote mode of `kind: rlaif` without a service: the spec's checks (every address named, none in
local mode, p0 a folder the generator can swap to), the example spec, and how the loop names the policy
it asks the generator to serve."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from charter.core.errors import InvalidArgument
from charter.pipelines.rlaif_remote import policy_ref, served_name
from charter.pipelines.rlaif_spec import RlaifSpec
from charter.pipelines.spec import load_spec

from tests.support import ROOT

EXAMPLE = ROOT / "pipelines" / "rlaif-remote.yaml"
ADDRESSES = {"generator": "g:1", "judge": "j:1", "review": "r:1", "trainer": "t:1"}


def _spec(tmp_path: Path, services: dict, **changes) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text()) | changes
    data["services"] = services
    path = tmp_path / "rlaif.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_remote_example_loads_with_every_address_and_token_file() -> None:
    spec = load_spec(EXAMPLE)
    assert isinstance(spec, RlaifSpec) and spec.services.mode == "remote"
    s = spec.services
    assert (s.generator, s.judge, s.review, s.trainer) == (
        "dns:///charter-generator:50051", "dns:///charter-judge:50051", "charter-review:50051", "charter-trainer:50051",
    )  # fmt: skip
    assert s.token_file == Path("/etc/charter/tokens/service-token")
    assert s.admin_token_file == Path("/etc/charter/tokens/admin-token")
    assert Path(spec.policy).is_absolute() and str(spec.output).startswith("/runs/")
    # the example's training slices and held-out rows do not overlap (the spec checks it)
    assert spec.prompts.per_iteration * spec.iterations <= spec.evaluation.red_team.skip


@pytest.mark.parametrize(
    ("services", "changes", "message"),
    [
        ({"mode": "remote", "generator": "g:1", "judge": "j:1"}, {},
         "services: Value error, mode remote needs the address (host:port) of the review, trainer services"),
        ({"mode": "remote", **ADDRESSES, "trainer": None}, {},
         "mode remote needs the address (host:port) of the trainer service"),
        ({"mode": "local", "review": "r:1"}, {},
         "services: Value error, review: service addresses are for mode: remote"),
        ({"admin_token_file": "/tmp/admin"}, {}, "admin_token_file: service addresses are for mode: remote"),
        ({"mode": "remote", **ADDRESSES, "critic_reviser": "c:1"}, {},
         "critic_reviser: kind rlaif does not use the critic-reviser"),
        ({"mode": "remote", **ADDRESSES, "reviewer": "x:1"}, {}, "services.reviewer: unknown key"),
        ({"mode": "remote", **ADDRESSES}, {"policy": "embedded"},
         "policy: remote mode needs p0 as a model folder that the generator, the trainer and this pipeline "
         "all see"),
    ],
)  # fmt: skip
def test_a_bad_remote_spec_is_refused_naming_the_field(
    tmp_path: Path, services: dict, changes: dict, message: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        load_spec(_spec(tmp_path, services, **changes))
    assert message in str(err.value)


def test_local_mode_takes_no_addresses_and_remote_changes_no_artefact(tmp_path: Path) -> None:
    local = load_spec(_spec(tmp_path, {"mode": "local"}))
    remote = load_spec(_spec(tmp_path, {"mode": "remote", **ADDRESSES}))
    assert local.services.mode == "local" and remote.services.mode == "remote"
    # the same spec run locally or against services writes the same artefacts: one digest
    assert local.digest() == remote.digest()


def test_the_generator_is_asked_for_the_run_or_p0s_folder_and_recognised_by_name() -> None:
    assert policy_ref({"version": "p2", "run_id": "r-0a1b", "model": "/runs/r-0a1b/model"}) == "run:r-0a1b"
    assert policy_ref({"version": "p0", "run_id": None, "model": "/runs/models/p0"}) == "/runs/models/p0"
    assert served_name("run:r-0a1b@sha256:0123456789abcdef") == "run:r-0a1b"
    assert served_name("/runs/models/p0@sha256:0123456789abcdef") == "/runs/models/p0"
    assert served_name("smollm2-135m-instruct") == "smollm2-135m-instruct"  # a remote engine: no digest


def test_the_cluster_jobs_spec_is_the_remote_example_and_its_settings_load() -> None:
    """deploy/jobs/rlaif/ packs the spec into a ConfigMap (kustomize reads files below it only, so it
    holds a copy): the copy is the example, and its settings file is valid Charter settings whose
    routing matches the overlays' review service (the human budget predicts routes with it)."""
    from charter.core.settings import load_settings

    job = ROOT / "deploy" / "jobs" / "rlaif"
    assert (job / "rlaif.yaml").read_text() == EXAMPLE.read_text()
    settings = load_settings(config_file=job / "settings.yaml")
    for overlay in ("dev", "gpu"):
        served = yaml.safe_load((ROOT / "deploy" / "overlays" / overlay / "settings.yaml").read_text())
        routing = served["review"]["routing"]
        assert {k: getattr(settings.review.routing, k) for k in routing} == routing, overlay
