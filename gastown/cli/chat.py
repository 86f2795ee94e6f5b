"""``gastown chat --town T``: talk to a town's mayor from a terminal, through the worker only.

One line of input is one message (``POST …/mayor/messages``); the reply streams in as the mayor
writes it, from the town's event stream (``GET …/events/stream?agent_id=…``, SSE) opened once, after
the mayor's newest archived event. A turn ends at the mayor's ``session.idle`` after the message
was seen; notices the town sends the mayor meanwhile are shown as ``town>`` lines with their answers.
Ctrl-D (end of input) leaves after the current reply; Ctrl-C leaves at once.
"""
from __future__ import annotations

import asyncio
import json
import sys
import threading
from typing import Any, AsyncIterator, TextIO

import aiohttp

from gastown.cli.term import printable

STREAM_READ_S = 60.0  # the worker pings every 15 s: silence this long means the stream is gone
TURN_WAIT_S = 900.0   # a reply not finished by then is left to the conversation view


class ChatError(RuntimeError):
    pass


async def _sse(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
    async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_read=STREAM_READ_S)) as r:
        if r.status != 200:
            raise ChatError(f"event stream: HTTP {r.status}: {(await r.text())[:200]}")
        data: list[str] = []
        async for raw in r.content:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[5:].lstrip())
            elif not line and data:
                yield json.loads("\n".join(data))
                data = []


class Chat:
    def __init__(self, url: str, token: str, town_id: str, out: TextIO = sys.stdout) -> None:
        self.base = f"{url.rstrip('/')}/api/towns/{town_id}"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.out = out
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.text_parts: set[str] = set()
        self.assistant: set[str] = set()
        self.user_ids: set[str] = set()
        self.shown_users: set[str] = set()   # user messages already seen (ours, or shown as notices)

    def say(self, text: str, end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    async def _call(self, http: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with http.request(method, self.base + path, json=body, headers=self.headers,
                                timeout=aiohttp.ClientTimeout(total=30)) as r:
            return r.status, await r.json(content_type=None)

    async def run(self, lines: AsyncIterator[str]) -> int:
        async with aiohttp.ClientSession() as http:
            status, mayor = await self._call(http, "GET", "/mayor")
            if status in (401, 403):
                raise ChatError(f"not allowed to talk to this town's mayor ({status}): check --token")
            agent_id = mayor.get("agent_id", "mayor") if status == 200 else "mayor"
            after = mayor.get("last_event_id", 0) if status == 200 else 0
            reader = asyncio.create_task(self._read(http, f"{self.base}/events/stream?agent_id={agent_id}&after={after}"))
            try:
                self.say("talking to the mayor — one line per message, Ctrl-D to leave")
                async for line in lines:
                    text = line.strip()
                    if not text:
                        continue
                    status, body = await self._call(http, "POST", "/mayor/messages", {"text": text})
                    if status != 202:
                        raise ChatError(f"message refused ({status}): {body}")
                    await self._turn(text, reader)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        return 0

    async def _read(self, http: aiohttp.ClientSession, url: str) -> None:
        async for event in _sse(http, url, self.headers):
            await self.events.put(event)

    async def _turn(self, sent: str, reader: asyncio.Task[None]) -> None:
        """Print what the mayor writes until it is idle after having been given ``sent`` (or, after
        ``TURN_WAIT_S``, say the answer will be in the conversation and take the next line)."""
        seen_mine = wrote = False
        deadline = asyncio.get_running_loop().time() + TURN_WAIT_S
        while True:
            get = asyncio.ensure_future(self.events.get())
            left = deadline - asyncio.get_running_loop().time()
            done, _ = await asyncio.wait({get, reader}, timeout=max(left, 0), return_when=asyncio.FIRST_COMPLETED)
            if not done:
                get.cancel()
                self.say("\n(no answer yet: it will be in the conversation, GET …/mayor/messages)")
                return
            if get not in done:
                get.cancel()
                reader.result()  # the stream failed: its error explains why
                raise ChatError("the event stream ended")
            event = get.result()
            kind, data = event.get("type"), event.get("data") or {}
            if kind == "message.updated":
                info = data.get("info") or {}
                (self.assistant if info.get("role") == "assistant" else self.user_ids).add(str(info.get("id")))
            elif kind == "message.part.updated":
                part = data.get("part") or {}
                if part.get("type") == "text" and not part.get("synthetic"):
                    self.text_parts.add(str(part.get("id")))
                    mid = str(part.get("messageID"))
                    if mid in self.user_ids and part.get("text") and mid not in self.shown_users:
                        self.shown_users.add(mid)
                        if part["text"].strip() == sent and not seen_mine:
                            seen_mine = True
                        else:
                            self.say(("\n" if wrote else "") + f"town> {printable(part['text'].strip(), lines=True)}")
                            wrote = False  # what follows answers the notice: a new "mayor>" line
            elif kind == "message.part.delta" and data.get("field") == "text" \
                    and str(data.get("partID")) in self.text_parts and str(data.get("messageID")) in self.assistant:
                if not wrote:
                    self.say("mayor> ", end="")
                    wrote = True
                self.say(printable(data.get("delta") or "", lines=True), end="")
            elif kind == "session.idle" and seen_mine:
                self.say("" if wrote else "mayor> (no text)")
                return
            elif kind == "session.idle" and wrote:  # the end of a notice's answer
                self.say("")
                wrote = False


async def _stdin_lines() -> AsyncIterator[str]:
    """Lines typed, read by a daemon thread: a thread of the loop's executor blocked in readline
    would hold Ctrl-C's exit until Enter."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()
    wanted = threading.Event()

    def read() -> None:
        while True:
            wanted.wait()
            wanted.clear()
            line = sys.stdin.readline()
            try:
                loop.call_soon_threadsafe(lines.put_nowait, line)
            except RuntimeError:
                return  # the chat has ended meanwhile
            if not line:
                return

    threading.Thread(target=read, name="chat-stdin", daemon=True).start()
    while True:
        if sys.stdin.isatty():
            sys.stdout.write("you> ")
            sys.stdout.flush()
        wanted.set()
        line = await lines.get()
        if not line:
            return
        yield line


def run_chat(url: str, token: str, town_id: str) -> int:
    try:
        return asyncio.run(Chat(url, token, town_id).run(_stdin_lines()))
    except KeyboardInterrupt:
        return 130
    except (ChatError, aiohttp.ClientError, OSError) as e:
        print(f"gastown chat: {e}", file=sys.stderr)
        return 1
