"""The fake LLM must speak OpenAI streaming exactly as kilo's openai-compatible provider parses it."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from gastown.core.ports import free_port
from gastown.local.scripted_model import Error, FakeLLM, Hang, Reply, Slow, ToolCall

ROOT = Path(__file__).resolve().parents[2]
ENV_PART = {"type": "text", "text": "<environment_details>\nCurrent time: now\nCwd: /x\n</environment_details>"}


def kilo_body(text: str, *, model: str = "m1", stream: bool = True, system: str = "You are Kilo.",
              extra_messages: list | None = None) -> dict:
    """Shaped like kilo 7.7.7's request: system string, user content as text parts + env part."""
    return {
        "model": model, "max_tokens": 8000, "tool_choice": "auto", "stream": stream,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": system},
                     {"role": "user", "content": [{"type": "text", "text": text}, ENV_PART]},
                     *(extra_messages or [])],
        "tools": [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
                  for n in ("bash", "read")],
    }


async def post_sse(session: aiohttp.ClientSession, llm: FakeLLM, body: dict) -> list[dict]:
    """POST and parse the SSE stream incrementally; returns the decoded chunks, checks [DONE]."""
    chunks, done = [], False
    async with session.post(f"{llm.base_url}/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/event-stream")
        buf = b""
        async for data in r.content.iter_any():
            buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                assert event.startswith(b"data: "), event
                payload = event[len(b"data: "):]
                if payload == b"[DONE]":
                    done = True
                else:
                    assert not done, "data after [DONE]"
                    chunks.append(json.loads(payload))
    assert done and buf == b""
    return chunks


def text_of(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


@pytest.fixture
async def llm():
    async with FakeLLM(slow_interval=0.05) as server:
        yield server


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


async def test_stream_shape_and_text(llm, http):
    chunks = await post_sse(http, llm, kilo_body("hi there"))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m1" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert text_of(chunks) == "Hello from the fake LLM. You said: hi there"
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) > 3
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


async def test_non_stream_and_models(llm, http):
    async with http.post(f"{llm.base_url}/chat/completions", json=kilo_body("x", stream=False)) as r:
        data = await r.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["content"] == "Hello from the fake LLM. You said: x"
    assert data["choices"][0]["finish_reason"] == "stop"
    async with http.get(f"{llm.base_url}/models") as r:
        assert [m["id"] for m in (await r.json())["data"]] == ["m1", "m2"]


async def test_tool_call_chunks(llm, http):
    chunks = await post_sse(http, llm, kilo_body(
        'please CALL_TOOL bash {"command": "echo hi", "description": "say hi"} thanks'))
    deltas = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert deltas and deltas[0]["index"] == 0 and deltas[0]["type"] == "function"
    assert deltas[0]["id"].startswith("call_") and deltas[0]["function"]["name"] == "bash"
    args = "".join(d["function"].get("arguments", "") for d in deltas)
    assert json.loads(args) == {"command": "echo hi", "description": "say hi"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert llm.requests[0].response == "tool_calls"


async def test_tool_result_reply_wins_over_call_tool(llm, http):
    extra = [{"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
              "function": {"name": "bash", "arguments": "{}"}}]},
             {"role": "tool", "tool_call_id": "call_1", "content": "Linux\n"}]
    chunks = await post_sse(http, llm, kilo_body("CALL_TOOL bash {}", extra_messages=extra))
    assert text_of(chunks) == "TOOL RESULT SEEN: Linux\n"
    assert llm.requests[0].has_tool_result


async def test_fail_statuses(llm, http):
    for code in (500, 400):
        async with http.post(f"{llm.base_url}/chat/completions", json=kilo_body(f"FAIL{code}")) as r:
            assert r.status == code
            err = (await r.json())["error"]
            assert err["message"] == f"fake LLM forced error {code}" and err["type"]


async def test_slow_streams_over_time(llm, http):
    t0 = time.monotonic()
    chunks = await post_sse(http, llm, kilo_body("SLOW4"))
    assert time.monotonic() - t0 >= 4 * 0.05
    assert text_of(chunks).split() == ["word1", "word2", "word3", "word4"]


async def test_enqueue_fifo_then_default_and_titles_skip_queue(llm, http):
    llm.enqueue(Reply("first"), ToolCall("read", {"filePath": "/a"}), Error(503, "busy"),
                Slow(2, 0.01))
    title = kilo_body("Generate a title for this conversation:", system="You are a title generator.")
    assert text_of(await post_sse(http, llm, title)) == "Fake title"
    assert text_of(await post_sse(http, llm, kilo_body("a"))) == "first"
    chunks = await post_sse(http, llm, kilo_body("b"))
    tc = chunks[1]["choices"][0]["delta"]["tool_calls"][0]
    assert tc["function"]["name"] == "read" and json.loads(tc["function"]["arguments"]) == {"filePath": "/a"}
    async with http.post(f"{llm.base_url}/chat/completions", json=kilo_body("c")) as r:
        assert r.status == 503 and (await r.json())["error"]["message"] == "busy"
    assert text_of(await post_sse(http, llm, kilo_body("d"))).split() == ["word1", "word2"]
    assert text_of(await post_sse(http, llm, kilo_body("e"))).endswith("You said: e")
    assert [r.response for r in llm.requests] == ["title", "reply", "tool_calls", "error", "slow", "reply"]


async def test_parallel_tool_calls_from_text(llm, http):
    chunks = await post_sse(http, llm, kilo_body('CALL_TOOL a_x {"n": 1} and CALL_TOOL b_y {"n": 2}'))
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [(c["index"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
        [(0, "a_x", {"n": 1}), (1, "b_y", {"n": 2})]


async def test_known_models_rejects(http):
    async with FakeLLM(known_models={"m1"}) as llm:
        async with http.post(f"{llm.base_url}/chat/completions", json=kilo_body("x", model="nope")) as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "model_not_found"
        assert text_of(await post_sse(http, llm, kilo_body("x", model="m1"))).endswith("said: x")
        assert [r.model for r in llm.requests] == ["nope", "m1"]


async def test_recording_fields_and_log_and_reset(llm, http):
    await post_sse(http, llm, kilo_body("do the thing"))
    await post_sse(http, llm, kilo_body("Generate a title for this conversation:\n",
                                        system="You are a title generator. You output ONLY a title."))
    first, title = llm.requests
    assert first.last_user_text == "do the thing" and "environment" not in first.last_user_text
    assert first["model"] == "m1" and first.tool_names == ["bash", "read"] and not first.is_title
    assert not first.has_tool_result and first.body["max_tokens"] == 8000
    assert title.is_title and llm.chat_requests() == [first]
    async with http.get(f"http://127.0.0.1:{llm.port}/_log") as r:
        log = await r.json()
    assert [e["last_user_text"] for e in log][0] == "do the thing" and log[1]["is_title"]
    async with http.post(f"http://127.0.0.1:{llm.port}/_reset") as r:
        assert r.status == 200
    assert llm.requests == []


async def test_wait_for_future_and_past(llm, http):
    waiter = asyncio.create_task(llm.wait_for(lambda r: "later" in r.last_user_text, timeout=5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await post_sse(http, llm, kilo_body("not yet"))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await post_sse(http, llm, kilo_body("later please"))
    assert (await waiter).last_user_text == "later please"
    assert (await llm.wait_for(lambda r: r.last_user_text == "not yet", timeout=1)).index == 0
    with pytest.raises(TimeoutError):
        await llm.wait_for(lambda r: r.is_title, timeout=0.1)


async def test_hang_until_client_aborts_then_close_is_quick(http):
    llm = await FakeLLM().start()
    llm.enqueue(Hang(), Hang())
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(post_sse(http, llm, kilo_body("x")), 0.3)
    rec = await llm.wait_for(lambda r: r.aborted, timeout=2)
    assert rec.response == "hang"
    pending = asyncio.create_task(post_sse(http, llm, kilo_body("y")))
    await llm.wait_for(lambda r: r.index == 1, timeout=2)
    t0 = time.monotonic()
    await llm.close()
    assert time.monotonic() - t0 < 2
    with pytest.raises((aiohttp.ClientError, AssertionError)):
        await pending


async def test_standalone_cli_serves_and_exits_on_sigterm(http):
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gastown.local.scripted_model", "--port", str(port), "--host", "127.0.0.1",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert json.loads(line) == {"fake_llm": f"http://127.0.0.1:{port}/v1"}
        async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=kilo_body("cli", stream=False)) as r:
            assert (await r.json())["choices"][0]["message"]["content"].endswith("You said: cli")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
