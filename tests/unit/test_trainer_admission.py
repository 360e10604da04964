"""What a caller's run spec may ask of the trainer service (issue 18, findings 1 and 3): paths under the
allowed roots with no way to probe the service's filesystem, review/judge addresses from the settings,
no hyper-parameter that publishes or reports elsewhere, resources and checkpoints within the caps,
bounded strings, and a worker environment with no secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from charter.api.trainer import spec_from_proto, spec_to_proto
from charter.api.trainer_limits import MAX_ITEMS, MAX_NAME, MAX_STRING, check_spec_sizes
from charter.core.errors import InvalidArgument
from charter.core.settings import load_settings
from charter.trainer.admission import Limits
from charter.trainer.executor import worker_environment
from charter.trainer.spec import check
from charter_proto.trainer.v1 import trainer_pb2 as tp
from google.protobuf.struct_pb2 import Struct

from tests.support.hh import HH_DEV


@pytest.fixture
def roots(tmp_path: Path) -> Limits:
    """Roots: tmp/allowed and the shared data; tmp/outside holds real files the spec must not reach."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    for folder in (allowed, outside):
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "config.json").write_text("{}")
        (folder / "rows.jsonl").write_text("{}\n")
    return Limits(roots=(allowed.resolve(), HH_DEV.parent.resolve()), review_address="review:50051")


def spec(hyperparameters=None, **changes) -> tp.RunSpec:
    s = tp.RunSpec(name="unit", algorithm=tp.ALGORITHM_DPO, base_model="embedded", seed=1)
    s.data.files.paths.append(str(HH_DEV))
    struct = Struct()
    length = "total_steps" if changes.get("algorithm") == tp.ALGORITHM_PPO else "max_steps"
    struct.update({length: 4, **(hyperparameters or {})})
    s.hyperparameters.CopyFrom(struct)
    for key, value in changes.items():
        setattr(s, key, value)
    return s


def refusal(limits: Limits | None, s: tp.RunSpec) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as err:
        check(spec_from_proto(s), limits=limits)
    return err.value


def test_paths_outside_the_roots_read_exactly_like_missing_ones(roots: Limits, tmp_path: Path):
    outside, allowed = tmp_path / "outside", tmp_path / "allowed"
    (allowed / "escape").symlink_to(outside / "model")
    cases = {  # field: (a real path outside, a missing path inside, a symlink inside pointing outside)
        "spec.base_model": (outside / "model", allowed / "nothing", allowed / "escape"),
        "spec.data.files.paths[0]": (outside / "rows.jsonl", allowed / "none.jsonl", allowed / "escape"),
    }
    for field, paths in cases.items():
        messages = set()
        for path in paths:
            s = spec()
            if field == "spec.base_model":
                s.base_model = str(path)
            else:
                s.data.files.paths[:] = [str(path)]
            err = refusal(roots, s)
            assert err.field == field and str(err).startswith(field), str(err)
            messages.add(str(err).replace(str(path), "PATH"))
        assert len(messages) == 1, messages  # nothing tells outside from missing
    s = spec(base_model=str(allowed / "model"))
    s.data.files.paths[:] = [str(allowed / "rows.jsonl")]
    assert check(spec_from_proto(s), limits=roots).base_model == str(allowed / "model")


def test_every_path_field_is_held_to_the_roots(roots: Limits, tmp_path: Path):
    outside = str(tmp_path / "outside" / "rows.jsonl")
    ppo = {"algorithm": tp.ALGORITHM_PPO, "reward_model": str(tmp_path / "outside" / "model")}
    assert refusal(roots, spec(**ppo)).field == "spec.reward_model"
    for name in ("deepspeed", "fsdp_config", "accelerator_config", "chat_template_path"):
        assert refusal(roots, spec({name: outside})).field == f"spec.hyperparameters.{name}"
    inline = {"deepspeed": {"zero_optimization": {"offload_param": {"nvme_path": outside}}}}
    assert refusal(roots, spec(inline)).field == "spec.hyperparameters.deepspeed"
    watched = spec(algorithm=tp.ALGORITHM_PPO, reward_model="embedded")
    watched.watch.every_steps = 1
    watched.watch.probe.paths.append(outside)
    assert refusal(roots, watched).field == "spec.watch.probe.paths[0]"
    watched.watch.ClearField("probe")
    watched.watch.gold_reward_model = str(tmp_path / "outside" / "model")
    assert refusal(roots, watched).field == "spec.watch.gold_reward_model"


@pytest.mark.parametrize(
    ("hyperparameters", "field"),
    [
        ({"push_to_hub": True}, "spec.hyperparameters.push_to_hub"),
        ({"hub_model_id": "someone/model"}, "spec.hyperparameters.hub_model_id"),
        ({"hub_token": "hf_x"}, "spec.hyperparameters.hub_token"),
        ({"report_to": "wandb"}, "spec.hyperparameters.report_to"),
        ({"report_to": ["tensorboard"]}, "spec.hyperparameters.report_to"),
        ({"trackio_space_id": "me/space"}, "spec.hyperparameters.trackio_space_id"),
        ({"model_init_kwargs": {"trust_remote_code": True}}, "spec.hyperparameters.model_init_kwargs"),
        ({"model_init_kwargs": {"token": "hf_x"}}, "spec.hyperparameters.model_init_kwargs"),
    ],
)
def test_hyperparameters_that_reach_outside_are_refused(hyperparameters, field):
    for limits in (None, Limits(roots=(HH_DEV.parent.resolve(),))):  # with or without the service's limits
        err = refusal(limits, spec(hyperparameters))
        assert err.field == field and str(err).startswith(field), str(err)


def test_vllm_server_hosts_are_refused():
    s = spec({"vllm_server_host": "10.0.0.1"}, algorithm=tp.ALGORITHM_GRPO, reward_model="embedded")
    assert refusal(None, s).field == "spec.hyperparameters.vllm_server_host"


def test_report_to_none_is_harmless():
    assert check(spec_from_proto(spec({"report_to": "none"}))).config.report_to in ([], "none", ["none"])


def test_the_review_address_comes_from_the_settings(roots: Limits):
    from charter.trainer.admission import review_address

    def stream(address: str) -> tp.RunSpec:
        s = spec()
        s.data.ClearField("files")
        s.data.label_stream.address = address
        return s

    err = refusal(roots, stream("attacker.example:443"))
    assert err.field == "spec.data.label_stream.address" and str(err).startswith(err.field)
    assert "attacker.example:443 is not a review service this trainer reads from" in str(err)
    assert review_address(spec_from_proto(stream("")), roots) == "review:50051"
    assert review_address(spec_from_proto(stream("review:50051")), roots) == "review:50051"
    wider = Limits(roots=roots.roots, review_address="review:50051", review_addresses=("review-b:50051",))
    assert review_address(spec_from_proto(stream("review-b:50051")), wider) == "review-b:50051"
    with pytest.raises(InvalidArgument, match="set trainer.review_address"):
        review_address(spec_from_proto(stream("")), Limits(roots=roots.roots))


def test_addresses_are_compared_as_the_places_dialled(roots: Limits):
    """A scheme spelling of an allowed address passes; a list passes only when each address is allowed,
    and a name resolved by another DNS server is not the allowed name."""
    from charter.trainer.admission import review_address

    def stream(address: str) -> tp.RunSpec:
        s = spec()
        s.data.ClearField("files")
        s.data.label_stream.address = address
        return s

    wider = Limits(roots=roots.roots, review_address="10.0.0.7:50051", review_addresses=("10.0.0.8:50051",))
    for allowed in ("dns:///10.0.0.7:50051", "ipv4:10.0.0.7:50051,10.0.0.8:50051"):
        assert review_address(spec_from_proto(stream(allowed)), wider) == allowed
    for refused in ("ipv4:10.0.0.7:50051,10.0.0.9:50051", "dns://203.0.113.5/10.0.0.7:50051"):
        assert refusal(wider, stream(refused)).field == "spec.data.label_stream.address"
    s = spec(algorithm=tp.ALGORITHM_PPO, reward_model="embedded")
    s.watch.every_steps = 1
    s.watch.gold_judge.constitution_id = "c"
    listed = Limits(roots=roots.roots, judge_addresses=("dns:///judge:50051",))
    s.watch.gold_judge.address = "judge:50051"
    check(spec_from_proto(s), limits=listed)
    s.watch.gold_judge.address = "ipv4:127.0.0.1:50051,10.0.0.9:50051"
    assert refusal(listed, s).field == "spec.watch.gold_judge.address"


def test_a_gold_judge_must_be_on_the_list_when_there_is_one(roots: Limits):
    s = spec(algorithm=tp.ALGORITHM_PPO, reward_model="embedded")
    s.watch.every_steps = 1
    s.watch.gold_judge.address, s.watch.gold_judge.constitution_id = "elsewhere:1", "c"
    listed = Limits(roots=roots.roots, judge_addresses=("judge:50051",))
    assert refusal(listed, s).field == "spec.watch.gold_judge.address"
    s.watch.gold_judge.address = "judge:50051"
    check(spec_from_proto(s), limits=listed)


def test_a_rollout_generator_must_be_on_the_list_when_there_is_one(roots: Limits):
    from charter.trainer.resolve import grants

    s = spec({"rollout_generator": "elsewhere:1"}, algorithm=tp.ALGORITHM_PPO, reward_model="embedded")
    listed = Limits(roots=roots.roots, generator_addresses=("generator:50051",))
    assert refusal(listed, s).field == "spec.hyperparameters.rollout_generator"
    assert grants(spec_from_proto(s), roots) == ()  # no list: allowed, but no token goes with it
    s = spec({"rollout_generator": "dns:///generator:50051"}, algorithm=tp.ALGORITHM_PPO, reward_model="embedded")
    check(spec_from_proto(s), limits=listed)
    assert grants(spec_from_proto(s), listed) == ("generator",)
    for online in (tp.ALGORITHM_GRPO, tp.ALGORITHM_RLOO):  # GRPO and RLOO sample there too
        s = spec({"rollout_generator": "elsewhere:1"}, algorithm=online, reward_model="embedded")
        assert refusal(listed, s).field == "spec.hyperparameters.rollout_generator"
        s = spec({"rollout_generator": "generator:50051"}, algorithm=online, reward_model="embedded")
        check(spec_from_proto(s), limits=listed)
        assert grants(spec_from_proto(s), listed) == ("generator",)


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        ({"gpus": 9}, "spec.resources.gpus"),
        ({"processes": 9}, "spec.resources.processes"),
        ({"cpu": "65"}, "spec.resources.cpu"),
        ({"cpu": "lots"}, "spec.resources.cpu"),
        ({"memory": "513Gi"}, "spec.resources.memory"),
        ({"memory": "1P"}, "spec.resources.memory"),
    ],
)
def test_resources_over_the_caps_are_refused(roots: Limits, resources, field):
    s = spec()
    s.resources.CopyFrom(tp.Resources(**resources))
    assert refusal(roots, s).field == field
    s.resources.CopyFrom(tp.Resources(gpus=8, processes=8, cpu="64", memory="512Gi"))
    check(spec_from_proto(s), limits=roots)


@pytest.mark.parametrize(
    ("executor", "max_nodes", "resources", "hyperparameters", "message"),
    [
        ("local", 4, {"nodes": 2}, {}, "spec.resources.nodes: 2 nodes need the Kubernetes executor; the local"),
        ("kubernetes", 4, {"nodes": 5}, {}, "spec.resources.nodes: 5 is over this trainer's limit of 4 "
         "(trainer.max_nodes)"),
        ("kubernetes", 4, {"strategy": 9}, {}, "spec.resources.strategy: unknown strategy '9'; use one of "
         "ddp, fsdp, zero3"),
        ("local", 4, {"strategy": tp.STRATEGY_FSDP}, {}, "spec.resources.strategy: fsdp shares the model"),
        ("kubernetes", 4, {"strategy": tp.STRATEGY_FSDP, "algorithm": tp.ALGORITHM_PPO}, {},
         "spec.resources.strategy: fsdp shards the weights of TRL's trainers"),
        ("kubernetes", 4, {"strategy": tp.STRATEGY_ZERO3}, {"fsdp": "full_shard"},
         "spec.hyperparameters.fsdp: set by spec.resources.strategy=zero3"),
        ("kubernetes", 4, {"strategy": tp.STRATEGY_FSDP, "algorithm": tp.ALGORITHM_GRPO},
         {"rollout_generator": "generator:50051"}, "spec.resources.strategy: fsdp shards the weights of TRL's"),
    ],
)  # fmt: skip
def test_nodes_and_strategies_only_where_the_executor_gives_them(
    roots: Limits, executor, max_nodes, resources, hyperparameters, message
):
    limits = Limits(roots=roots.roots, executor=executor, max_nodes=max_nodes)
    algorithm = resources.pop("algorithm", tp.ALGORITHM_DPO)
    s = spec(hyperparameters, algorithm=algorithm)
    s.resources.CopyFrom(tp.Resources(**resources))
    assert str(refusal(limits, s)).startswith(message)
    s = spec()
    s.resources.CopyFrom(tp.Resources(nodes=4, gpus=8, strategy=tp.STRATEGY_FSDP))
    check(spec_from_proto(s), limits=Limits(roots=roots.roots, executor="kubernetes", max_nodes=4))
    assert spec_from_proto(s).resources.strategy == "fsdp"
    assert spec_to_proto(spec_from_proto(s)).resources == s.resources  # the stored spec keeps both
    s.resources.CopyFrom(tp.Resources(nodes=2))  # the default cap: one node
    assert refusal(Limits(roots=roots.roots, executor="kubernetes"), s).field == "spec.resources.nodes"
    kubernetes = Limits(roots=roots.roots, executor="kubernetes", max_nodes=4, review_address="review:50051")
    s.data.ClearField("files")
    s.data.label_stream.from_cursor.sequence = 10
    assert "give spec.data.label_stream.to_cursor" in str(refusal(kubernetes, s))  # ranks would read apart
    s.data.label_stream.to_cursor.sequence = 20
    check(spec_from_proto(s), limits=kubernetes)


def test_limits_take_the_node_cap_and_the_executor_from_the_settings(tmp_path: Path):
    settings = load_settings(
        trainer={"executor": "kubernetes", "max_nodes": 16, "allowed_roots": [str(tmp_path)]}
    )
    limits = Limits.from_settings(settings.trainer)
    assert (limits.executor, limits.max_nodes) == ("kubernetes", 16)


def test_checkpoints_must_fit_the_disk_budget(roots: Limits):
    small = Limits(roots=roots.roots, checkpoint_budget_gib=5.0)  # 3 checkpoints of the embedded model
    check(spec_from_proto(spec({"max_steps": 30, "save_steps": 10})), limits=small)
    err = refusal(small, spec({"max_steps": 1000, "save_steps": 1}))
    assert err.field == "spec.hyperparameters.save_steps" and "disk budget" in str(err)
    check(spec_from_proto(spec({"max_steps": 1000, "save_steps": 1, "save_total_limit": 2})), limits=small)
    assert refusal(small, spec({"max_steps": 1000, "save_total_limit": 50})).field.endswith(
        "save_total_limit"
    )
    unbounded = spec({"num_train_epochs": 3, "max_steps": -1})
    assert refusal(small, unbounded).field == "spec.hyperparameters.save_total_limit"
    check(spec_from_proto(spec({"max_steps": 1000, "save_strategy": "no"})), limits=small)


def test_spec_strings_and_lists_are_bounded():
    check_spec_sizes(spec())
    long_name = spec(name="n" * (MAX_NAME + 1))
    with pytest.raises(InvalidArgument, match=r"^spec.name: 257 characters") as err:
        check_spec_sizes(long_name)
    long_path = spec()
    long_path.data.files.paths.append("/" + "p" * MAX_STRING)
    with pytest.raises(InvalidArgument) as err:
        check_spec_sizes(long_path)
    assert err.value.field == "spec.data.files.paths[1]"
    many = spec()
    many.data.files.paths.extend(["x"] * MAX_ITEMS)
    with pytest.raises(InvalidArgument, match=r"^spec.data.files.paths: 1025 entries"):
        check_spec_sizes(many)
    deep = spec()
    deep.data.ClearField("files")
    deep.data.label_stream.filter.constitution_id = "c" * (MAX_STRING + 1)
    with pytest.raises(InvalidArgument, match=r"^spec.data.label_stream.filter.constitution_id"):
        check_spec_sizes(deep)
    big = spec({"x": "v" * 70_000})
    with pytest.raises(InvalidArgument, match=r"^spec.hyperparameters: \d+ bytes"):
        check_spec_sizes(big)


def test_the_worker_environment_holds_no_secret():
    environ = {
        "PATH": "/usr/bin", "HOME": "/home/u", "LC_ALL": "C.UTF-8", "TOKENIZERS_PARALLELISM": "false",
        "HF_TOKEN": "hf_secret", "AWS_SECRET_ACCESS_KEY": "k", "DATABASE_URL": "postgresql://u:p@db/x",
        "CHARTER_REVIEW__DATABASE_URL": "postgresql://u:p@db/x", "CHARTER_TRAINER__TOKENS_FILE": "/t",
        "CHARTER_REVIEW_TOKEN": "review-token", "CHARTER_CLIENT__TLS__CA_FILE": "/ca.pem", "PGPASSWORD": "p",
    }  # fmt: skip
    names = load_settings().trainer.worker_env + ["HF_*", "CHARTER_*", "PGPASSWORD", "DATABASE_URL"]
    got = worker_environment(environ, names)
    assert got == {
        "PATH": "/usr/bin", "HOME": "/home/u", "LC_ALL": "C.UTF-8", "TOKENIZERS_PARALLELISM": "false",
        "CHARTER_CLIENT__TLS__CA_FILE": "/ca.pem",
    }  # fmt: skip


def test_default_roots_keep_local_use_working(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    limits = Limits.from_settings(load_settings(trainer={"runs_dir": str(tmp_path / "out" / "runs")}).trainer)
    assert {tmp_path.resolve(), (tmp_path / "out").resolve(), (tmp_path / "out" / "runs").resolve()} <= set(
        limits.roots
    )
    configured = load_settings(trainer={"allowed_roots": [str(tmp_path / "data")]}).trainer
    assert Limits.from_settings(configured).roots == ((tmp_path / "data").resolve(),)
    assert os.sep  # roots are absolute and resolved


def test_a_local_worker_gets_the_checked_files_as_absolute_paths(roots: Limits, tmp_path: Path, monkeypatch):
    from charter.trainer.admission import admit
    from charter.trainer.resolve import resolve

    allowed = tmp_path / "allowed"
    (allowed / "ds.json").write_text("{}")
    monkeypatch.chdir(allowed)  # the worker runs in its run folder: a relative path would mean another file
    s = spec_from_proto(spec({"deepspeed": "ds.json"}))
    admit(s, roots)  # (TRL's config would load DeepSpeed itself, not installed here)
    resolved = resolve(s, None, "local", roots)  # type: ignore[arg-type]  # no run ids: no store needed
    assert resolved.hyperparameters["deepspeed"] == str((allowed / "ds.json").resolve())
    assert resolved.data.files.paths == [str(HH_DEV.resolve())]
