"""Agents run as users of their own, so nothing an agent runs can read the runtime or another agent.

An agent's ``bash`` is hostile code. As the runtime's user it read ``/proc/<runtime>/environ``
(control token, worker token, object-store keys) and every other agent's kilo env (server
passwords). When the runtime is root (the image; ``make run`` here), each agent gets a numeric
uid/gid of its own (no passwd entry needed) and its kilo, its tools and the git the runtime runs
in its workspace are started through util-linux ``setpriv`` with that uid, no supplementary
groups and ``no_new_privs`` (no setuid escalation). Its tree (``agents/<id>``) is its own, mode
0700; the runtime's data dir is traversable but not listable; a rig's mirror stays readable
(every agent of the rig may read the repository). The runtime itself is made non-dumpable (``gastown.core.procs``), which
also guards its ``/proc`` files from same-uid processes when it is not root (then agents share its
uid and only that guard applies: see the README).

``GASTOWN_AGENT_UIDS`` (``RuntimeConfig.agent_uids``): ``auto`` (default: on when root and
``setpriv`` exists), ``off``.
``GASTOWN_AGENT_UID_BASE``: first uid (default 20000 + 1000 × a hash of the town, so two towns
on one host rarely share uids; one town per container is the production layout).
"""
from __future__ import annotations

import os
import shutil
import stat
import zlib
from pathlib import Path
from typing import Mapping, Sequence

from gastown.contract.git import local_git_allowed
from gastown.core import gitops
from gastown.core.jsonlog import get_logger
from supervisor.kilo_env import credential_wiring

log = get_logger("supervisor.isolation")

MAX_AGENTS = 1000


def _reachable(path: Path, bit: int) -> bool:
    """``path`` has ``bit`` for others and every directory above it the search bit."""
    try:
        if not os.stat(path).st_mode & bit:
            return False
        return all(os.stat(d).st_mode & stat.S_IXOTH for d in path.parents)
    except OSError:
        return False


def runnable_by_others(program: str) -> bool:
    """Whether a user other than the runtime's can execute ``program`` (and its ``#!`` interpreter)."""
    found = shutil.which(program)
    if found is None:
        return False
    path = Path(os.path.realpath(found))
    if not _reachable(path, stat.S_IXOTH):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    if head.startswith(b"#!"):
        interpreter = head[2:].split(b"\n", 1)[0].split()
        if not interpreter or not _reachable(path, stat.S_IROTH):
            return False
        return runnable_by_others(interpreter[0].decode(errors="replace"))
    return True


def mirror_git_env(agent_git_env: Mapping[str, str], data_dir: Path) -> dict[str, str]:
    """The env the runtime (root) fetches a rig's mirror with: the hardened env of the runtime's own
    git (``gastown.core.gitops``: no system or agent config — the agent's ``$HOME/.gitconfig`` is
    the agent's to write —, no hooks, listed protocols) plus the credential helper and the identity
    it asks the worker with."""
    pairs, extra = credential_wiring(agent_git_env)
    protocols = "http:https:file" if local_git_allowed() else "http:https"
    return gitops.safe_env(data_dir / "rigs" / ".git-home", protocols=protocols, extra_config=pairs, extra=extra)


def local_origin(git_url: str | None) -> str | None:
    """The directory of a local ``git_url`` (an absolute path or ``file://``), else None."""
    if not git_url:
        return None
    if git_url.startswith("file://"):
        return git_url.removeprefix("file://").rstrip("/") or None
    return git_url.rstrip("/") if git_url.startswith("/") else None


def _default_base(town_id: str | None) -> int:
    return 20000 + 1000 * (zlib.crc32((town_id or "").encode()) % 40)


class AgentUsers:
    """Which uid each agent runs as (None: isolation off, agents run as the runtime)."""

    def __init__(self, *, enabled: bool, base: int) -> None:
        self.enabled = enabled
        self.base = base
        self._uids: dict[str, int] = {}

    @classmethod
    def create(cls, mode: str, base: int | None, town_id: str | None, programs: Sequence[str] = ()) -> "AgentUsers":
        """``programs``: what an agent must be able to run (kilo, the tools); isolation is refused,
        loudly, when one is out of other users' reach (e.g. an interpreter under ``/root``)."""
        setpriv = shutil.which("setpriv") is not None
        enabled = mode != "off" and os.geteuid() == 0 and setpriv
        if mode != "off" and not enabled:
            log.warning("isolation.agents_share_runtime_uid", root=os.geteuid() == 0, setpriv=setpriv,
                        hint="run as root (the image does) for a uid per agent")
        unreachable = [p for p in programs if not runnable_by_others(p)] if enabled else []
        if unreachable:
            log.error("isolation.agents_share_runtime_uid", unreachable=unreachable,
                      hint="other users cannot run these (install them outside a private home)")
            enabled = False
        return cls(enabled=enabled, base=_default_base(town_id) if base is None else base)

    def uid(self, agent_id: str) -> int | None:
        """The agent's uid, allocated on first use and kept for the runtime's life."""
        if not self.enabled:
            return None
        if agent_id not in self._uids:
            used = set(self._uids.values())
            self._uids[agent_id] = next(self.base + i for i in range(MAX_AGENTS) if self.base + i not in used)
        return self._uids[agent_id]

    def owner(self, agent_id: str) -> tuple[int, int] | None:
        uid = self.uid(agent_id)
        return None if uid is None else (uid, uid)

    def setpriv_options(self, agent_id: str) -> list[str]:
        """``setpriv`` options that make a process the agent ([] when isolation is off)."""
        uid = self.uid(agent_id)
        if uid is None:
            return []
        return [f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs"]

    def prefix(self, agent_id: str) -> list[str]:
        """argv to put before a command that must run as the agent ([] when isolation is off)."""
        opts = self.setpriv_options(agent_id)
        return ["setpriv", *opts, "--"] if opts else []

    def prepare(self, data_dir: Path, root: Path, agent_id: str, git_url: str | None) -> None:
        """Before the workspace is set up (as the agent): the path to it open, its tree its own
        (walked only when a new uid takes it over, e.g. in a new container), and a local origin
        (development: a path or ``file://``) trusted by the agent's git, which refuses a
        repository another user owns."""
        owner = self.owner(agent_id)
        if owner is None:
            return
        self.open_path_to(data_dir)
        if root.stat().st_uid != owner[0]:
            self.own_tree(root, agent_id)
        origin = local_origin(git_url)
        if origin is not None:
            config = root / "home" / ".gitconfig"
            config.write_text(f"[safe]\n\tdirectory = {origin}\n")
            os.chown(config, *owner)

    def own_tree(self, root: Path, agent_id: str) -> None:
        """``root`` and everything under it belongs to the agent, mode 0700 at the top. Symlinks
        are changed themselves, never followed (an agent's link must not hand it a runtime file)."""
        owner = self.owner(agent_id)
        if owner is None:
            return
        for dirpath, dirnames, filenames in os.walk(root):
            for name in (*dirnames, *filenames):
                os.chown(os.path.join(dirpath, name), *owner, follow_symlinks=False)
        os.chown(root, *owner, follow_symlinks=False)
        os.chmod(root, 0o700)

    def lock_up_old_trees(self, data_dir: Path) -> None:
        """Trees an earlier runtime left (a kept volume) belong to uids this runtime hands out in
        its own order: each is the runtime's (0700) until its agent starts and takes it back, or
        the agent that now has that uid could read another's workspace and token. Called once,
        before any start (a start in progress would lose its tree)."""
        agents = data_dir / "agents"
        if not self.enabled or not agents.is_dir():
            return
        for tree in agents.iterdir():
            if tree.is_dir() and not tree.is_symlink():
                os.chown(tree, 0, 0, follow_symlinks=False)
                os.chmod(tree, 0o700)

    def open_path_to(self, data_dir: Path) -> None:
        """Agents must reach ``<data_dir>/agents/<id>``: the data dir and its ancestors get the
        search bit for others (never read: they cannot list it), ``agents/`` likewise."""
        if not self.enabled:
            return
        agents = data_dir / "agents"
        agents.mkdir(parents=True, exist_ok=True)
        for path in (agents, data_dir):  # ours: searchable, not listable (agent ids are not for agents)
            os.chmod(path, (stat.S_IMODE(path.stat().st_mode) & ~0o066) | 0o711)
        for path in data_dir.parents:
            mode = stat.S_IMODE(path.stat().st_mode)
            if not mode & stat.S_IXOTH:
                os.chmod(path, mode | stat.S_IXOTH)
                log.info("isolation.search_bit_added", path=str(path))
