"""Town containers as Kubernetes Pods, through the official Kubernetes Python client.

One Pod per town (``gastown-town-<town_id>``) from the runtime image, and one Secret beside it that
holds the whole launch environment (tokens, the model providers): the Pod names it with ``envFrom``,
so no secret sits in the Pod spec. The Pod drains on SIGTERM within ``terminationGracePeriodSeconds``
(the runtime's 300 s drain plus a margin), is ready when ``/ready`` answers (boot hydration done),
alive while ``/alive`` does, keeps ``/workspace`` on an ``emptyDir`` (snapshots make it disposable),
runs in a user namespace of its own (``hostUsers: false``) with only the capabilities the runtime
needs to give each agent a uid, and is deleted and created anew at each start.

The client is synchronous (urllib3); each call runs in a thread with a request timeout.
``pod_manifest`` and ``secret_manifest`` are pure, so tests validate them against the Kubernetes schema.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from gastown.core.jsonlog import get_logger
from worker_api.containers.base import CAPABILITIES, DRAIN_S, Launch, ProviderError, container_name

log = get_logger("worker_api.containers.kubernetes")

PORT = 8080
REQUEST_TIMEOUT = (5, 30)  # connect, read (seconds)


@dataclass(frozen=True)
class KubeSettings:
    image: str
    namespace: str = "gastown-towns"
    memory: str = "4Gi"
    cpu: str = "2"
    workspace_size: str = "20Gi"
    drain_s: int = DRAIN_S
    ready_timeout_s: float = 180.0
    service_account: str | None = None


def _names(town_id: str) -> tuple[str, str]:
    return container_name(town_id), f"{container_name(town_id)}-env"


def secret_manifest(s: KubeSettings, launch: Launch) -> dict[str, Any]:
    _, secret = _names(launch.town_id)
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": secret, "namespace": s.namespace, "labels": {"gastown.town": launch.town_id}},
            "stringData": dict(launch.env)}


def pod_manifest(s: KubeSettings, town_id: str) -> dict[str, Any]:
    pod, secret = _names(town_id)
    probe = {"httpGet": {"path": "/ready", "port": PORT}, "periodSeconds": 2, "timeoutSeconds": 2,
             "failureThreshold": 3}
    container = {
        "name": "runtime", "image": s.image, "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "control", "containerPort": PORT}],
        "env": [{"name": "GASTOWN_PORT", "value": str(PORT)}],
        "envFrom": [{"secretRef": {"name": secret}}],
        "readinessProbe": probe,
        "livenessProbe": {"httpGet": {"path": "/alive", "port": PORT}, "periodSeconds": 10, "timeoutSeconds": 5,
                          "failureThreshold": 6},
        "resources": {"requests": {"cpu": s.cpu, "memory": s.memory}, "limits": {"cpu": s.cpu, "memory": s.memory}},
        "securityContext": {"allowPrivilegeEscalation": False, "runAsUser": 0, "runAsNonRoot": False,
                            "capabilities": {"drop": ["ALL"], "add": list(CAPABILITIES)},
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}],
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # a town's container is started again by the worker, fresh
        "hostUsers": False,        # root in the Pod is not root on the node
        "automountServiceAccountToken": False,  # agents must not reach the cluster's API
        "terminationGracePeriodSeconds": s.drain_s + 30,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": [{"name": "workspace", "emptyDir": {"sizeLimit": s.workspace_size}}],
    }
    if s.service_account:
        spec["serviceAccountName"] = s.service_account
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": s.namespace,
                         "labels": {"app.kubernetes.io/name": "gastown-runtime", "gastown.town": town_id}},
            "spec": spec}


def _state(pod: Any) -> str:
    if pod.metadata.deletion_timestamp is not None:
        return "stopping"
    phase = pod.status.phase if pod.status else None
    if phase == "Running":
        ready = any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
        return "healthy" if ready else "running"
    if phase == "Pending":
        return "starting"
    return "stopped" if phase in ("Succeeded", "Failed") else "unknown"


class KubernetesProvider:
    def __init__(self, settings: KubeSettings, api: client.ApiClient) -> None:
        self.settings = settings
        self.api = api
        self.core = client.CoreV1Api(api)

    async def start(self, launch: Launch) -> str:
        try:
            return await asyncio.to_thread(self._start, launch)
        except ApiException as e:
            raise ProviderError(f"kubernetes: {e.status} {e.reason}") from None
        except (OSError, TimeoutError) as e:
            raise ProviderError(f"kubernetes: {type(e).__name__}: {e}"[:300]) from None

    def _start(self, launch: Launch) -> str:
        s, ns = self.settings, self.settings.namespace
        pod_name, secret_name = _names(launch.town_id)
        body = secret_manifest(s, launch)
        try:
            self.core.replace_namespaced_secret(secret_name, ns, body, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status != 404:
                raise
            self.core.create_namespaced_secret(ns, body, _request_timeout=REQUEST_TIMEOUT)
        self._delete_and_wait(pod_name)
        self.core.create_namespaced_pod(ns, pod_manifest(s, launch.town_id), _request_timeout=REQUEST_TIMEOUT)
        ip = self._wait_ready(pod_name)
        log.info("container.started", town=launch.town_id, pod=pod_name, ip=ip)
        return f"http://{ip}:{PORT}"

    def _delete_and_wait(self, pod_name: str) -> None:
        """A previous Pod of the town (stopped or not) goes first: a start is always a fresh one."""
        ns = self.settings.namespace
        try:
            self.core.delete_namespaced_pod(pod_name, ns, grace_period_seconds=self.settings.drain_s + 30,
                                            _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status == 404:
                return
            raise
        deadline = time.monotonic() + self.settings.drain_s + 60
        while time.monotonic() < deadline:
            try:
                self.core.read_namespaced_pod(pod_name, ns, _request_timeout=REQUEST_TIMEOUT)
            except ApiException as e:
                if e.status == 404:
                    return
                raise
            time.sleep(0.5)
        raise TimeoutError(f"pod {pod_name} was not deleted")

    def _wait_ready(self, pod_name: str) -> str:
        """Watch the Pod until it is Ready (its readiness probe is ``/ready``); its IP."""
        ns, deadline = self.settings.namespace, time.monotonic() + self.settings.ready_timeout_s
        while time.monotonic() < deadline:
            w = watch.Watch()
            for event in w.stream(self.core.list_namespaced_pod, ns, field_selector=f"metadata.name={pod_name}",
                                  timeout_seconds=max(1, int(deadline - time.monotonic())),
                                  _request_timeout=(5, self.settings.ready_timeout_s + 5)):
                pod = event["object"]
                state = _state(pod)
                if state == "healthy" and pod.status.pod_ip:
                    w.stop()
                    return str(pod.status.pod_ip)
                if state == "stopped" or event["type"] == "DELETED":
                    w.stop()
                    raise TimeoutError(f"pod {pod_name} ended before it was ready ({pod.status.phase})")
        raise TimeoutError(f"pod {pod_name} not ready within {self.settings.ready_timeout_s:.0f}s")

    async def state(self, town_id: str) -> str:
        pod_name, _ = _names(town_id)
        try:
            pod = await asyncio.to_thread(self.core.read_namespaced_pod, pod_name, self.settings.namespace,
                                          _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            return "stopped" if e.status == 404 else "unknown"
        except (OSError, TimeoutError):
            return "unknown"
        return _state(pod)

    async def stop(self, town_id: str) -> None:
        """Delete the Pod with the drain's grace (SIGTERM, then SIGKILL after it); returns once asked."""
        pod_name, _ = _names(town_id)
        try:
            await asyncio.to_thread(self.core.delete_namespaced_pod, pod_name, self.settings.namespace,
                                    grace_period_seconds=self.settings.drain_s + 30, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status != 404:
                raise ProviderError(f"kubernetes: {e.status} {e.reason}") from None
        except (OSError, TimeoutError) as e:
            raise ProviderError(f"kubernetes: {type(e).__name__}: {e}"[:300]) from None
        log.info("container.stop_requested", town=town_id, pod=pod_name)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.api.close)
