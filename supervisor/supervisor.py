"""The agent supervisor: one real ``kilo serve`` per agent, started, watched and stopped here.

Every start/stop of one agent runs under that agent's lock, so concurrent duplicates serialise and
the second sees the first's result (a same-millisecond double start once left two sessions). There is
no global spawn lock: each child gets its own env and cwd, so different agents start in parallel.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import time
from typing import Any, Awaitable, Callable

import psutil

from gastown.contract.agents import Role
from gastown.core.jsonlog import get_logger, register_secret, set_town_id
from gastown.core.secrets import is_secret_key
from supervisor.agent import AgentRecord
from supervisor.bringup import BringUp, Server, Session
from supervisor.config import RuntimeConfig
from supervisor.errors import (
    AgentNotFound,
    AgentNotRunning,
    AgentUnreachable,
    InsufficientMemory,
    StartFailed,
    TownMismatch,
)
from supervisor.kilo_client import KiloApiError, KiloClient
from supervisor.kilo_env import (
    AgentPaths,
    build_child_env,
    build_kilo_config,
    config_content,
    git_access_env,
    git_identity,
    split_model,
)
from supervisor.kilo_process import KiloProcess, KiloStartError, allocate_port
from supervisor.models import StartAgentRequest, public_request
from supervisor.prewarm import PrewarmPool
from supervisor.states import AgentState, Change, Transition
from supervisor.tasks import TaskOwner
from supervisor.worker_client import WorkerClient
from supervisor.isolation import AgentUsers, mirror_git_env
from supervisor.workspace import prepare_workspace

log = get_logger("supervisor")

SPAWN_ATTEMPTS = 2
MAX_EXITED_RECORDS = 100  # records of agents no longer running kept for /agents and their last exit

ChangeHook = Callable[[AgentRecord, Change], Awaitable[None] | None]
EventHook = Callable[[AgentRecord, dict[str, Any]], Awaitable[None] | None]
TransitionHook = Callable[[AgentRecord, Transition], None]


def log_transition(rec: AgentRecord, t: Transition) -> None:
    log.info("agent.state_changed", agent_id=t.agent_id, run_id=t.run_id, role=t.role, old=t.old.value,
             new=t.new.value, reason=t.reason)


class Supervisor:
    def __init__(self, cfg: RuntimeConfig, worker: WorkerClient) -> None:
        self.cfg = cfg
        self.worker = worker
        self.agents: dict[str, AgentRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.mayor_ready_at: float | None = None
        self.change_hooks: list[ChangeHook] = []
        self.transition_hooks: list[TransitionHook] = [log_transition]
        self.event_hooks: list[EventHook] = []
        # Told each buffered event (with its id and ts) of every agent, synchronously: the archive forwarder.
        self.event_sink: Callable[[str, dict[str, Any]], None] | None = None
        # Awaited before every kilo spawn (snapshot restore, admission; tests inject faults here).
        self.spawn_hooks: list[Callable[[AgentRecord], Awaitable[None]]] = []
        self.background = TaskOwner("supervisor")
        self.prewarm_pool = PrewarmPool(self)
        # Awaited when kilo refuses a restored DB (older CLI schema): persistence discards it.
        self.stale_db_hooks: list[Callable[[AgentRecord], Awaitable[None]]] = []
        # Awaited before the workspace is set up (the agent's own token is written here).
        self.prepare_hooks: list[Callable[[AgentRecord], Awaitable[None]]] = []
        self.users = AgentUsers.create(cfg.agent_uids, cfg.agent_uid_base, cfg.town_id,
                                       (cfg.kilo_bin, cfg.plugin_command[0], cfg.credential_helper[0]))
        self.users.lock_up_old_trees(cfg.data_dir)

    # -- plumbing -------------------------------------------------------------------------------
    def lock(self, agent_id: str) -> asyncio.Lock:
        return self._locks.setdefault(agent_id, asyncio.Lock())

    def new_record(self, req: StartAgentRequest) -> AgentRecord:
        """A record for one life of ``req``'s agent, its transitions told to the transition hooks."""
        rec = AgentRecord(request=req, paths=AgentPaths.for_agent(self.cfg.data_dir, req.agent_id))
        rec.on_transition = lambda t: self._transitioned(rec, t)
        if self.event_sink is not None:
            sink = self.event_sink
            rec.events.listener = lambda e: sink(req.agent_id, e)
        return rec

    def _transitioned(self, rec: AgentRecord, t: Transition) -> None:
        for hook in self.transition_hooks:
            try:
                hook(rec, t)
            except Exception:
                log.error("supervisor.transition_hook_failed", exc_info=True, agent_id=t.agent_id, new=t.new.value)

    def get(self, agent_id: str) -> AgentRecord:
        rec = self.agents.get(agent_id)
        if rec is None:
            raise AgentNotFound(f"agent {agent_id} is not known to this container")
        return rec

    def forget_exited(self, keep: int = MAX_EXITED_RECORDS) -> None:
        """Drop the records (and event buffers) of the longest-gone agents beyond ``keep``: a town
        that ran thousands of polecats must not hold each one's last 2 000 events for ever."""
        gone = [a for a, rec in self.agents.items() if not rec.active and not (a in self._locks and self._locks[a].locked())]
        for agent_id in gone[:max(0, len(gone) - keep)]:
            del self.agents[agent_id]  # its lock stays: one lock per agent id, for the process's life

    def active_agents(self) -> list[AgentRecord]:
        return [a for a in self.agents.values() if a.active]

    async def notify(self, rec: AgentRecord, what: Change) -> None:
        for hook in self.change_hooks:
            try:
                result = hook(rec, what)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.error("supervisor.hook_failed", exc_info=True, agent_id=rec.agent_id, what=what)

    def _check_town(self, req: StartAgentRequest) -> None:
        if self.cfg.town_id and req.town_id != self.cfg.town_id:
            raise TownMismatch(f"this container serves town {self.cfg.town_id}, not {req.town_id}")
        if not self.cfg.town_id:
            self.cfg.town_id = req.town_id
            set_town_id(req.town_id)
        # The worker's URL and token come from this container's own configuration, never from a request
        # or a registry entry: an entry naming another URL got the runtime's token sent there at boot.
        self.worker.update(town_id=req.town_id)
        for key, value in req.env_vars.items():
            if is_secret_key(key):
                register_secret(value)  # a secret a request carries is scrubbed from every log line

    def _check_memory(self) -> None:
        floor = self.cfg.min_free_memory_mb
        if floor > 0:
            available_mb = psutil.virtual_memory().available / 2**20
            if available_mb < floor:
                raise InsufficientMemory(f"only {available_mb:.0f} MB free, below the {floor:.0f} MB floor for a new agent")

    # -- start ----------------------------------------------------------------------------------
    async def start(self, req: StartAgentRequest, *, restart_of: AgentRecord | None = None) -> tuple[AgentRecord, bool]:
        """Start ``req``; returns ``(record, created)``. The same request on a live agent is a no-op.
        ``restart_of``: an in-place restart after a crash (keeps the restart count)."""
        self._check_town(req)
        async with self.lock(req.agent_id):
            existing = self.agents.get(req.agent_id)
            if existing is not None and existing.active:
                if public_request(existing.request) == public_request(req):
                    return existing, False
                log.info("agent.restart_for_new_request", agent_id=req.agent_id)
                await self._stop_locked(existing, "restarted")
            self._check_memory()
            rec = self.new_record(req)
            if existing is not None:
                rec.last_exit = existing.last_exit
            if restart_of is not None:
                rec.restarts = restart_of.restarts + 1
            self.agents.pop(req.agent_id, None)  # re-inserted: the dict's order is the order of last start
            self.agents[req.agent_id] = rec
            self.forget_exited()
            t0 = time.monotonic()
            try:
                await self._launch(rec)
            except BaseException as e:
                # Cancelled too (shutdown during hydration): never leave a spawned kilo behind.
                await asyncio.shield(self._abort_start(rec, e))
                if isinstance(e, Exception):
                    raise StartFailed.from_error(e) from e
                raise
            log.info("agent.started", agent_id=rec.agent_id, role=req.role.value, pid=rec.process.pid if rec.process else None,
                     port=rec.process.port if rec.process else None, session_id=rec.session_id, resumed=rec.resumed,
                     duration_ms=int((time.monotonic() - t0) * 1000))
        await self.notify(rec, Change.started)
        return rec, True

    def owner_of(self, rec: AgentRecord) -> tuple[int, int] | None:
        """The (uid, gid) files the runtime writes for ``rec`` must belong to (None: the runtime's own)."""
        return self.users.owner(rec.agent_id)

    def kilocode_token(self, req: StartAgentRequest) -> str | None:
        return self.cfg.kilocode_token  # the runtime's own; a request's env_vars may not replace it

    def build_launch(self, rec: AgentRecord, password: str) -> dict[str, str]:
        """The child env for ``rec`` (prewarm builds the same one to decide reuse)."""
        req = rec.request
        config = build_kilo_config(
            req.model_copy(update={"model": rec.model, "small_model": rec.small_model}),
            providers=self.cfg.kilo_providers, kilocode_token=self.kilocode_token(req),
            plugin_command=self.cfg.plugin_command, api_url=self.worker.api_url, token_file=rec.paths.token_file,
        )
        rec.config_json = config_content(config)
        return build_child_env(
            req, paths=rec.paths, kilo_bin=self.cfg.kilo_bin, config_json=rec.config_json, password=password,
            parent_pid=os.getpid(), api_url=self.worker.api_url,
            kilocode_token=self.kilocode_token(req), credential_helper=self.cfg.credential_helper,
        )

    async def _launch(self, rec: AgentRecord) -> None:
        req = rec.request
        await self.prepare_workspace(rec)
        warm = await self.prewarm_pool.adopt(rec)
        try:
            await self._bring_up(rec, warm)
        except KiloApiError as e:
            if not rec.restored:
                raise
            # A restored DB kilo cannot use (written by another CLI version): drop it and start
            # once more on a fresh DB rather than failing the agent for ever.
            log.warning("agent.restored_db_refused", agent_id=rec.agent_id, error=str(e))
            rec.restored, rec.session_id = False, None
            for hook in self.stale_db_hooks:
                await hook(rec)
            await self._bring_up(rec, None)
        rec.transition(AgentState.running)
        if req.role == Role.mayor and self.mayor_ready_at is None:
            self.mayor_ready_at = time.time()
            log.info("mayor.ready", agent_id=rec.agent_id)
        if not rec.resumed:
            await rec.client.prompt_async(rec.session_id, req.prompt, model=self.model_ref(rec.model), system=req.system_prompt)
            rec.message_count = 1

    async def prepare_workspace(self, rec: AgentRecord) -> None:
        """The agent's dirs and its git workdir (cloned or initialised, git running as the agent),
        off the event loop. The clone asks for the rig's credential as the agent would: with the
        agent's own token (the runtime's only when agents share its uid and no agent token came)."""
        req = rec.request
        rec.paths.make_dirs()
        await asyncio.to_thread(self.users.prepare, self.cfg.data_dir, rec.paths.root, rec.agent_id, req.git_url)
        for hook in self.prepare_hooks:
            await hook(rec)
        own = rec.paths.token_file.exists()
        git_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(rec.paths.home),
                   "GIT_TERMINAL_PROMPT": "0", **git_identity(req),
                   **git_access_env(req, api_url=self.worker.api_url, token_file=rec.paths.token_file if own else None,
                                    container_token=None if own or self.users.enabled else self.worker.token,
                                    credential_helper=self.cfg.credential_helper)}
        mirror = self.cfg.data_dir / "rigs" / req.rig_id / "mirror.git"
        mirror_env = mirror_git_env(git_env, self.cfg.data_dir) if req.git_url and not req.lightweight else None
        await asyncio.to_thread(prepare_workspace, req, rec.paths.workdir, git_env, mirror,
                                self.users.prefix(rec.agent_id), mirror_env)

    async def _bring_up(self, rec: AgentRecord, warm: Server | None) -> None:
        async with BringUp(self, rec, warm) as up:
            await up.spawn()
            await up.settle(Session.open)
            await up.swap_in()

    def adopt_server(self, rec: AgentRecord, server: Server) -> None:
        rec.process, rec.client = server.proc, server.client
        rec.spawn_task(self._watch_exit(rec, server.proc), "watch")

    async def launch_server(self, rec: AgentRecord) -> Server:
        """Start a kilo server with ``rec``'s current config without touching ``rec``'s live one
        (hot swaps run the new server beside the old). On failure nothing is left running."""
        for hook in self.spawn_hooks:
            await hook(rec)
        await asyncio.to_thread(self.users.own_tree, rec.paths.home, rec.agent_id)  # a restored DB is the runtime's
        password = secrets.token_urlsafe(24)
        register_secret(password)
        env = self.build_launch(rec, password)
        for attempt in range(1, SPAWN_ATTEMPTS + 1):
            proc = await KiloProcess.spawn(self.cfg.kilo_bin, env=env, cwd=str(rec.paths.workdir), port=allocate_port(),
                                           setpriv=self.users.setpriv_options(rec.agent_id))
            try:
                url = await proc.wait_listening(self.cfg.kilo_start_timeout_s)
                client = KiloClient(url, password, timeout_s=self.cfg.kilo_request_timeout_s)
                deadline = time.monotonic() + self.cfg.kilo_start_timeout_s
                while not await client.health():
                    if not proc.running or time.monotonic() > deadline:
                        await client.close()
                        raise KiloStartError("kilo never answered /global/health", phase="health",
                                             stderr_tail="\n".join(proc.stderr_tail))
                    await asyncio.sleep(0.1)
                rec.child_env = env
                return Server(proc, client)
            except BaseException as e:
                await proc.stop(timeout=3.0)
                # A child that dies before listening is usually a lost port race: retry on a new port.
                retry = isinstance(e, KiloStartError) and e.exit_code is not None and attempt < SPAWN_ATTEMPTS
                if not retry:
                    raise
                log.warning("kilo.spawn_retry", agent_id=rec.agent_id, attempt=attempt, exit_code=e.exit_code,
                            stderr_tail=e.stderr_tail[-500:])
        raise AssertionError("unreachable")

    async def open_session(self, rec: AgentRecord, client: KiloClient) -> None:
        """Only the mayor resumes its latest session; every other role gets a fresh one per start.

        A resumed session never gets the startup prompt again, but one without any message never
        had it (prewarmed and not adopted, or the container died between create and prompt): that
        one is taken as new and prompted. An adopted prewarm has settled this already."""
        if rec.session_id is not None:
            return
        rec.resumed = False
        if rec.request.role == Role.mayor:
            latest = await client.latest_session()
            if latest is not None:
                rec.session_id = latest["id"]
                rec.resumed = await client.has_messages(latest["id"])
                if not rec.resumed:
                    log.info("mayor.empty_session_prompted", agent_id=rec.agent_id, session_id=rec.session_id)
                return
        session = await client.create_session(rec.request.identity or f"{rec.request.role.value} {rec.request.name}")
        rec.session_id = session["id"]

    def model_ref(self, model: str) -> tuple[str, str]:
        return split_model(model, self.cfg.kilo_providers)

    async def _abort_start(self, rec: AgentRecord, error: BaseException) -> None:
        await self.kill_agent_process(rec)
        rec.fail(f"start failed: {error}")
        log.warning("agent.start_failed", agent_id=rec.agent_id, error=str(error), phase=getattr(error, "phase", None))
        await self.notify(rec, Change.failed)

    # -- running --------------------------------------------------------------------------------
    async def follow_events(self, rec: AgentRecord) -> None:
        """Subscribe to the agent's current server and wait until the stream is live, so no event
        of the first prompt is missed. A previous subscription (hot swap) is cancelled."""
        if rec.event_task is not None:
            rec.event_task.cancel()
        connected = asyncio.Event()
        rec.event_task = rec.spawn_task(self._stream_events(rec, rec.process, rec.client, connected), "events")
        try:
            await asyncio.wait_for(connected.wait(), timeout=10.0)
        except asyncio.TimeoutError:
            raise KiloStartError("kilo event stream did not connect within 10s", phase="events") from None

    async def _stream_events(self, rec: AgentRecord, proc: KiloProcess, client: KiloClient, connected: asyncio.Event) -> None:
        """Follow one server's ``/event`` stream; reconnect while that server lives."""
        delay = 0.2
        while proc.running and rec.process is proc:
            try:
                async for event in client.events():
                    delay = 0.2
                    if event.get("type") == "server.connected":
                        connected.set()
                    if rec.handle_event(event):
                        for hook in self.event_hooks:
                            result = hook(rec, event)
                            if asyncio.iscoroutine(result):
                                await result
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not proc.running or rec.process is not proc or not rec.active:
                    return
                log.warning("agent.stream_error", agent_id=rec.agent_id, error=repr(e))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _watch_exit(self, rec: AgentRecord, proc: KiloProcess) -> None:
        info = await proc.wait_exit()
        if rec.process is not proc or not rec.active or info.requested:
            return
        rec.last_exit = info.as_dict()
        cause = f"signal {info.signal}" if info.signal else f"exit code {info.code}"
        rec.transition(AgentState.failed, f"kilo exited unexpectedly ({cause})")
        log.error("agent.crashed", agent_id=rec.agent_id, run_id=rec.run_id, exit_code=info.code, signal=info.signal,
                  oom_suspected=info.oom_suspected, stderr_tail=info.stderr_tail[-1000:])
        await rec.cancel_tasks()
        if rec.client is not None:
            await rec.client.close()
        # The report runs beside the restart the crash hooks schedule, not before it.
        self.background.spawn(self.worker.completed(rec.agent_id, "failed", rec.exit_reason), f"completed:{rec.agent_id}")
        await self.notify(rec, Change.crashed)

    async def send_message(self, agent_id: str, prompt: str) -> AgentRecord:
        rec = self.get(agent_id)
        if rec.state != AgentState.running or rec.client is None or rec.session_id is None:
            raise AgentNotRunning(f"agent {agent_id} is {rec.state.value}, not running")
        try:
            # kilo takes the system prompt from the latest user message: every turn carries it.
            await rec.client.prompt_async(rec.session_id, prompt, model=self.model_ref(rec.model),
                                          system=rec.request.system_prompt)
        except KiloApiError as e:
            raise AgentUnreachable(f"kilo of agent {agent_id} did not accept the message: {e}", upstream_status=e.status) from e
        rec.message_count += 1
        rec.last_activity_at = time.time()
        await self.notify(rec, Change.message)
        return rec

    # -- stop -----------------------------------------------------------------------------------
    async def stop(self, agent_id: str, reason: str = "stopped") -> bool:
        """Stop a live agent; ``False`` when it was not running (stop is idempotent)."""
        rec = self.get(agent_id)
        async with self.lock(agent_id):
            if self.agents.get(agent_id) is not rec:
                return False
            if rec.state in (AgentState.backoff, AgentState.fatal):  # no process: only the restart to call off
                rec.transition(AgentState.exited, reason)
            elif not rec.active:
                return False
            else:
                await self._stop_locked(rec, reason)
        await self.notify(rec, Change.stopped)
        return True

    async def _stop_locked(self, rec: AgentRecord, reason: str) -> None:
        rec.transition(AgentState.stopping, reason)
        if rec.client is not None and rec.session_id and rec.process is not None and rec.process.running:
            await rec.client.abort(rec.session_id)
        await self.kill_agent_process(rec, timeout=5.0)
        rec.active_tools.clear()
        rec.transition(AgentState.exited, reason)
        log.info("agent.stopped", agent_id=rec.agent_id, run_id=rec.run_id, reason=reason)

    async def stop_all(self, reason: str = "container shutdown") -> None:
        await asyncio.gather(*(self.stop(a.agent_id, reason) for a in self.active_agents()), return_exceptions=True)
        await self.prewarm_pool.close()

    async def kill_agent_process(self, rec: AgentRecord, timeout: float = 3.0) -> None:
        """Cancel the agent's tasks, stop its kilo (group, then leftovers) and close its client."""
        await rec.cancel_tasks()
        if rec.process is not None:
            info = await rec.process.stop(timeout=timeout)
            rec.last_exit = info.as_dict()
        if rec.client is not None:
            await rec.client.close()

    async def kill_all(self) -> None:
        """Last line of defence at exit: every kilo this runtime still holds dies, whatever state its
        record is in (a cut-short drain may have cancelled a stop half-way)."""
        procs = [a.process for a in self.agents.values() if a.process is not None and a.process.running]
        procs += [proc for _, proc, _ in self.prewarm_pool.entries.values() if proc.running]
        if procs:
            log.warning("supervisor.kill_all", pids=[p.pid for p in procs])
            await asyncio.gather(*(p.stop(timeout=3.0) for p in procs), return_exceptions=True)
        await self.background.close()
