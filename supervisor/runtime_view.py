"""What the runtime's policies (drain, health, metrics) may see of the runtime that composes them.

A port, not the class: ``runtime.py`` builds these policies, so they must not import it back.
``ContainerRuntime`` satisfies this protocol structurally.
"""
from __future__ import annotations

from typing import Protocol

from supervisor.idle import IdleManager
from supervisor.persistence import Persistence
from supervisor.supervisor import Supervisor
from supervisor.tasks import TaskOwner
from supervisor.worker_client import WorkerClient


class RuntimeView(Protocol):
    supervisor: Supervisor
    worker: WorkerClient
    persistence: Persistence | None
    idle: IdleManager
    tasks: TaskOwner
    draining: bool
