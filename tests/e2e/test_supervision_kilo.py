"""Supervision with real kilo: wedge recycling, mayor crash loop, metrics, memory telemetry (issue 4)."""
from __future__ import annotations

import asyncio
import io
import json
import os
import signal

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gastown.core import jsonlog
from supervisor.telemetry import log_memory
from tests.conftest import kilo_processes

pytestmark = pytest.mark.kilo


async def test_wedged_child_sigstopped_is_recycled_and_session_resumed(runtime_config, make_container, fake_llm):
    runtime_config.health_interval_s = 0.5
    container = await make_container(runtime_config)
    status, body = await container.start_agent()
    assert status == 201
    await container.wait_status("polecat-1", lambda b: b["last_event_type"] in ("session.idle", "session.turn.close"))
    monitor = container.runtime.health_monitor
    monitor.probe_timeout_s, monitor.failures = 1.0, 3  # tight only now: a loaded box is slow while starting
    os.kill(body["pid"], signal.SIGSTOP)
    # Detection takes failures × (interval + probe timeout) ≈ 4.5 s; the replacement is a kilo boot,
    # which on a loaded 2-core box takes tens of seconds. While it boots the agent is "recycling".
    st = await container.wait_status("polecat-1", lambda b: b["status"] == "recycling", timeout=30)
    assert st["pid"] is None and st["last_exit"]["signal"] == signal.SIGKILL
    # Back to patient probes: a new kilo on a loaded box is slow to answer while it boots its instance.
    monitor.probe_timeout_s, monitor.failures = runtime_config.health_timeout_s, runtime_config.health_failures
    st = await container.wait_status("polecat-1", lambda b: b["status"] == "running", timeout=150)
    assert st["pid"] not in (None, body["pid"]) and st["session_id"] == body["session_id"]
    assert not psutil.pid_exists(body["pid"]) or psutil.Process(body["pid"]).status() == psutil.STATUS_ZOMBIE
    assert [p.pid for p in kilo_processes()] == [st["pid"]]
    assert (await container.request("POST", "/agents/polecat-1/message", json={"prompt": "after recycle"}))[0] == 202
    req = await fake_llm.wait_for(lambda r: "after recycle" in r.last_user_text)
    assert "Please say hello" in json.dumps(req.messages)
    assert container.runtime.health_monitor.recycled == 1


async def test_mayor_crash_loop_ends_fatal_then_can_start_again(town, fake_llm):
    worker, container, town_id = town
    rt = container.runtime
    rt.health_monitor.policy.max_crashes, rt.health_monitor.policy.base_delay_s = 3, 0.2
    mayor = dict(agent_id="mayor-1", role="mayor", town_id=town_id, rig_id=f"mayor-{town_id}")
    status, body = await container.start_agent(**mayor)
    assert status == 201
    pid = body["pid"]
    for crash in range(3):
        os.kill(pid, signal.SIGKILL)
        if crash < 2:
            # A restart is a kilo boot: allow the fixture's kilo_start_timeout_s (120 s) and some.
            st = await container.wait_status("mayor-1", lambda b, pid=pid: b["status"] == "running" and b["pid"] not in (None, pid), timeout=150)
            assert st["restarts"] == crash + 1 and st["session_id"] == body["session_id"]
            pid = st["pid"]
    st = await container.wait_status("mayor-1", lambda b: b["fatal"] is True, timeout=30)
    assert st["status"] == "fatal" and "crash loop" in st["exit_reason"]
    await asyncio.sleep(1.0)
    assert kilo_processes() == []
    events = await worker.events(town_id)
    assert any(e["event_type"] == "agent_completed" and "crash loop" in e["payload"] for e in events)
    status, again = await container.start_agent(**mayor)
    assert status == 201 and again["fatal"] is False and again["status"] == "running"


async def test_metrics_parse_and_counters_move(container, fake_llm):
    def scrape(text: str) -> dict:
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    status, text = await container.request("GET", "/metrics")
    assert status == 200
    before = scrape(text)
    assert before[("gastown_agents", (("state", "running"),))] == 0
    assert (await container.start_agent())[0] == 201
    after = scrape((await container.request("GET", "/metrics"))[1])
    assert after[("gastown_agent_starts_total", (("role", "polecat"),))] == 1
    assert after[("gastown_agents", (("state", "running"),))] == 1
    assert after[("gastown_agent_rss_bytes", (("agent_id", "polecat-1"),))] > 50e6
    assert after[("gastown_agent_start_seconds_count", ())] == 1
    assert (await container.request("POST", "/agents/polecat-1/stop"))[0] == 200
    final = scrape((await container.request("GET", "/metrics"))[1])
    assert final[("gastown_agent_stops_total", (("reason", "stopped"),))] == 1
    assert final[("gastown_agents", (("state", "exited"),))] == 1
    assert (await container.request("GET", "/metrics", token=None))[0] == 401


async def test_memory_usage_line_has_children_and_per_agent_rss(container, fake_llm):
    assert (await container.start_agent())[0] == 201
    buf = io.StringIO()
    jsonlog.configure(stream=buf)
    await log_memory(container.runtime.supervisor)
    line = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert line["event"] == "container.memory_usage"
    assert line["children_rss_mb"] > 50 and line["agent_rss_mb"]["polecat-1"] > 50
    assert line["active_agents"] == 1 and line["rss_mb"] > 10
    jsonlog.configure()


async def test_spawn_refused_below_free_memory_floor(container, fake_llm):
    container.runtime.cfg.min_free_memory_mb = 10**9
    status, body = await container.start_agent()
    assert status == 503 and body["error"]["code"] == "INSUFFICIENT_MEMORY"
    assert kilo_processes() == []


async def test_mayor_killed_mid_turn_after_a_healthy_run_is_back_at_once_with_the_stored_turn_snapshotted(
        worker, fake_llm, runtime_config, make_container, tmp_path):
    """supervisord restarts a process that had counted as started at once; the mayor waited a
    backoff before every in-place restart, and the crashed kilo's snapshot (copy and upload) ran on
    the critical path. Now: no delay, and the snapshot holds the turn kilo stored before the kill."""
    from tests.e2e.test_persistence_kilo import _snapshot_texts

    town_id, token = await worker.create_town(default_model="fake/m1")
    runtime_config.town_id, runtime_config.api_url, runtime_config.container_token = town_id, worker.url, token
    runtime_config.snapshot_url = f"file://{tmp_path / 'store'}"
    runtime_config.start_window_s = 2.0
    container = await make_container(runtime_config)
    rt = container.runtime
    await rt.wait_hydrated(90)
    buf = io.StringIO()
    jsonlog.configure(stream=buf)
    mayor = dict(agent_id="mayor", role="mayor", name="Mayor", town_id=town_id, rig_id=f"mayor-{town_id}")
    status, body = await container.start_agent(**mayor)
    assert status == 201, body
    await container.wait_status("mayor", lambda b: b["last_event_type"] in ("session.idle", "session.turn.close"))
    fake_llm.slow_interval = 0.5
    assert (await container.request("POST", "/agents/mayor/message", json={"prompt": "SLOW40"}))[0] == 202
    await fake_llm.wait_for(lambda r: "SLOW40" in r.last_user_text)
    await asyncio.sleep(max(0.0, runtime_config.start_window_s - 1.0) + 1.5)  # served past the window, mid-turn
    os.kill(body["pid"], signal.SIGKILL)
    st = await container.wait_status("mayor", lambda b: b["status"] == "running" and b["pid"] not in (None, body["pid"]),
                                     timeout=150)
    assert st["restarts"] == 1 and st["session_id"] == body["session_id"]
    assert rt.health_monitor.policy.crash_count("mayor") == 1
    jsonlog.configure()
    scheduled = [line for line in map(json.loads, buf.getvalue().splitlines()) if line["event"] == "agent.restart_scheduled"]
    assert [(s["agent_id"], s["delay_s"]) for s in scheduled] == [("mayor", 0.0)], "restarted without a backoff"
    assert scheduled[0]["ran_s"] >= runtime_config.start_window_s
    await rt.persistence.flush(30)
    assert "SLOW40" in _snapshot_texts(runtime_config.snapshot_url, {}, town_id, "mayor", tmp_path / "read")
