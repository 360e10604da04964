"""The Kubernetes executor. Its manifests are validated offline against the Kubernetes schemas
(kubernetes-validate --strict). Then it is driven through the real `kubernetes` client over HTTP
against a small fake API server that speaks the few endpoints it uses: Jobs, ConfigMaps, Services,
Pods listed by label and a followed, chunked pod log that can break mid-stream."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import pytest
import yaml
from charter.core.errors import FailedPrecondition, InvalidArgument
from charter.trainer import events
from charter.trainer.executor import Launch, Outcome
from charter.trainer.kubernetes import (
    TEMPLATE,
    JobOptions,
    KubernetesExecutor,
    job_manifest,
    object_name,
    rendezvous_service,
    run_resources,
    spec_configmap,
)
from charter.trainer.kubernetes.launcher import ACCELERATE_CONFIGS
from charter.trainer.kubernetes.status import INDEX_KEY
from charter.trainer.runs import Resources
from charter_proto.trainer.v1 import trainer_pb2
from google.protobuf.json_format import MessageToJson
from kubernetes import client as k8s
from structlog.testing import capture_logs

pytestmark = pytest.mark.integration

K8S_VERSION = "1.34"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
OPTIONS = JobOptions(
    namespace="charter",
    image="ghcr.io/acme/charter-trainer:0.1.0",
    runs_pvc="charter-runs",
    service_account="charter-trainer-worker",
    image_pull_secrets=("ghcr",),
    env_from_secret="charter-trainer-env",
    node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
    active_deadline_seconds=86400,
    shm_size="16Gi",
)


def make_launch(run_id: str = "r-0123456789abcdef", attempt: int = 1, resume: bool = False, **resources: Any):
    spec = trainer_pb2.RunSpec(
        name="dpo-smoke",
        algorithm=trainer_pb2.ALGORITHM_DPO,
        base_model="/runs/models/base",
        executor=trainer_pb2.EXECUTOR_KUBERNETES,
        resources=trainer_pb2.Resources(**resources),
    )
    return Launch(run_id=run_id, attempt=attempt, spec_json=MessageToJson(spec), resume=resume)


def job_nonce(job: dict) -> str:
    """The event nonce in the worker container's environment."""
    [worker] = [c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"]
    return next((e["value"] for e in worker.get("env", []) if e["name"] == events.NONCE_ENV), "")


def validate(obj: dict) -> None:
    assert kubernetes_validate.validate(obj, K8S_VERSION, strict=True) == K8S_VERSION


# -- manifests, offline ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources", "resume", "command_head", "limits"),
    [
        (dict(gpus=4, cpu="32", memory="256Gi"), True,
         ["accelerate", "launch", "--config_file", "/etc/charter/run/accelerate.yaml", "--num_processes", "4",
          "-m", "charter.app.trainer_worker"],
         {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "4"}),
        (dict(gpus=2, processes=1, memory="64Gi"), False,
         ["python", "-m", "charter.app.trainer_worker"], {"memory": "64Gi", "nvidia.com/gpu": "2"}),
        (dict(cpu="500m", memory="2Gi"), False,
         ["python", "-m", "charter.app.trainer_worker"], {"cpu": "500m", "memory": "2Gi"}),
        ({}, True, ["python", "-m", "charter.app.trainer_worker"], None),
    ],
)  # fmt: skip
def test_manifests_validate_against_the_kubernetes_schemas(resources, resume, command_head, limits):
    launch = make_launch(attempt=3, resume=resume, **resources)
    job = job_manifest(launch, OPTIONS, run_resources(launch.spec_json))
    configmap = spec_configmap(launch, OPTIONS)
    validate(job)
    validate(configmap)
    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(kubernetes_validate.ValidationError):  # the schema check can fail
        validate(broken)

    name = "charter-run-r-0123456789abcdef-3"
    assert job["metadata"]["name"] == configmap["metadata"]["name"] == name
    assert len(name) <= 63 and DNS_LABEL.fullmatch(name)
    labels = {"app.kubernetes.io/name": "charter-trainer-worker", "charter.dev/run-id": launch.run_id,
              "charter.dev/attempt": "3"}  # fmt: skip
    for meta in (job["metadata"], job["spec"]["template"]["metadata"], configmap["metadata"]):
        assert labels.items() <= meta["labels"].items()
    accelerated = command_head[0] == "accelerate"  # DDP's config goes with the spec
    ddp = {"accelerate.yaml": (ACCELERATE_CONFIGS / "ddp.yaml").read_text()} if accelerated else {}
    assert configmap["data"] == {"spec.json": launch.spec_json, **ddp}
    assert "completionMode" not in job["spec"] and "subdomain" not in job["spec"]["template"]["spec"]

    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["enableServiceLinks"] is False and pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "charter-trainer-worker"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    assert container["name"] == "worker"
    image = container["image"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]} and security["runAsUser"] == 10001
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}

    command = container["command"]
    assert command[: len(command_head)] == command_head
    assert command[len(command_head) :] == [
        "--spec", "/etc/charter/run/spec.json", "--run-dir", "/runs/r-0123456789abcdef",
        *(["--resume"] if resume else []),
    ]  # fmt: skip
    assert container["resources"].get("limits") == limits
    if limits:
        assert container["resources"]["requests"] == {
            k: v for k, v in limits.items() if k != "nvidia.com/gpu"
        }
    assert {"name": "PYTHONUNBUFFERED", "value": "1"} in container["env"]
    assert container["envFrom"] == [{"secretRef": {"name": "charter-trainer-env"}}]

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert mounts["/runs"]["persistentVolumeClaim"] == {"claimName": "charter-runs"}
    assert mounts["/etc/charter/run"]["configMap"]["name"] == name
    assert mounts["/tmp"]["emptyDir"] == {} and mounts["/home/charter"]["emptyDir"] == {}
    assert mounts["/dev/shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert {"name": "HOME", "value": "/home/charter"} in container["env"]


def test_names_options_and_resources_are_checked(tmp_path: Path):
    long_id = "Run_" + "x" * 80
    names = {object_name(run_id, 12) for run_id in (long_id, long_id.lower(), "r-ABC", "r-abc", "r/abc")}
    assert len(names) == 5
    assert all(len(n) <= 63 and DNS_LABEL.fullmatch(n) for n in names)
    validate(job_manifest(make_launch(run_id=long_id), OPTIONS, Resources()))

    for image in ("ghcr.io/acme/charter-trainer", "charter-trainer:latest", "localhost:5000/charter"):
        with pytest.raises(ValueError, match="pin the trainer image"):
            JobOptions(namespace="charter", image=image, runs_pvc="runs")
    pinned = JobOptions(  # the shapes settings hold: lists, a str path
        namespace="charter", image="localhost:5000/charter@sha256:" + "0" * 64, runs_pvc="runs",
        image_pull_secrets=["ghcr"], tolerations=[{"key": "gpu", "operator": "Exists"}], template=str(TEMPLATE),
    )  # fmt: skip
    assert pinned.image_pull_secrets == ["ghcr"] and pinned.template == TEMPLATE
    with pytest.raises(ValueError, match="namespace='Charter'"):
        JobOptions(namespace="Charter", image="charter:1", runs_pvc="runs")

    with pytest.raises(InvalidArgument, match="spec.resources.memory='lots'"):
        job_manifest(make_launch(memory="lots"), OPTIONS, Resources(memory="lots"))
    with pytest.raises(InvalidArgument, match="processes=4 needs a GPU per process, but gpus=2"):
        job_manifest(make_launch(), OPTIONS, Resources(gpus=2, processes=4))

    # an operator's own template: extras are kept, what the executor relies on is checked
    text = TEMPLATE.read_text()
    custom = tmp_path / "job.yaml"
    custom.write_text(text.replace("    spec:\n      restartPolicy", "    spec:\n      priorityClassName: "
                                   "training\n      restartPolicy"))  # fmt: skip
    options = JobOptions(namespace="charter", image="charter:1", runs_pvc="runs", template=custom)
    job = job_manifest(make_launch(), options, Resources())
    assert job["spec"]["template"]["spec"]["priorityClassName"] == "training"
    validate(job)
    custom.write_text(
        text.replace("- name: worker", "- name: trainer").replace("backoffLimit: 0", "backoffLimit: 6")
    )
    options = JobOptions(namespace="charter", image="charter:1", runs_pvc="runs", template=custom)
    with pytest.raises(ValueError, match="spec.backoffLimit is 6, want 0; no container is named 'worker'"):
        job_manifest(make_launch(), options, Resources())


def test_a_run_on_several_nodes_is_an_indexed_job_with_a_rendezvous_service():
    launch = make_launch(nodes=2, gpus=8, cpu="96", memory="1Ti", strategy=trainer_pb2.STRATEGY_FSDP)
    resources = run_resources(launch.spec_json)
    assert (resources.nodes, resources.gpus, resources.strategy) == (2, 8, "fsdp")
    job = job_manifest(launch, OPTIONS, resources)
    configmap = spec_configmap(launch, OPTIONS)
    uid = str(uuid.uuid4())
    service = rendezvous_service(launch, OPTIONS, uid)
    for obj in (job, configmap, service):
        validate(obj)

    name = "charter-run-r-0123456789abcdef-1"
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (
        "Indexed", 2, 2, 0,
    )  # fmt: skip
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == name == service["metadata"]["name"]
    [container] = pod["containers"]
    assert container["command"] == [
        "accelerate", "launch", "--config_file", "/etc/charter/run/accelerate.yaml",
        "--num_machines", "2", "--machine_rank", "$(JOB_COMPLETION_INDEX)",
        "--main_process_ip", f"{name}-0.{name}", "--main_process_port", "29500", "--num_processes", "16",
        "-m", "charter.app.trainer_worker", "--spec", "/etc/charter/run/spec.json",
        "--run-dir", "/runs/r-0123456789abcdef",
    ]  # fmt: skip
    assert container["resources"]["limits"] == {
        "cpu": "96",
        "memory": "1Ti",
        "nvidia.com/gpu": "8",
    }  # per node
    assert configmap["data"]["accelerate.yaml"] == (ACCELERATE_CONFIGS / "fsdp.yaml").read_text()
    fsdp = yaml.safe_load(configmap["data"]["accelerate.yaml"])
    assert (
        fsdp["distributed_type"] == "FSDP"
        and fsdp["fsdp_config"]["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    )

    # headless, names published before the pods are ready, selecting the Job's pods by the label the Job
    # controller gives them, owned by the Job (deleted with it)
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"job-name": name}
    assert service["spec"]["ports"] == [{"name": "rendezvous", "port": 29500, "protocol": "TCP"}]
    assert service["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid}
    ]

    # a pod's hostname is <job>-<index>: the longest Job name leaves room for the highest index
    longest = job_manifest(
        make_launch(run_id="Run_" + "x" * 80, attempt=99999), OPTIONS, Resources(nodes=1000)
    )
    hostname = f"{longest['metadata']['name']}-999"
    assert len(hostname) <= 63 and DNS_LABEL.fullmatch(hostname)
    assert longest["spec"]["completions"] == 1000

    # the other strategies: their configs; a strategy on one GPU still runs under accelerate
    for strategy, file in (
        (trainer_pb2.STRATEGY_ZERO3, "zero3.yaml"),
        (trainer_pb2.STRATEGY_DDP, "ddp.yaml"),
    ):
        shipped = (ACCELERATE_CONFIGS / file).read_text()
        assert (
            spec_configmap(make_launch(nodes=2, strategy=strategy), OPTIONS)["data"]["accelerate.yaml"]
            == shipped
        )
    one = make_launch(gpus=1, strategy=trainer_pb2.STRATEGY_FSDP)
    command = job_manifest(one, OPTIONS, run_resources(one.spec_json))["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert command["command"][:6] == [
        "accelerate", "launch", "--config_file", "/etc/charter/run/accelerate.yaml", "--num_processes", "1",
    ]  # fmt: skip
    assert "accelerate.yaml" not in spec_configmap(make_launch(gpus=1), OPTIONS)["data"]  # plain python


# -- a fake API server ----------------------------------------------------------------------------------


def now_rfc3339(ns: int | None = None, nano: bool = False) -> str:
    ns = time.time_ns() if ns is None else ns
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9))
    fraction = f"{ns % 10**9:09d}".rstrip("0") if nano else ""  # Go's RFC3339Nano trims zeros
    return f"{whole}.{fraction}Z" if fraction else f"{whole}Z"


class FakeKubernetes:
    """The state of one namespace and the test's controls over it (the Job controller and kubelet)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.jobs: dict[str, dict] = {}
        self.configmaps: dict[str, dict] = {}
        self.services: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}
        self.forbidden: set[str] = set()
        """Kinds whose creation the API server refuses (403: a Role without them)."""
        self.logs: dict[str, list[tuple[int, str]]] = {}
        self.requests: list[dict] = []
        self.break_streams = 0
        self.last_ns = 0

    # the controllers' side
    def start_pod(
        self, job: str, waiting: str = "ContainerCreating", message: str = "", index: int | None = None
    ) -> str:
        """A pod of `job`; `index`: of an indexed Job, labelled and annotated as the controller does."""
        with self.cond:
            spec = self.jobs[job]
            pod = f"{job}-{'' if index is None else f'{index}-'}{uuid.uuid4().hex[:5]}"
            indexed = {} if index is None else {INDEX_KEY: str(index)}
            self.pods[pod] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": pod, "namespace": "charter", "uid": str(uuid.uuid4()),
                    "creationTimestamp": now_rfc3339(),
                    "labels": {**spec["spec"]["template"]["metadata"]["labels"], "job-name": job,
                               "batch.kubernetes.io/job-name": job,
                               "controller-uid": spec["metadata"]["uid"], **indexed},
                    "annotations": {**spec["spec"]["template"]["metadata"]["annotations"], **indexed},
                    "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job,
                                         "uid": spec["metadata"]["uid"], "controller": True,
                                         "blockOwnerDeletion": True}],
                },
                "spec": {**spec["spec"]["template"]["spec"], "nodeName": "gpu-node-1"},
                "status": {"phase": "Pending", "qosClass": "Guaranteed", "startTime": now_rfc3339(),
                           "containerStatuses": []},
            }  # fmt: skip
            self.logs[pod] = []
            self.jobs[job]["status"] = {"active": 1, "ready": 0, "startTime": now_rfc3339()}
            self.set_state(pod, {"waiting": {"reason": waiting, **({"message": message} if message else {})}})
            return pod

    def set_state(self, pod: str, state: dict, phase: str | None = None) -> None:
        with self.cond:
            status = self.pods[pod]["status"]
            status["containerStatuses"] = [{
                "name": "worker", "image": OPTIONS.image, "imageID": "", "containerID": "",
                "ready": "running" in state, "restartCount": 0, "started": "waiting" not in state,
                "state": state, "lastState": {},
            }]  # fmt: skip
            status["phase"] = phase or ("Pending" if "waiting" in state else "Running")
            self.cond.notify_all()

    def log(self, pod: str, *lines: str) -> None:
        """Appends lines, all with one timestamp (a burst from one write)."""
        with self.cond:
            self.last_ns = max(time.time_ns() // 10**7 * 10**7, self.last_ns + 10**7)
            self.logs[pod].extend((self.last_ns, line) for line in lines)
            self.cond.notify_all()

    def end(self, pod: str, exit_code: int, reason: str, at_ns: int | None = None) -> None:
        """The worker container terminates."""
        self.set_state(pod, {"terminated": {"exitCode": exit_code, "reason": reason, "startedAt": now_rfc3339(),
                                            "finishedAt": now_rfc3339(at_ns)}},
                       phase="Succeeded" if exit_code == 0 else "Failed")  # fmt: skip

    def finish(self, job: str, pod: str | None, condition: str, *, exit_code: int, reason: str,
               job_reason: str = "", job_message: str = "", count: int = 1) -> None:  # fmt: skip
        """The Job ends (`count`: its succeeded or failed pods), after its pod `pod` if given."""
        with self.cond:
            if pod is not None:
                self.end(pod, exit_code, reason)
            status = self.jobs[job]["status"]
            status.pop("active", None)
            status["succeeded" if condition == "Complete" else "failed"] = count
            status["conditions"] = [{"type": condition, "status": "True", "reason": job_reason or None,
                                     "message": job_message or None, "lastProbeTime": now_rfc3339(),
                                     "lastTransitionTime": now_rfc3339()}]  # fmt: skip
            self.cond.notify_all()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeKubernetes

    def log_message(self, *args: Any) -> None:
        pass

    def reply(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def status(self, code: int, reason: str, message: str) -> None:
        self.reply(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": message, "reason": reason, "code": code})  # fmt: skip

    def handle_request(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        fake = self.fake
        with fake.cond:
            fake.requests.append({"method": self.command, "path": url.path, "query": query, "body": body,
                                  "content_type": self.headers.get("Content-Type")})  # fmt: skip
        match = re.fullmatch(r"/apis?(?:/batch)?/v1/namespaces/charter/(jobs|configmaps|services|pods)"
                             r"(?:/([^/]+))?(/log)?", url.path)  # fmt: skip
        if match is None:
            return self.status(404, "NotFound", f"no route {url.path}")
        kind, name, log = match.groups()
        store = {
            "jobs": fake.jobs,
            "configmaps": fake.configmaps,
            "services": fake.services,
            "pods": fake.pods,
        }[kind]
        if log:
            return self.serve_log(name, query)
        with fake.cond:
            if self.command == "POST":
                if kind in fake.forbidden:
                    return self.status(403, "Forbidden", f'{kind} is forbidden: User "charter-trainer" cannot '
                                       f"create resource {kind!r}")  # fmt: skip
                name = body["metadata"]["name"]
                if name in store:
                    return self.status(409, "AlreadyExists", f'{kind} "{name}" already exists')
                obj = copy.deepcopy(body)
                obj["metadata"].update(
                    uid=str(uuid.uuid4()), resourceVersion="1", creationTimestamp=now_rfc3339()
                )
                if kind == "jobs":
                    obj["status"] = {}
                store[name] = obj
                return self.reply(201, obj)
            if self.command == "GET" and name is None:  # list, by label selector
                key, _, value = query.get("labelSelector", "").partition("=")
                items = [p for p in store.values() if p["metadata"]["labels"].get(key) == value]
                return self.reply(
                    200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
                )
            if name not in store:
                return self.status(404, "NotFound", f'{kind} "{name}" not found')
            if self.command == "GET":
                return self.reply(200, store[name])
            if self.command == "PATCH":  # JSON merge patch, as much of it as the executor sends
                for key, value in body.items():
                    store[name].setdefault(key, {}).update(value)
                return self.reply(200, store[name])
            if self.command == "DELETE":
                obj = store.pop(name)
                if kind == "jobs":  # the garbage collector: the Job's pods and ConfigMap go with it
                    uid = obj["metadata"]["uid"]
                    for other in (fake.pods, fake.configmaps, fake.services):
                        for key in [
                            k
                            for k, v in other.items()
                            if any(o["uid"] == uid for o in v["metadata"].get("ownerReferences", []))
                        ]:
                            del other[key]  # fmt: skip
                    fake.cond.notify_all()
                return self.reply(200, obj)
        return self.status(405, "MethodNotAllowed", self.command)

    do_GET = do_POST = do_PATCH = do_DELETE = handle_request

    def serve_log(self, pod: str, query: dict[str, str]) -> None:
        fake = self.fake
        since = time.time_ns() - int(query["sinceSeconds"]) * 10**9 if "sinceSeconds" in query else 0

        def render(entries: list[tuple[int, str]]) -> bytes:
            stamped = query.get("timestamps") == "true"
            return b"".join(
                ((now_rfc3339(ns, nano=True) + " ") if stamped else "").encode() + line.encode() + b"\n"
                for ns, line in entries if ns >= since
            )  # fmt: skip

        if query.get("follow") != "true":
            entries = fake.logs.get(pod)
            if entries is None:
                return self.status(404, "NotFound", f'pods "{pod}" not found')
            return self.reply(
                200, render(entries[-int(query.get("tailLines", 10**9)) :]).decode(), "text/plain"
            )
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        while True:
            with fake.cond:
                entries = fake.logs.get(pod, [])[sent:]
                sent += len(entries)
                state = fake.pods.get(pod, {}).get("status", {}).get("containerStatuses", [{}])
                done = pod not in fake.pods or "terminated" in state[0].get("state", {})
                cut = fake.break_streams > 0 and bool(entries)
            data = render(entries)
            if entries and entries[-1][1].endswith("(no newline)") and done:
                data = data[:-1]
            for i in range(0, len(data), 7):  # in pieces that split lines and timestamps
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data[i : i + 7]), data[i : i + 7]))
                self.wfile.flush()
            if cut:  # the connection drops before the stream's end
                with fake.cond:
                    fake.break_streams -= 1
                self.close_connection = True
                return
            if done:
                self.wfile.write(b"0\r\n\r\n")
                return
            with fake.cond:
                fake.cond.wait(0.05)


@pytest.fixture
def fake() -> Iterator[tuple[FakeKubernetes, KubernetesExecutor]]:
    state = FakeKubernetes()
    handler = type("BoundHandler", (Handler,), {"fake": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    configuration = k8s.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    api = k8s.ApiClient(configuration)
    executor = KubernetesExecutor(OPTIONS, api, poll_seconds=0.05, request_timeout=5, log_idle_seconds=5)
    try:
        yield state, executor
    finally:
        server.shutdown()
        server.server_close()
        api.close()


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


def requests(state: FakeKubernetes, method: str, kind: str) -> list[dict]:
    return [r for r in state.requests if r["method"] == method and f"/{kind}" in r["path"]]


# -- the executor against the fake API server -----------------------------------------------------------


async def test_launch_follow_the_log_and_complete(fake):
    state, executor = fake
    with capture_logs() as logs:
        launch = make_launch(gpus=2, cpu="8", memory="64Gi")
        handle = await executor.launch(launch)
        name = "charter-run-r-0123456789abcdef-1"
        assert handle == f"charter/{name}" and executor.run_dir(launch.run_id) == "/runs/r-0123456789abcdef"

        [post_configmap] = requests(state, "POST", "configmaps")
        [post_job] = requests(state, "POST", "jobs")
        assert post_job["body"] == job_manifest(launch, OPTIONS, run_resources(launch.spec_json))
        assert post_configmap["body"] == spec_configmap(launch, OPTIONS)
        assert json.loads(state.configmaps[name]["data"]["spec.json"])["resources"]["gpus"] == 2
        [patch] = requests(state, "PATCH", "configmaps")
        assert patch["content_type"] == "application/merge-patch+json"
        assert state.configmaps[name]["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": name,
                "uid": state.jobs[name]["metadata"]["uid"],
            }
        ]
        assert await executor.outcome(handle) is None  # created, no pod yet

        received: list[str] = []

        async def follow() -> None:
            async for line in executor.lines(handle):
                received.append(line)

        follower = asyncio.create_task(follow())
        pod = state.start_pod(name)
        await asyncio.sleep(0.2)
        assert received == [] and await executor.outcome(handle) is None  # waits for the container to start
        state.set_state(pod, {"running": {"startedAt": now_rfc3339()}})
        expected = [
            "loading model /runs/models/base",
            events.encode("progress", total_steps=4),
            events.encode("metrics", step=1, values={"loss": 0.69}),
        ]
        state.log(pod, *expected)  # one timestamp for the three
        await until(lambda: len(received) == 3)
        state.break_streams = 1  # the next bytes go out, then the connection drops
        burst = [events.encode("checkpoint", step=2, path="/runs/r-0123456789abcdef/checkpoints/step-2"),
                 "tqdm: 50%|█████     | 2/4"]  # fmt: skip
        state.log(pod, *burst)
        expected += burst
        await until(lambda: state.break_streams == 0)
        last = [events.encode("metrics", step=4, values={"loss": 0.41}),
                events.encode("finished", output_dir="/runs/r-0123456789abcdef/model")]  # fmt: skip
        state.log(pod, last[0])
        expected += last
        await until(lambda: len(received) == 5)
        assert await executor.outcome(handle) is None  # running
        with state.cond:  # the last line, unterminated, as the container exits
            state.log(pod, last[1] + " (no newline)")
            state.finish(
                name, pod, "Complete", exit_code=0, reason="Completed", job_reason="CompletionsReached"
            )
        await asyncio.wait_for(follower, 10)
        assert received == [
            *expected[:-1],
            last[1] + " (no newline)",
        ]  # nothing lost, nothing repeated across the broken stream
        follows = [r for r in requests(state, "GET", "pods") if r["path"].endswith("/log")]
        assert len(follows) >= 2 and all(r["query"]["container"] == "worker" for r in follows)
        assert "sinceSeconds" not in follows[0]["query"] and "sinceSeconds" in follows[1]["query"]
        assert await executor.outcome(handle) == Outcome(True, "")
    assert [e["reason"] for e in logs if e["event"] == "trainer.worker.log_reopened"] == ["ProtocolError"]
    [started] = [e for e in logs if e["event"] == "trainer.worker.started"]
    assert started["job"] == handle and started["existing"] is False


async def test_relaunching_an_attempt_is_idempotent(fake):
    state, executor = fake
    launch = make_launch(attempt=2, resume=True)
    handle = await executor.launch(launch)
    uid = state.jobs["charter-run-r-0123456789abcdef-2"]["metadata"]["uid"]
    assert await executor.launch(launch) == handle  # the service restarted between launch and store
    assert len(requests(state, "POST", "jobs")) == 2 and len(state.jobs) == 1
    assert state.jobs["charter-run-r-0123456789abcdef-2"]["metadata"]["uid"] == uid
    assert (
        state.configmaps["charter-run-r-0123456789abcdef-2"]["metadata"]["ownerReferences"][0]["uid"] == uid
    )

    state.jobs["charter-run-r-0123456789abcdef-2"]["metadata"]["annotations"]["charter.dev/run-id"] = (
        "r-other"
    )
    with pytest.raises(FailedPrecondition, match="belongs to run 'r-other'"):
        await executor.launch(launch)


@pytest.mark.parametrize(
    ("log", "terminated", "job_reason", "expected"),
    [
        (["step 7", events.encode("error", message="CUDA error: device-side assert triggered"), "Traceback ..."],
         (1, "Error"), "BackoffLimitExceeded", "CUDA error: device-side assert triggered"),
        (["step 7"], (137, "OOMKilled"), "BackoffLimitExceeded",
         "worker container was OOMKilled (exit code 137): raise spec.resources.memory"),
        (["step 7"], (3, "Error"), "BackoffLimitExceeded", "worker process exited with code 3"),
        (["step 7"], (143, "Error"), "BackoffLimitExceeded", "worker process killed by SIGTERM"),
        (None, None, "DeadlineExceeded", "Job failed: DeadlineExceeded: Job was active longer than specified deadline"),
    ],
)  # fmt: skip
async def test_failed_attempts_say_why(fake, log, terminated, job_reason, expected):
    state, executor = fake
    handle = await executor.launch(make_launch())
    name = handle.split("/")[1]
    pod = None
    if log is not None:
        pod = state.start_pod(name)
        state.set_state(pod, {"running": {"startedAt": now_rfc3339()}})
        state.log(pod, *log)
    code, reason = terminated or (None, None)
    message = "Job was active longer than specified deadline" if job_reason == "DeadlineExceeded" else ""
    state.finish(
        name, pod, "Failed", exit_code=code, reason=reason, job_reason=job_reason, job_message=message
    )
    assert await executor.outcome(handle) == Outcome(False, expected)
    lines = [line async for line in executor.lines(handle)]
    assert lines == (log or [])


async def test_a_pod_that_cannot_start_fails_and_is_removed(fake):
    state, executor = fake
    handle = await executor.launch(make_launch(gpus=1))
    name = handle.split("/")[1]
    state.start_pod(name, "ImagePullBackOff", 'Back-off pulling image "ghcr.io/acme/charter-trainer:0.1.0"')
    assert [line async for line in executor.lines(handle)] == []
    outcome = await executor.outcome(handle)
    assert outcome is not None and not outcome.succeeded
    assert (
        outcome.reason.startswith(f"worker pod {name}-")
        and "cannot start: ImagePullBackOff: Back-off" in outcome.reason
    )
    assert name not in state.jobs and state.pods == {}  # its GPU is free again


async def test_cancel_deletes_the_job_in_the_background(fake):
    state, executor = fake
    handle = await executor.launch(make_launch())
    name = handle.split("/")[1]
    pod = state.start_pod(name)
    state.set_state(pod, {"running": {"startedAt": now_rfc3339()}})
    state.log(pod, "step 1")
    lines = executor.lines(handle)
    assert await anext(lines) == "step 1"
    await executor.cancel(handle)
    [delete] = requests(state, "DELETE", "jobs")
    assert delete["path"].endswith(f"/jobs/{name}") and delete["query"] == {"propagationPolicy": "Background"}
    assert name not in state.jobs and name not in state.configmaps and pod not in state.pods
    assert [line async for line in lines] == []  # the pod went: the log ends
    await executor.cancel(handle)  # idempotent: 404s are fine
    assert await executor.outcome(handle) == Outcome(
        False, f"Job {handle} no longer exists (cancelled, or deleted after it finished)"
    )


async def test_a_silent_log_stream_is_reopened(fake):
    state, executor = fake
    impatient = KubernetesExecutor(OPTIONS, executor.core.api_client, poll_seconds=0.05, log_idle_seconds=0.3)
    handle = await impatient.launch(make_launch())
    name = handle.split("/")[1]
    pod = state.start_pod(name)
    state.set_state(pod, {"running": {"startedAt": now_rfc3339()}})
    state.log(pod, "loading model")
    with capture_logs() as logs:
        lines = impatient.lines(handle)
        assert await anext(lines) == "loading model"
        waiting = asyncio.ensure_future(anext(lines))
        await asyncio.sleep(1.0)  # a long silence while it waits: a dead connection looks the same
        state.log(pod, "step 1")
        assert await waiting == "step 1"
        state.finish(name, pod, "Complete", exit_code=0, reason="Completed")
        assert [line async for line in lines] == []
    reasons = {e["reason"] for e in logs if e["event"] == "trainer.worker.log_reopened"}
    assert reasons == {"ReadTimeoutError"}


# -- the trainer service with this executor -------------------------------------------------------------


async def test_the_trainer_service_runs_and_fails_jobs_through_the_executor(fake, tmp_path):
    from charter.api.trainer import run_store
    from charter.core.settings import TrainerSettings
    from charter.servicers.trainer import TrainerServicer

    from tests.support.hh import HH_DEV
    from tests.support.trainer import run_spec

    state, executor = fake
    store = run_store(f"sqlite:///{tmp_path / 'trainer.db'}")
    settings = TrainerSettings(poll_seconds=0.05, allowed_roots=[HH_DEV.parent])  # the data's folder
    servicer = TrainerServicer(store, executor, settings)
    await servicer.start()
    spec = run_spec(trainer_pb2.ALGORITHM_REWARD_MODEL, "embedded", files=[str(HH_DEV)], max_steps=2)
    spec.resources.gpus = 1
    try:
        run = (await servicer.StartRun(trainer_pb2.StartRunRequest(spec=spec), None)).run
        assert run.state == trainer_pb2.RUN_STATE_RUNNING and run.job_name in state.jobs
        assert run.output_dir == f"/runs/{run.id}/model"
        nonce = job_nonce(state.jobs[run.job_name])  # the worker's events carry its attempt's nonce
        pod = state.start_pod(run.job_name)
        state.set_state(pod, {"running": {"startedAt": now_rfc3339()}})
        state.log(
            pod,
            events.encode("progress", nonce, total_steps=2),
            events.encode("metrics", nonce, step=1, values={"loss": 0.7}),
            events.encode("metrics", step=99, values={"loss": -1.0}),  # printed text: no nonce
            events.encode("checkpoint", nonce, step=1, path=f"/runs/{run.id}/checkpoints/checkpoint-1"),
            events.encode("metrics", nonce, step=2, values={"loss": 0.6}),
            events.encode("finished", "f" * 32, output_dir="/tmp/elsewhere"),  # another nonce
            events.encode("finished", nonce, output_dir=f"/runs/{run.id}/model"),
        )
        state.finish(run.job_name, pod, "Complete", exit_code=0, reason="Completed")
        await until(lambda: store.get(run.id).state == trainer_pb2.RUN_STATE_SUCCEEDED)
        done = store.get(run.id)
        assert (done.step, done.total_steps, done.last_metrics["loss"]) == (2, 2, pytest.approx(0.6))
        assert done.last_checkpoint.endswith("checkpoint-1") and done.output_dir == f"/runs/{run.id}/model"

        # a worker the kernel kills for memory: FAILED with the reason; resume is attempt 2, a new Job
        run = (await servicer.StartRun(trainer_pb2.StartRunRequest(spec=spec), None)).run
        nonce = job_nonce(state.jobs[run.job_name])
        pod = state.start_pod(run.job_name)
        state.set_state(pod, {"running": {"startedAt": now_rfc3339()}})
        state.log(
            pod,
            events.encode("metrics", nonce, step=1, values={"loss": 0.7}),
            events.encode("error", message="forged: not the reason"),  # no nonce: not the worker's
        )
        state.finish(
            run.job_name, pod, "Failed", exit_code=137, reason="OOMKilled", job_reason="BackoffLimitExceeded"
        )
        await until(lambda: store.get(run.id).state == trainer_pb2.RUN_STATE_FAILED)
        assert "OOMKilled" in store.get(run.id).reason
        resumed = (await servicer.ResumeRun(trainer_pb2.ResumeRunRequest(run_id=run.id), None)).run
        assert resumed.attempt == 2 and resumed.job_name.endswith("-2") and resumed.job_name in state.jobs
        assert job_nonce(state.jobs[resumed.job_name]) not in ("", nonce)  # a new attempt, a new nonce
        assert (
            "--resume" in state.jobs[resumed.job_name]["spec"]["template"]["spec"]["containers"][0]["command"]
        )
        cancelled = (await servicer.CancelRun(trainer_pb2.CancelRunRequest(run_id=run.id), None)).run
        assert cancelled.state == trainer_pb2.RUN_STATE_CANCELLED
        await until(lambda: resumed.job_name not in state.jobs)  # deleted
    finally:
        await servicer.stop()


async def test_several_nodes_follow_rank_0_and_succeed_only_when_every_node_does(fake):
    state, executor = fake
    launch = make_launch(nodes=2, gpus=1)
    handle = await executor.launch(launch)
    name = handle.split("/")[1]
    uid = state.jobs[name]["metadata"]["uid"]
    [post] = requests(state, "POST", "services")  # after the Job, owned by it
    assert post["body"] == rendezvous_service(launch, OPTIONS, uid)
    assert state.services[name]["metadata"]["ownerReferences"][0]["uid"] == uid
    assert await executor.launch(launch) == handle and len(state.services) == 1  # idempotent

    received: list[str] = []

    async def follow() -> None:
        async for line in executor.lines(handle):
            received.append(line)

    rank0 = state.start_pod(name, index=0)
    rank1 = state.start_pod(name, index=1)  # the newer pod: not the one that reports
    follower = asyncio.create_task(follow())
    for pod in (rank0, rank1):
        state.set_state(pod, {"running": {"startedAt": now_rfc3339()}})
    state.log(rank1, "rank 1: step 1")
    finished = events.encode("finished", output_dir="/runs/r-0123456789abcdef/model")
    state.log(rank0, "rank 0: step 1", finished)
    state.end(rank0, 0, "Completed")
    await asyncio.wait_for(follower, 10)
    assert received == ["rank 0: step 1", finished]
    assert await executor.outcome(handle) is None  # rank 1 still runs

    state.end(rank1, 0, "Completed")
    state.finish(name, None, "Complete", exit_code=0, reason="Completed", count=1)  # as a successPolicy would
    assert await executor.outcome(handle) == Outcome(
        False, f"Job {handle} completed with 1 of its 2 nodes succeeded"
    )
    state.jobs[name]["status"]["succeeded"] = 2
    assert await executor.outcome(handle) == Outcome(True, "")

    await executor.cancel(handle)  # the Job goes, its ConfigMap and Service with it
    assert state.jobs == state.configmaps == state.services == {}


async def test_the_first_node_to_fail_says_why(fake):
    state, executor = fake
    handle = await executor.launch(make_launch(nodes=3))
    name = handle.split("/")[1]
    pods = [state.start_pod(name, index=i) for i in range(3)]
    for pod in pods:
        state.set_state(pod, {"running": {"startedAt": now_rfc3339()}})
    assert await executor.outcome(handle) is None
    # node 2 is killed for memory; rank 0 then fails on the lost peer; the Job stops node 1
    state.log(pods[0], events.encode("error", message="DistBackendError: Connection closed by peer"))
    t = time.time_ns()
    state.end(pods[2], 137, "OOMKilled", at_ns=t - 5 * 10**9)
    state.end(pods[0], 1, "Error", at_ns=t)
    state.end(pods[1], 143, "Error", at_ns=t + 10**9)
    state.finish(name, None, "Failed", exit_code=1, reason="Error", job_reason="BackoffLimitExceeded")
    assert await executor.outcome(handle) == Outcome(
        False, "node 2 of 3: worker container was OOMKilled (exit code 137): raise spec.resources.memory"
    )


async def test_a_node_that_cannot_start_or_a_missing_service_fails_the_attempt(fake):
    state, executor = fake
    handle = await executor.launch(make_launch(nodes=2, gpus=1))
    name = handle.split("/")[1]
    state.set_state(state.start_pod(name, index=0), {"running": {"startedAt": now_rfc3339()}})
    state.start_pod(name, "ImagePullBackOff", "Back-off pulling image", index=1)
    outcome = await executor.outcome(handle)
    assert (
        outcome is not None and not outcome.succeeded and "cannot start: ImagePullBackOff" in outcome.reason
    )
    assert state.jobs == state.pods == state.services == {}  # every node's GPUs are free again

    state.forbidden.add("services")  # a Role without services: the ranks could never meet
    with pytest.raises(FailedPrecondition, match="refused to create Service .*: 403"):
        await executor.launch(make_launch(nodes=2))
    assert state.jobs == state.configmaps == {}


def test_workers_mount_the_client_certificate_when_the_cluster_speaks_mutual_tls():
    # with tls_secret the worker reaches a review service serving mTLS: the Secret at /etc/charter/tls
    # and client.tls pointed at it; without, neither
    options = JobOptions(**{**OPTIONS.model_dump(), "tls_secret": "charter-tls"})
    job = job_manifest(make_launch(), options, Resources())
    validate(job)
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: (m, volumes[m["name"]]) for m in container["volumeMounts"]}
    mount, volume = mounts["/etc/charter/tls"]
    assert mount["readOnly"] is True and volume["secret"]["secretName"] == "charter-tls"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CHARTER_CLIENT__TLS__CA_FILE"] == "/etc/charter/tls/ca.crt"
    assert env["CHARTER_CLIENT__TLS__CERT_FILE"] == "/etc/charter/tls/tls.crt"
    assert env["CHARTER_CLIENT__TLS__KEY_FILE"] == "/etc/charter/tls/tls.key"
    plain = job_manifest(make_launch(), OPTIONS, Resources())["spec"]["template"]["spec"]
    assert not any("TLS" in e["name"] for e in plain["containers"][0]["env"])
    assert "/etc/charter/tls" not in {m["mountPath"] for m in plain["containers"][0]["volumeMounts"]}
