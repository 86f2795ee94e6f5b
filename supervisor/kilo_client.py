"""Async client for one ``kilo serve`` (basic auth, per-call timeouts) and its ``/event`` SSE stream."""
from __future__ import annotations

import base64
import json
from typing import Any, AsyncIterator

import aiohttp

from gastown.core.jsonlog import get_logger

log = get_logger("supervisor.kilo_client")


class KiloApiError(RuntimeError):
    def __init__(self, message: str, *, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class KiloClient:
    def __init__(self, base_url: str, password: str, *, timeout_s: float = 10.0, directory: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 5.0))
        basic = base64.b64encode(f"kilo:{password}".encode()).decode()
        headers = {"Authorization": f"Basic {basic}"}
        if directory:
            headers["x-kilo-directory"] = directory
        self._session = aiohttp.ClientSession(headers=headers, read_bufsize=1 << 22)

    async def close(self) -> None:
        await self._session.close()

    async def _request(self, method: str, path: str, *, json_body: Any = None, timeout: float | None = None) -> Any:
        to = aiohttp.ClientTimeout(total=timeout) if timeout else self._timeout
        try:
            async with self._session.request(method, self.base_url + path, json=json_body, timeout=to) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    raise KiloApiError(f"{method} {path} -> {resp.status}", status=resp.status, body=text[:2000])
                if resp.status == 204 or not text:
                    return None
                try:
                    return json.loads(text)
                except ValueError:
                    raise KiloApiError(f"{method} {path}: invalid JSON", status=resp.status, body=text[:500]) from None
        except (aiohttp.ClientError, TimeoutError) as e:
            raise KiloApiError(f"{method} {path} failed: {e!r}") from e

    async def health(self, timeout: float = 2.0) -> bool:
        try:
            body = await self._request("GET", "/global/health", timeout=timeout)
        except KiloApiError:
            return False
        return isinstance(body, dict) and bool(body.get("healthy"))

    async def create_session(self, title: str) -> dict[str, Any]:
        body = await self._request("POST", "/session", json_body={"title": title}, timeout=30.0)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not body["id"]:
            raise KiloApiError("session create returned no id", body=str(body)[:500])
        return body

    async def list_sessions(self) -> list[dict[str, Any]]:
        body = await self._request("GET", "/session")
        return body if isinstance(body, list) else []

    async def latest_session(self) -> dict[str, Any] | None:
        sessions = [s for s in await self.list_sessions() if isinstance(s, dict) and s.get("id")]
        if not sessions:
            return None
        return max(sessions, key=lambda s: (s.get("time") or {}).get("updated") or 0)

    async def prompt_async(
        self,
        session_id: str,
        text: str,
        *,
        model: tuple[str, str] | None = None,
        no_reply: bool = False,
        system: str | None = None,
    ) -> None:
        body: dict[str, Any] = {"parts": [{"type": "text", "text": text}]}
        if model:
            body["model"] = {"providerID": model[0], "modelID": model[1]}
        if no_reply:
            body["noReply"] = True
        if system:
            body["system"] = system
        await self._request("POST", f"/session/{session_id}/prompt_async", json_body=body)

    async def abort(self, session_id: str, timeout: float = 3.0) -> bool:
        try:
            return bool(await self._request("POST", f"/session/{session_id}/abort", timeout=timeout))
        except KiloApiError as e:
            log.warning("kilo.abort_failed", session_id=session_id, error=str(e))
            return False

    async def messages(self, session_id: str) -> list[dict[str, Any]]:
        body = await self._request("GET", f"/session/{session_id}/message")
        return body if isinstance(body, list) else []

    async def has_messages(self, session_id: str) -> bool:
        body = await self._request("GET", f"/session/{session_id}/message?limit=1")
        return bool(body)

    async def get_session(self, session_id: str, timeout: float | None = None) -> dict[str, Any]:
        return await self._request("GET", f"/session/{session_id}", timeout=timeout)

    async def providers(self, timeout: float | None = None) -> dict[str, Any]:
        """``GET /provider``: every provider kilo knows, with its models (``{"all": [...]}``)."""
        body = await self._request("GET", "/provider", timeout=timeout)
        return body if isinstance(body, dict) else {}

    async def pty_create(self, *, command: str, args: list[str], cwd: str, title: str, cols: int, rows: int) -> str:
        """``POST /pty``: a pseudo-terminal running ``command`` on this server; its id."""
        body = await self._request("POST", "/pty", json_body={"command": command, "args": args, "cwd": cwd,
                                                             "title": title, "size": {"cols": cols, "rows": rows}},
                                   timeout=30.0)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise KiloApiError("POST /pty: no id in the answer", body=str(body)[:300])
        return str(body["id"])

    async def pty_resize(self, pty_id: str, cols: int, rows: int) -> None:
        await self._request("PUT", f"/pty/{pty_id}", json_body={"size": {"cols": cols, "rows": rows}})

    async def pty_remove(self, pty_id: str) -> None:
        await self._request("DELETE", f"/pty/{pty_id}")

    async def pty_connect(self, pty_id: str) -> aiohttp.ClientWebSocketResponse:
        """The terminal's byte stream (``GET /pty/{id}/connect``, a WebSocket): text frames both ways."""
        try:
            return await self._session.ws_connect(f"{self.base_url}/pty/{pty_id}/connect", heartbeat=30.0,
                                                  timeout=aiohttp.ClientWSTimeout(ws_close=5.0))
        except (aiohttp.ClientError, TimeoutError) as e:
            raise KiloApiError(f"GET /pty/{pty_id}/connect failed: {e!r}") from e

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Yield decoded events of the server-wide ``/event`` stream until it closes.

        No total timeout (the stream is long-lived); the supervisor's health checks catch a wedge.
        """
        timeout = aiohttp.ClientTimeout(total=None, connect=5.0, sock_connect=5.0)
        async with self._session.get(self.base_url + "/event", timeout=timeout) as resp:
            if resp.status != 200:
                raise KiloApiError(f"GET /event -> {resp.status}", status=resp.status)
            buf: list[str] = []
            async for raw in resp.content:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("data:"):
                    buf.append(line[5:].lstrip())
                elif line == "" and buf:
                    data = "\n".join(buf)
                    buf = []
                    try:
                        event = json.loads(data)
                    except ValueError:
                        continue
                    if isinstance(event, dict):
                        yield event
