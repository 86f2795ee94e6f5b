"""Operator commands: ``gastown agents``, ``gastown logs AGENT``, ``gastown town status``.

They are thin HTTP clients of the control server (docs/contract.md §4) and the worker API, for a person at a
terminal: every failure (connection, timeout, auth, HTTP error) becomes one line on stderr and exit
status 1, never a traceback. Tokens come from flags or the environment and are never printed.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any, Callable

import aiohttp
from yarl import URL

from gastown.cli.localtown import TownState, state_dir
from gastown.cli.term import printable
from gastown.contract.agents import STOPPED_STATES
from gastown.contract.wire import epoch_s

DEFAULT_CONTROL_URL = "http://127.0.0.1:8080"
DEFAULT_WORKER_URL = "http://127.0.0.1:8787"
STOPPED = {s.value for s in STOPPED_STATES}
EVENTS_PAGE = 500  # the control server returns at most this many events per call


class OperatorError(Exception):
    """A failure to report to the operator as one line (no traceback)."""


class Api:
    """One base URL + bearer token; maps every failure to an :class:`OperatorError`."""

    def __init__(self, base_url: str, token: str | None, timeout: float, token_hint: str) -> None:
        url = URL(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise OperatorError(f"invalid URL {base_url!r}: expected http://HOST:PORT")
        self.base = url
        self.token = token
        self.token_hint = token_hint
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "Api":
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._session is not None:
            await self._session.close()

    async def get(self, path: str, **params: Any) -> Any:
        assert self._session is not None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        url = self.base.with_path(self.base.path.rstrip("/") + path)
        if params:
            url = url.with_query({k: str(v) for k, v in params.items()})
        try:
            async with self._session.get(url, headers=headers) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
        except asyncio.TimeoutError:
            raise OperatorError(f"no answer from {self.base} within {self.timeout:g}s") from None
        except aiohttp.ClientConnectorError as e:
            errno = getattr(e.os_error, "errno", None)  # strerror of a refused connect is a repr
            reason = os.strerror(errno) if errno and errno > 0 else (e.os_error.strerror or str(e.os_error))
            raise OperatorError(f"cannot connect to {self.base}: {reason}") from None
        except aiohttp.ClientError as e:
            raise OperatorError(f"request to {self.base} failed: {type(e).__name__}: {e}") from None
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = None
        if status >= 400:
            raise OperatorError(self._http_error(path, status, body, text))
        if body is None:
            raise OperatorError(f"GET {path}: {self.base} answered {status} with a non-JSON body")
        return body

    def _http_error(self, path: str, status: int, body: Any, text: str) -> str:
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            detail = f"{err.get('code', 'ERROR')}: {err.get('message', '')}".rstrip(": ")
        else:
            detail = " ".join(text.split())[:200] or "no body"
        if status == 401:
            how = "the given token" if self.token else "no token"
            return f"{self.base} refused {how} (401 {detail}); pass --token or set {self.token_hint}"
        return f"GET {path} -> {status} {detail}"


# --- formatting helpers -------------------------------------------------------------------------

def fmt_duration(seconds: float | None) -> str:
    """Compact, coarse durations for a table column: ``42s``, ``3m05s``, ``2h07m``, ``3d04h``."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _signal_name(num: Any) -> str:
    import signal

    try:
        return signal.Signals(int(num)).name
    except (ValueError, TypeError):
        return str(num)


def fmt_exit(last_exit: dict[str, Any] | None, now: float) -> str:
    if not last_exit:
        return "-"
    if last_exit.get("signal") is not None:
        what = _signal_name(last_exit["signal"])
    else:
        what = f"code {last_exit.get('code')}"
    if last_exit.get("oom_suspected"):
        what += " OOM?"
    at = last_exit.get("at")
    return f"{what} ({fmt_duration(now - epoch_s(at))} ago)" if isinstance(at, (int, float)) else what


def table(headers: list[str], rows: list[list[str]]) -> str:
    rows = [[printable(c) for c in row] for row in rows]  # agents' names, exits and stderr are theirs to choose
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [headers, *rows]]
    return "\n".join(lines)


def agent_rows(agents: list[dict[str, Any]], now: float) -> list[list[str]]:
    rows = []
    for a in agents:
        state = str(a.get("status"))
        started = epoch_s(a.get("started_at"))
        uptime = fmt_duration(now - started) if a.get("status") not in STOPPED and started else "-"
        rss = a.get("rss_bytes") or 0
        last_at, last_type = epoch_s(a.get("last_event_at")), a.get("last_event_type")
        last_event = f"{last_type} ({fmt_duration(now - last_at)} ago)" if last_type and last_at else "-"
        rows.append([str(a.get("agent_id")), str(a.get("role")), state, uptime,
                     f"{rss / 1048576:.1f}" if rss else "-", str(a.get("message_count", 0)),
                     last_event, fmt_exit(a.get("last_exit"), now)])
    return rows


def _clip(text: str, n: int = 100) -> str:
    text = printable(" ".join(str(text).split()))
    return text if len(text) <= n else text[: n - 1] + "…"


def summarize_event(etype: str, data: Any) -> str:
    """One short human summary of a kilo event's ``properties`` (see docs/kilo-serve.md §7)."""
    d = data if isinstance(data, dict) else {}
    if etype == "message.part.delta":
        return _clip(json.dumps(d.get("delta", ""), ensure_ascii=False))
    if etype == "message.part.updated":
        part = d.get("part") or {}
        ptype = part.get("type")
        if ptype == "tool":
            state = part.get("state") or {}
            title = state.get("title") or ""
            return _clip(f"tool {part.get('tool')} {state.get('status', '?')}" + (f": {title}" if title else ""))
        if ptype in ("text", "reasoning"):
            return _clip(f"{ptype} " + json.dumps(part.get("text", ""), ensure_ascii=False))
        if ptype == "step-finish":
            tokens = part.get("tokens") or {}
            return f"step-finish tokens in={tokens.get('input', '?')} out={tokens.get('output', '?')}"
        return str(ptype)
    if etype == "message.updated":
        info = d.get("info") or {}
        bits = [str(info.get("role", "?"))]
        if info.get("finish"):
            bits.append(f"finish={info['finish']}")
        if info.get("error"):
            bits.append(f"error={(info['error'] or {}).get('name')}")
        return " ".join(bits)
    if etype == "session.status":
        st = d.get("status") or {}
        extra = f" attempt {st.get('attempt')}: {st.get('message', '')}" if st.get("type") == "retry" else ""
        return _clip(f"{st.get('type', '?')}{extra}")
    if etype == "session.error":
        err = d.get("error") or {}
        return _clip(f"{err.get('name', 'error')}: {(err.get('data') or {}).get('message', '')}")
    if etype == "session.turn.close":
        return str(d.get("reason", ""))
    if etype == "permission.asked":
        return _clip(f"{d.get('permission')} {' '.join(map(str, d.get('patterns') or []))}")
    if etype in ("session.idle", "session.turn.open", "session.updated", "session.created"):
        return ""
    return _clip(json.dumps(d, ensure_ascii=False, separators=(",", ":")))


def fmt_event(ev: dict[str, Any]) -> str:
    ts = ev.get("ts")  # epoch ms
    when = "--:--:--.---"
    if isinstance(ts, (int, float)):
        when = time.strftime("%H:%M:%S", time.localtime(ts / 1000)) + f".{int(ts) % 1000:03d}"
    summary = summarize_event(str(ev.get("type")), ev.get("data"))
    return f"{when}  #{printable(ev.get('id'))}  {printable(ev.get('type'))}" + (f"  {summary}" if summary else "")


# --- commands -----------------------------------------------------------------------------------

def _local_town(args: Any, url: str | None, token: str | None) -> TownState | None:
    """The state ``gastown up`` left, used only when neither a URL nor a token was given (flag or
    env): a token from the file must never be sent to a URL from elsewhere."""
    if url or token:
        return None
    return TownState.load(state_dir(getattr(args, "dir", None)))


def _control_api(args: Any) -> Api:
    token = args.token or os.environ.get("GASTOWN_CONTROL_TOKEN") or None
    url = args.url or os.environ.get("GASTOWN_CONTROL_URL") or None
    local = _local_town(args, url, token)
    if local is not None:
        url, token = local.container_url, local.control_token
    return Api(url or DEFAULT_CONTROL_URL, token, args.timeout, "$GASTOWN_CONTROL_TOKEN")


async def cmd_agents(args: Any) -> int:
    async with _control_api(args) as api:
        body = await api.get("/agents")
    agents = body.get("agents") if isinstance(body, dict) else None
    if not isinstance(agents, list):
        raise OperatorError("GET /agents: unexpected answer (no 'agents' list)")
    if args.json:
        print(json.dumps(body, indent=2))
    elif not agents:
        print("no agents")
    else:
        headers = ["AGENT", "ROLE", "STATE", "UPTIME", "RSS_MB", "MSGS", "LAST EVENT", "LAST EXIT"]
        print(table(headers, agent_rows(sorted(agents, key=lambda a: str(a.get("agent_id"))), time.time())))
    return 0


async def cmd_logs(args: Any) -> int:
    from gastown.core.ids import is_valid_id

    if not is_valid_id(args.agent):
        raise OperatorError(f"invalid agent id {args.agent!r}")
    after = args.after
    stop = asyncio.Event()
    if args.follow:
        # Ctrl-C (or SIGTERM) ends the follow between two polls. Our own handler, not asyncio.run's: that
        # one is installed only when SIGINT has its default handler, and a process started with SIGINT
        # ignored (a background job of a script, some test runners) then never stopped.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    async with _control_api(args) as api:
        while not stop.is_set():
            body = await api.get(f"/agents/{args.agent}/events", after=after)
            events = body.get("events") if isinstance(body, dict) else None
            if not isinstance(events, list):
                raise OperatorError("unexpected answer from the events route (no 'events' list)")
            for ev in events:
                print(fmt_event(ev))
                after = max(after, int(ev.get("id") or 0))
            sys.stdout.flush()
            if len(events) >= EVENTS_PAGE:
                continue  # more are buffered: fetch them at once
            if not args.follow:
                return 0
            try:
                await asyncio.wait_for(stop.wait(), args.interval)
            except asyncio.TimeoutError:
                pass
    return 0


def _counts(groups: dict[str, int] | None) -> str:
    groups = groups or {}
    return ", ".join(f"{k} {v}" for k, v in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


async def cmd_town_status(args: Any) -> int:
    town_id = args.town or os.environ.get("GASTOWN_TOWN_ID")
    token = args.token or os.environ.get("GASTOWN_ADMIN_TOKEN") or os.environ.get("GASTOWN_CONTAINER_TOKEN") or None
    url = args.url or os.environ.get("GASTOWN_API_URL") or None
    local = _local_town(args, url, token)
    if local is not None:
        url, token, town_id = local.worker_url, local.admin_token, town_id or local.town_id
    if not town_id:
        raise OperatorError("no town given: pass --town TOWN_ID, set $GASTOWN_TOWN_ID or run gastown up first")
    async with Api(url or DEFAULT_WORKER_URL, token, args.timeout, "$GASTOWN_ADMIN_TOKEN") as api:
        base = f"/api/towns/{town_id}"
        town, status, agents, convoys = await asyncio.gather(
            api.get(base), api.get(f"{base}/status"), api.get(f"{base}/agents"), api.get(f"{base}/convoys"))
    agents = agents.get("agents", []) if isinstance(agents, dict) else []
    convoys = convoys.get("convoys", []) if isinstance(convoys, dict) else []
    if args.json:
        print(json.dumps({"town": town, "status": status, "agents": agents, "convoys": convoys}, indent=2))
        return 0
    print(render_town(town, status, agents, convoys, time.time()))
    return 0


def render_town(town: dict, status: dict, agents: list[dict], convoys: list[dict], now: float) -> str:
    beads, ags = status.get("beads") or {}, status.get("agents") or {}
    n_beads = sum((beads.get("by_status") or {}).values())
    rec = status.get("reconciler") or {}
    head = f"town {town.get('town_id')} \"{printable(town.get('name', ''))}\"" + ("  DRAINING" if status.get("draining") else "")
    lines = [
        head,
        f"beads    {n_beads}: {_counts(beads.get('by_status'))}  (types: {_counts(beads.get('by_type'))})",
        f"agents   {len(agents)}: {_counts(ags.get('by_status'))}  (roles: {_counts(ags.get('by_role'))})",
        f"convoys  {len(convoys)}: {_counts((status.get('convoys') or {}).get('by_status'))}",
        f"events   {status.get('pending_events', 0)} pending; reconciler "
        + (f"running ({rec.get('ticks', 0)} ticks)" if rec.get("running") else "not running"),
    ]
    if agents:
        rows = []
        for a in agents:
            hb = a.get("last_heartbeat_at")
            rows.append([str(a.get("agent_id")), str(a.get("role")), str(a.get("name")), str(a.get("status")),
                         str(a.get("container_status") or "-"),
                         f"{fmt_duration(now - hb / 1000)} ago" if isinstance(hb, (int, float)) else "-"])
        lines += ["", table(["AGENT", "ROLE", "NAME", "STATUS", "CONTAINER", "HEARTBEAT"], rows)]
    if convoys:
        rows = []
        for c in convoys:
            p = c.get("progress") or {}
            progress = f"{p.get('closed', 0)}/{p.get('total', 0)} closed"
            if p.get("failed"):
                progress += f", {p['failed']} failed"
            rows.append([str(c.get("bead_id")), _clip(str(c.get("title", "")), 40), str(c.get("status")), progress])
        lines += ["", table(["CONVOY", "TITLE", "STATUS", "PROGRESS"], rows)]
    return "\n".join(lines)


COMMANDS: dict[str, Callable[[Any], Any]] = {"agents": cmd_agents, "logs": cmd_logs, "town status": cmd_town_status}


def run_operator(name: str, args: Any) -> int:
    """Run one operator command; map every failure to one stderr line and a non-zero exit."""
    prog = f"gastown {name}"
    try:
        return asyncio.run(COMMANDS[name](args))
    except KeyboardInterrupt:
        return 0  # Ctrl-C ends `logs --follow`: the normal way out
    except OperatorError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # e.g. `| head`: quiet exit
        return 0
    except Exception as e:  # never a traceback for an operator
        print(f"{prog}: unexpected error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
