"""Fake OpenAI-compatible LLM server that drives the real `kilo serve` offline.

Kilo 7.7.7 (provider npm `@ai-sdk/openai-compatible`) always POSTs /v1/chat/completions with
stream:true + stream_options.include_usage; we answer with the exact SSE shape it parses
(role chunk, content/tool_call chunks, finish_reason chunk, usage chunk with choices: [], [DONE]).
Behaviour is scripted per test with `enqueue(...)`, else keyed on the last user text
(see `_default_response`): a prompt can carry a whole script of tool calls (`parse_steps`), so
agents dispatched by the town act on the bead text they are given. Standalone: `python -m gastown.local.scripted_model --port 18080`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from aiohttp import web

TITLE_TEXT = "Fake title"
DEFAULT_PREFIX = "Hello from the fake LLM. You said: "


@dataclass
class Reply:
    text: str


@dataclass
class ToolCall:
    name: str
    arguments: dict = field(default_factory=dict)


@dataclass
class Error:
    status: int = 500
    message: str = "fake LLM forced error"


@dataclass
class Slow:
    words: int = 3
    interval: float = 1.0


@dataclass
class Hang:
    """Never answers until the client disconnects or the server closes (abort tests)."""


Response = Reply | ToolCall | Error | Slow | Hang | list  # a list of ToolCall = parallel calls


@dataclass
class LLMRequest:
    """One recorded chat request; attribute or dict-style access (`r.model` / `r["model"]`)."""

    index: int
    time: float
    body: dict
    model: str | None
    stream: bool
    last_user_text: str
    is_title: bool
    has_tool_result: bool
    tool_names: list[str]
    response: str = ""  # kind of answer given: reply/tool_calls/error/slow/hang/title/...
    aborted: bool = False  # client went away before the answer finished

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    @property
    def messages(self) -> list[dict]:
        return self.body.get("messages") or []


def _text_of(content: Any, skip_env: bool = False) -> str:
    """Message content is a string or an array of parts; join the text parts."""
    if isinstance(content, str):
        return content
    parts = []
    for p in content or []:
        if isinstance(p, dict) and p.get("type", "text") == "text" and isinstance(p.get("text"), str):
            if skip_env and p["text"].lstrip().startswith("<environment_details>"):
                continue
            parts.append(p["text"])
    return "\n".join(parts)


def make_record(body: dict, index: int = 0) -> LLMRequest:
    msgs = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    users = [m for m in msgs if m.get("role") == "user"]
    system = " ".join(_text_of(m.get("content")) for m in msgs if m.get("role") == "system")
    is_title = "title generator" in system.lower() or any(
        "generate a title" in _text_of(m.get("content")).lower() for m in users)
    return LLMRequest(
        index=index, time=time.time(), body=body, model=body.get("model"),
        stream=bool(body.get("stream")),
        last_user_text=_text_of(users[-1].get("content"), skip_env=True) if users else "",
        is_title=is_title, has_tool_result=bool(msgs) and msgs[-1].get("role") == "tool",
        tool_names=[(t.get("function") or {}).get("name") for t in body.get("tools") or []
                    if isinstance(t, dict)])


_BRANCH = re.compile(r"[Bb]ranch:? `([^`]+)`")


def _fill(value: Any, branch: str | None) -> Any:
    """``{{branch}}`` in a scripted argument becomes the branch the prompt names (a polecat's
    "Your branch: `…`", a refinery's "Branch `…` into"), so a script is written before dispatch."""
    if isinstance(value, str) and branch:
        return value.replace("{{branch}}", branch)
    if isinstance(value, dict):
        return {k: _fill(v, branch) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, branch) for v in value]
    return value


def parse_steps(text: str) -> list[list[ToolCall]]:
    """The script in a prompt: ``CALL_TOOL <name> [<json>]`` calls, one step each group; a
    ``THEN_TOOL`` starts the next step, run after the previous step's results came back. Calls in
    one step are parallel. A keyword inside an earlier call's JSON (a script meant for the next
    agent, e.g. in a gt_done summary) is part of that JSON, not of this script."""
    steps: list[list[ToolCall]] = []
    dec, end = json.JSONDecoder(), 0
    m_branch = _BRANCH.search(text)
    branch = m_branch.group(1) if m_branch else None
    for m in re.finditer(r"(CALL_TOOL|THEN_TOOL)\s+([\w.\-]+)[ \t]*", text):
        if m.start() < end:
            continue
        args: dict = {}
        end = m.end()
        if text[m.end():m.end() + 1] == "{":
            try:
                args, end = dec.raw_decode(text, m.end())
            except ValueError:
                pass
        if m.group(1) == "THEN_TOOL" or not steps:
            steps.append([])
        steps[-1].append(ToolCall(m.group(2), _fill(args, branch) if isinstance(args, dict) else {}))
    return steps


def _parse_tool_calls(text: str) -> list[ToolCall]:
    """Every call of the script's first step."""
    steps = parse_steps(text)
    return steps[0] if steps else []


def _calls_since_last_user(messages: list[dict]) -> int:
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    return sum(1 for m in messages[last_user + 1:] if m.get("role") == "assistant" and m.get("tool_calls"))


def provider_config_for(base_url: str, models=("m1", "m2"), provider_id: str = "fake") -> dict:
    """The value for kilo config `provider` (also usable when the fake runs as a subprocess)."""
    return {provider_id: {
        "npm": "@ai-sdk/openai-compatible", "name": "Fake",
        "options": {"baseURL": base_url, "apiKey": "x"},
        "models": {m: {"name": m, "tool_call": True, "limit": {"context": 100000, "output": 8000}}
                   for m in models}}}


def _error_json(status: int, message: str, code: str | None = None, param: str | None = None):
    etype = "server_error" if status >= 500 else "invalid_request_error"
    return web.json_response(
        {"error": {"message": message, "type": etype, "param": param, "code": code or etype}},
        status=status)


class FakeLLM:
    """aiohttp server on 127.0.0.1 (port 0 = free port); records every chat request."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 known_models: set[str] | None = None, slow_interval: float = 1.0):
        self.host, self._want_port = host, port
        self.known_models = known_models
        self.slow_interval = slow_interval
        self.prompt_tokens = 10  # small, so kilo never thinks it must compact
        self.requests: list[LLMRequest] = []
        self._queue: list[Response] = []
        self._changed = asyncio.Event()  # replaced on every change; wakes wait_for()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> "FakeLLM":
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_log", self._log)
        app.router.add_post("/_reset", self._reset)
        # handler_cancellation: kilo aborts streams; stop our handler instead of writing into the void.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0,
                                     access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self._want_port).start()
        self._port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        self._closing.set()  # wakes Hang/Slow handlers so shutdown is quick
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "FakeLLM":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def port(self) -> int:
        assert self._port is not None, "FakeLLM not started"
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def provider_config(self, models=("m1", "m2"), provider_id: str = "fake") -> dict:
        return provider_config_for(self.base_url, models, provider_id)

    # ---- scripting and inspection ----------------------------------------------------------
    def enqueue(self, *responses: Response) -> None:
        """FIFO answers for the next non-title calls; default rules apply when empty."""
        self._queue.extend(responses)

    def reset(self) -> None:
        self.requests.clear()
        self._queue.clear()

    def chat_requests(self) -> list[LLMRequest]:
        return [r for r in self.requests if not r.is_title]

    async def wait_for(self, predicate: Callable[[LLMRequest], bool] = lambda r: True,
                       timeout: float = 30) -> LLMRequest:
        """First record (already seen or future) matching predicate; TimeoutError otherwise."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    found = next((r for r in self.requests if predicate(r)), None)
                    if found is not None:
                        return found
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"no matching LLM request within {timeout}s "
                               f"({len(self.requests)} recorded)") from None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ---- behaviour -------------------------------------------------------------------------
    def _default_response(self, rec: LLMRequest) -> Response:
        text = rec.last_user_text
        if rec.has_tool_result:
            steps, done = parse_steps(text), _calls_since_last_user(rec.messages)
            if done < len(steps):
                step = steps[done]
                return step if len(step) > 1 else step[0]
            last = rec.messages[-1]
            return Reply("TOOL RESULT SEEN: " + _text_of(last.get("content"))[:200])
        for code in (500, 400):
            if f"FAIL{code}" in text:
                return Error(code, f"fake LLM forced error {code}")
        calls = _parse_tool_calls(text)
        if calls:
            return calls if len(calls) > 1 else calls[0]
        m = re.search(r"SLOW(\d+)", text)
        if m:
            return Slow(int(m.group(1)), self.slow_interval)
        return Reply(DEFAULT_PREFIX + text[:200])

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, but return True early if the server is closing."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
            return True
        except asyncio.TimeoutError:
            return False

    # ---- routes ----------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        ids = sorted(self.known_models) if self.known_models is not None else ["m1", "m2"]
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in ids]})

    async def _log(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(r) for r in self.requests])

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            assert isinstance(body, dict)
        except Exception:
            return _error_json(400, "request body is not a JSON object")
        rec = make_record(body, len(self.requests))
        self.requests.append(rec)
        self._notify()
        if self.known_models is not None and rec.model not in self.known_models:
            rec.response = "model_not_found"
            return _error_json(404, f"The model `{rec.model}` does not exist",
                               "model_not_found", "model")
        if rec.is_title:
            resp: Response = Reply(TITLE_TEXT)
        elif self._queue:
            resp = self._queue.pop(0)
        else:
            resp = self._default_response(rec)
        rec.response = "title" if rec.is_title else (
            "tool_calls" if isinstance(resp, (ToolCall, list)) else type(resp).__name__.lower())
        try:
            return await self._answer(request, rec, resp)
        except (asyncio.CancelledError, ConnectionError):
            rec.aborted = True  # kilo aborted the stream: nothing to report
            self._notify()
            raise

    async def _answer(self, request: web.Request, rec: LLMRequest,
                      resp: Response) -> web.StreamResponse:
        if isinstance(resp, Hang):
            await self._closing.wait()
            return _error_json(503, "fake LLM is shutting down")
        if isinstance(resp, Error):
            return _error_json(resp.status, resp.message)
        calls = [resp] if isinstance(resp, ToolCall) else resp if isinstance(resp, list) else []
        tool_calls = [{"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                       "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                      for c in calls]
        if isinstance(resp, Slow):
            words = [f"word{i + 1} " for i in range(resp.words)]
        else:
            text = resp.text if isinstance(resp, Reply) else ""
            words = re.findall(r"\s*\S+\s*", text) or ([text] if text else [])
        finish = "tool_calls" if tool_calls else "stop"
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": max(1, len(words)),
                 "total_tokens": self.prompt_tokens + max(1, len(words))}
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:16]}", int(time.time())

        if not rec.stream:
            if isinstance(resp, Slow) and await self._sleep(resp.interval * resp.words):
                return _error_json(503, "fake LLM is shutting down")
            msg: dict = {"role": "assistant", "content": "".join(words) or None}
            if tool_calls:
                msg["tool_calls"] = tool_calls
            return web.json_response({
                "id": cid, "object": "chat.completion", "created": created, "model": rec.model,
                "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                "usage": usage})

        out = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                          "Cache-Control": "no-cache"})
        out.enable_chunked_encoding()
        await out.prepare(request)

        async def send(choices: list, **extra) -> None:
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created,
                     "model": rec.model, "choices": choices, **extra}
            await out.write(f"data: {json.dumps(chunk)}\n\n".encode())

        def delta(d: dict, finish_reason: str | None = None) -> list:
            return [{"index": 0, "delta": d, "finish_reason": finish_reason}]

        await send(delta({"role": "assistant", "content": ""}))
        for w in words:
            if isinstance(resp, Slow) and await self._sleep(resp.interval):
                return out  # closing: leave the stream truncated
            await send(delta({"content": w}))
        for i, tc in enumerate(tool_calls):
            await send(delta({"tool_calls": [{"index": i, **tc}]}))
        await send(delta({}, finish))
        if (rec.body.get("stream_options") or {}).get("include_usage"):
            await send([], usage=usage)
        await out.write(b"data: [DONE]\n\n")
        await out.write_eof()
        return out


async def _main(host: str, port: int, slow_interval: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with FakeLLM(host, port, slow_interval=slow_interval) as llm:
        print(json.dumps({"fake_llm": llm.base_url}), flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fake OpenAI-compatible LLM for kilo serve")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--slow-interval", type=float, default=1.0)
    a = ap.parse_args(argv)
    asyncio.run(_main(a.host, a.port, a.slow_interval))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
