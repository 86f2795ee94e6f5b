"""``gastown chat``'s reading of the mayor's event stream: what is printed for a turn, and when a
turn is over (the end-to-end run beside ``gastown up`` is in tests/e2e/test_up.py)."""
from __future__ import annotations

import asyncio
import io
from typing import Any

from gastown.cli.chat import Chat


def msg(mid: str, role: str) -> dict[str, Any]:
    return {"type": "message.updated", "data": {"info": {"id": mid, "role": role}}}


def part(mid: str, pid: str, text: str) -> dict[str, Any]:
    return {"type": "message.part.updated", "data": {"part": {"id": pid, "messageID": mid, "type": "text", "text": text}}}


def delta(mid: str, pid: str, text: str) -> dict[str, Any]:
    return {"type": "message.part.delta", "data": {"messageID": mid, "partID": pid, "field": "text", "delta": text}}


IDLE = {"type": "session.idle", "data": {}}


async def turn(events: list[dict[str, Any]], sent: str) -> str:
    out = io.StringIO()
    chat = Chat("http://w", "t", "town-1", out=out)
    for e in events:
        chat.events.put_nowait(e)
    reader = asyncio.create_task(asyncio.sleep(60))
    try:
        await asyncio.wait_for(chat._turn(sent, reader), 5)
    finally:
        reader.cancel()
    return out.getvalue()


async def test_the_reply_streams_and_the_turn_ends_at_idle_after_the_message() -> None:
    events = [IDLE,  # an earlier turn's end: not ours
              msg("u1", "user"), part("u1", "p0", "hi there"),
              msg("a1", "assistant"), part("a1", "p1", ""), delta("a1", "p1", "Hel"), delta("a1", "p1", "lo"),
              part("a1", "p1", "Hello"), IDLE]
    assert await turn(events, "hi there") == "mayor> Hello\n"


async def test_a_notice_delivered_first_is_shown_with_its_own_answer() -> None:
    events = [msg("u0", "user"), part("u0", "q0", "Convoy landed: x"), msg("a0", "assistant"), part("a0", "r0", ""),
              delta("a0", "r0", "Noted."), IDLE,
              msg("u1", "user"), part("u1", "q1", "status?"), msg("a1", "assistant"), part("a1", "r1", ""),
              delta("a1", "r1", "All green."), IDLE]
    assert await turn(events, "status?") == "town> Convoy landed: x\nmayor> Noted.\nmayor> All green.\n"
