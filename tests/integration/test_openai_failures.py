"""The OpenAI-compatible engine against servers that misbehave: down, 5xx, 4xx, hanging."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator

import pytest
from charter.core.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from charter.core.settings import OpenAISettings
from charter.inference import ChatRequest, Message, Sampling, ScoreRequest

from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

REQUEST = ChatRequest(messages=(Message(role="user", content="hi"),), sampling=Sampling(max_tokens=4))
SCORE = ScoreRequest(messages=(Message(role="user", content="hi"),), options=("A", "B"))


class Scripted(http.server.BaseHTTPRequestHandler):
    mode = "500"
    hits = 0

    def do_POST(self) -> None:  # noqa: N802
        type(self).hits += 1
        request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        if self.mode == "no-extension":  # an OpenAI-compatible server without vLLM's logprob_token_ids
            return self._legacy_completion(request)
        if self.mode == "hang":
            time.sleep(5)
        status, body = {
            "500": (500, {"error": {"message": "boom"}}),
            "503": (503, {"error": {"message": "loading"}}),
            "400": (400, {"error": {"message": "max_tokens is too large"}}),
            "404": (404, {"error": {"message": "The model `x` does not exist."}}),
            "hang": (200, {}),
        }[self.mode]
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _legacy_completion(self, request: dict) -> None:
        choices = []
        for i, prompt in enumerate(request["prompt"]):
            if request.get("echo"):  # logprob of each prompt token: the last token's is -1 - (its id % 2)
                logprobs = {
                    "token_logprobs": [None] + [-0.5] * (len(prompt) - 2) + [-1.0 - prompt[-1] % 2, -0.1]
                }
            else:  # top-1 only: the requested ids are missing
                logprobs = {"top_logprobs": [{"token_id:7": -0.1}]}
            choices.append({"index": i, "text": "x", "logprobs": logprobs, "finish_reason": "length"})
        data = json.dumps({"choices": choices}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[type[Scripted]]:
    handler = type("Handler", (Scripted,), {"hits": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler
    server.shutdown()


def engine_for(port: int, embedded_model, retries: int = 2):
    from charter.inference.openai_engine import OpenAIEngine

    settings = OpenAISettings(
        base_url=f"http://127.0.0.1:{port}/v1", max_retries=retries, backoff_seconds=0.05
    )
    return OpenAIEngine(settings, model="x", tokenizer=str(embedded_model))


async def test_server_down_is_unavailable_after_retries(embedded_model) -> None:
    engine = engine_for(free_port(), embedded_model)
    start = time.monotonic()
    with pytest.raises(Unavailable, match="unavailable after 3 attempts: ConnectError"):
        await engine.chat([REQUEST], timeout=30)
    assert time.monotonic() - start < 10
    await engine.close()


@pytest.mark.parametrize("mode", ["500", "503"])
async def test_server_errors_are_retried_then_unavailable(scripted, embedded_model, mode: str) -> None:
    scripted.mode = mode
    engine = engine_for(scripted.port, embedded_model)
    with pytest.raises(Unavailable, match=f"HTTP {mode}"):
        await engine.score_options([SCORE], timeout=30)
    assert scripted.hits == 3  # the first try and two retries
    await engine.close()


@pytest.mark.parametrize(("mode", "error"), [("400", InvalidArgument), ("404", NotFound)])
async def test_client_errors_are_not_retried(scripted, embedded_model, mode: str, error) -> None:
    scripted.mode = mode
    engine = engine_for(scripted.port, embedded_model)
    with pytest.raises(error, match=f"\\({mode}\\)"):
        await engine.chat([REQUEST], timeout=30)
    assert scripted.hits == 1
    await engine.close()


async def test_hanging_server_hits_the_deadline(scripted, embedded_model) -> None:
    scripted.mode = "hang"
    engine = engine_for(scripted.port, embedded_model)
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="0.5 s deadline"):
        await engine.chat([REQUEST], timeout=0.5)
    assert time.monotonic() - start < 2
    await engine.close()


def test_unknown_model_path_is_not_found(tmp_path) -> None:
    from charter.inference.transformers_engine import TransformersEngine

    with pytest.raises(NotFound, match="does not exist"):
        TransformersEngine(tmp_path / "no-such-model")


async def test_server_without_the_logprob_extension_falls_back_to_echo(scripted, embedded_model) -> None:
    scripted.mode = "no-extension"
    engine = engine_for(scripted.port, embedded_model)
    request = ScoreRequest(
        messages=(Message(role="user", content="Pick"), Message(role="assistant", content="Answer: (")),
        options=("A", "B"),
    )
    [scores] = await engine.score_options([request], timeout=30)
    a, b = (engine.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in ("A", "B"))
    assert scores.logprobs == (-1.0 - a % 2, -1.0 - b % 2)  # the echo path's values, not the top-1 answer
    assert scripted.hits == 2  # one try of the extension, one echo request
    await engine.close()
