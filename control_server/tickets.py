"""Stream tickets: a browser cannot put a bearer token on an ``EventSource`` or a WebSocket, so the
holder of the control token (the worker) asks for a ticket and hands the browser a URL with it.

A ticket names one agent and lives 60 s; it opens that agent's stream (reconnects included) or one
terminal, and nothing else (``?ticket=`` is honoured only on those routes, see ``auth``). Tickets live in memory: a restarted
container forgets them, and its clients ask for new ones, as they would after 60 s anyway.
"""
from __future__ import annotations

import secrets
import time
from typing import Callable

TICKET_TTL_S = 60.0
MAX_TICKETS = 10_000


class TicketBook:
    def __init__(self, clock: Callable[[], float] = time.time, ttl_s: float = TICKET_TTL_S) -> None:
        self.clock = clock
        self.ttl_s = ttl_s
        self._tickets: dict[str, tuple[str, float]] = {}

    def issue(self, agent_id: str) -> tuple[str, float]:
        """A new ticket for ``agent_id`` and when it expires (epoch seconds)."""
        now = self.clock()
        self._prune(now)
        ticket = "gtt_" + secrets.token_urlsafe(32)
        expires = now + self.ttl_s
        self._tickets[ticket] = (agent_id, expires)
        return ticket, expires

    def valid(self, ticket: str, agent_id: str, *, consume: bool = False) -> bool:
        """A live ticket of ``agent_id``; ``consume`` spends it (a terminal opens once per ticket,
        a stream may reconnect with its ticket while it lives)."""
        entry = self._tickets.get(ticket)
        ok = entry is not None and entry[0] == agent_id and self.clock() < entry[1]
        if ok and consume:
            del self._tickets[ticket]
        return ok

    def _prune(self, now: float) -> None:
        if len(self._tickets) >= MAX_TICKETS // 2:
            self._tickets = {t: e for t, e in self._tickets.items() if e[1] > now}
        while len(self._tickets) >= MAX_TICKETS:  # still full of live tickets: the oldest go first
            self._tickets.pop(next(iter(self._tickets)))
