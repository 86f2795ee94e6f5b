"""A local stand-in for the Kubernetes API server: the REST shapes of the calls the worker's
Kubernetes provider makes (Secrets: create, replace; Pods: create, read, delete, list with
``watch=true``), no cluster behind it. A created Pod goes Pending → Running → Ready on its own after
``schedule_s``; a deleted one gets its ``deletionTimestamp`` and is gone after ``schedule_s``.
Every request is recorded (method, path, query, body) for the tests to read."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

API = "/api/v1/namespaces/{ns}"


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": message, "reason": reason, "code": code}, status=code)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class FakeKube:
    pod_ip: str = "10.244.0.7"    # never dialled: the provider only reports it
    schedule_s: float = 0.2
    never_ready: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    secrets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _watchers: list[tuple[str, str, asyncio.Queue]] = field(default_factory=list)
    _tasks: set[asyncio.Task] = field(default_factory=set)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        r = app.router
        r.add_post(API + "/secrets", self.create_secret)
        r.add_put(API + "/secrets/{name}", self.replace_secret)
        r.add_post(API + "/pods", self.create_pod)
        r.add_get(API + "/pods", self.list_pods)
        r.add_get(API + "/pods/{name}", self.read_pod)
        r.add_delete(API + "/pods/{name}", self.delete_pod)
        app.on_cleanup.append(self._cleanup)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append({"method": request.method, "path": request.path, "query": dict(request.query),
                              "body": body, "auth": request.headers.get("Authorization")})
        return await handler(request)

    async def _cleanup(self, _: web.Application) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _later(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _notify(self, kind: str, pod: dict[str, Any]) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        for wns, wname, queue in self._watchers:
            if wns == ns and wname in ("", name):
                queue.put_nowait({"type": kind, "object": pod})

    # --- secrets ---
    async def create_secret(self, request: web.Request) -> web.Response:
        ns, body = request.match_info["ns"], await request.json()
        key = (ns, body["metadata"]["name"])
        if key in self.secrets:
            return _status(409, "AlreadyExists", f"secrets {key[1]} already exists")
        self.secrets[key] = {**body, "metadata": {**body["metadata"], "namespace": ns, "uid": f"s-{len(self.secrets)}"}}
        return web.json_response(self.secrets[key], status=201)

    async def replace_secret(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.secrets:
            return _status(404, "NotFound", f'secrets "{key[1]}" not found')
        self.secrets[key] = await request.json()
        return web.json_response(self.secrets[key])

    # --- pods ---
    async def create_pod(self, request: web.Request) -> web.Response:
        ns, body = request.match_info["ns"], await request.json()
        key = (ns, body["metadata"]["name"])
        if key in self.pods:
            return _status(409, "AlreadyExists", f'pods "{key[1]}" already exists')
        pod = {**body, "metadata": {**body["metadata"], "namespace": ns, "uid": f"p-{time.monotonic_ns()}",
                                    "creationTimestamp": _now()},
               "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}}
        self.pods[key] = pod
        self._notify("ADDED", pod)
        self._later(self._run(key, pod["metadata"]["uid"]))
        return web.json_response(pod, status=201)

    async def _run(self, key: tuple[str, str], uid: str) -> None:
        await asyncio.sleep(self.schedule_s)
        pod = self.pods.get(key)
        if pod is None or pod["metadata"]["uid"] != uid or pod["metadata"].get("deletionTimestamp"):
            return
        pod["status"] = {"phase": "Running", "podIP": self.pod_ip, "startTime": _now(),
                         "conditions": [{"type": "Ready", "status": "False" if self.never_ready else "True"}]}
        self._notify("MODIFIED", pod)

    async def read_pod(self, request: web.Request) -> web.Response:
        pod = self.pods.get((request.match_info["ns"], request.match_info["name"]))
        if pod is None:
            return _status(404, "NotFound", f'pods "{request.match_info["name"]}" not found')
        return web.json_response(pod)

    async def delete_pod(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        pod = self.pods.get(key)
        if pod is None:
            return _status(404, "NotFound", f'pods "{key[1]}" not found')
        grace = request.query.get("gracePeriodSeconds")
        pod["metadata"]["deletionTimestamp"] = _now()
        pod["metadata"]["deletionGracePeriodSeconds"] = int(grace) if grace else 30
        self._notify("MODIFIED", pod)
        self._later(self._remove(key, pod["metadata"]["uid"]))
        return web.json_response(pod)

    async def _remove(self, key: tuple[str, str], uid: str) -> None:
        await asyncio.sleep(self.schedule_s)
        pod = self.pods.get(key)
        if pod is not None and pod["metadata"]["uid"] == uid:
            del self.pods[key]
            self._notify("DELETED", pod)

    async def list_pods(self, request: web.Request) -> web.StreamResponse:
        ns = request.match_info["ns"]
        selector = request.query.get("fieldSelector", "")
        name = selector.removeprefix("metadata.name=") if selector.startswith("metadata.name=") else ""
        pods = [p for (pns, pname), p in self.pods.items() if pns == ns and name in ("", pname)]
        if request.query.get("watch") not in ("true", "True", "1"):
            return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods})
        queue: asyncio.Queue = asyncio.Queue()
        entry = (ns, name, queue)
        self._watchers.append(entry)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        deadline = time.monotonic() + float(request.query.get("timeoutSeconds", "30"))
        try:
            for pod in pods:
                await resp.write((json.dumps({"type": "ADDED", "object": pod}) + "\n").encode())
            while (left := deadline - time.monotonic()) > 0:
                try:
                    event = await asyncio.wait_for(queue.get(), left)
                except asyncio.TimeoutError:
                    break
                await resp.write((json.dumps(event) + "\n").encode())
        finally:
            self._watchers.remove(entry)
        await resp.write_eof()
        return resp
