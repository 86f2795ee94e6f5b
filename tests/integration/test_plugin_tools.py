"""Each gt_* tool, through the real plugin over MCP stdio: the worker request it sends (method, path,
query, JSON body, bearer token, agent header) and the short text the model gets back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import pytest
import pytest_asyncio

from tests.test_plugin_support import TOKEN, TOWN, FakeWorker, Plugin, Reply, identity_env

pytestmark = pytest.mark.asyncio(loop_scope="module")

T = f"/api/towns/{TOWN}"


@dataclass
class Case:
    tool: str
    args: dict[str, Any]
    method: str
    path: str
    body: Any = None
    query: dict[str, str] = field(default_factory=dict)
    reply: Any = None
    says: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.tool


RIG_CASES = [
    Case("gt_prime", {}, "GET", f"{T}/agents/polecat-1/prime",
         reply={"agent": {"agent_id": "polecat-1", "role": "polecat", "name": "Toast", "status": "working",
                          "checkpoint": {"step": 2}},
                "hooked_bead": {"bead_id": "bd-1", "status": "in_progress", "title": "Fix login",
                                "body": "Steps to reproduce: ..."},
                "mail": [{"mail_id": "m-1", "from_agent_id": "mayor-1", "subject": "hello", "body": "welcome"}],
                "open_beads": [{"bead_id": "bd-2", "status": "open", "title": "Other task"}]},
         says=("polecat-1 polecat Toast [working]", 'checkpoint (saved by you earlier): {"step": 2}', "hooked bead: bd-1 [in_progress] Fix login",
               "Steps to reproduce", "unread mail: 1", "m-1 from mayor-1: hello", "1 open bead:",
               "bd-2 [open] Other task")),
    Case("gt_prime", {}, "GET", f"{T}/agents/polecat-1/prime",
         reply={"agent": {"agent_id": "polecat-1", "role": "polecat"}, "hooked_bead": None, "mail": [], "open_beads": []},
         says=("hooked bead: none", "unread mail: 0", "0 open beads.")),
    Case("gt_bead_status", {"bead_id": "mr-1"}, "GET", f"{T}/beads/mr-1",
         reply={"bead_id": "mr-1", "type": "merge_request", "status": "in_progress", "title": "Review: Fix login",
                "review": {"branch": "gt/polecat-1/bd-1", "target_branch": "main", "pr_url": None}},
         says=("mr-1 [in_progress] (merge_request) Review: Fix login", "review: branch gt/polecat-1/bd-1 into main")),
    Case("gt_bead_status", {"bead_id": "bd-7"}, "GET", f"{T}/beads/bd-7",
         reply={"bead_id": "bd-7", "status": "open", "title": "Tidy", "body": "the body", "priority": "high"},
         says=("bd-7 [open] Tidy (priority high)", "the body")),
    Case("gt_bead_close", {"bead_id": "bd-7"}, "POST", f"{T}/beads/bd-7/close", {"agent_id": "polecat-1"},
         reply={"bead_id": "bd-7", "status": "closed"}, says=("closed bead bd-7 [closed]",)),
    Case("gt_done", {"branch": "gt/polecat-1/bd-1", "pr_url": "https://git.example/pull/1", "summary": "fixed"},
         "POST", f"{T}/agents/polecat-1/done",
         {"branch": "gt/polecat-1/bd-1", "pr_url": "https://git.example/pull/1", "summary": "fixed"},
         reply={"done": True}, says=("done recorded for branch gt/polecat-1/bd-1, PR https://git.example/pull/1",)),
    Case("gt_done", {"branch": "b1"}, "POST", f"{T}/agents/polecat-1/done", {"branch": "b1"},
         reply={"done": True}, says=("done recorded for branch b1.",)),
    Case("gt_request_changes", {"feedback": "tests fail", "files": ["a.py", "b.py"]},
         "POST", f"{T}/agents/polecat-1/request-changes", {"feedback": "tests fail", "files": ["a.py", "b.py"]},
         reply={"rework_bead_id": "bd-9", "mr_status": "open"},
         says=("changes requested: rework bead bd-9 (merge request now open)",)),
    Case("gt_mail_send", {"to_agent_id": "mayor-1", "subject": "question", "body": "which db?"},
         "POST", f"{T}/mail",
         {"from_agent_id": "polecat-1", "to_agent_id": "mayor-1", "subject": "question", "body": "which db?"},
         reply={"mail_id": "m-5"}, says=("mail sent to mayor-1 (mail m-5)",)),
    Case("gt_mail_check", {}, "GET", f"{T}/agents/polecat-1/mail",
         reply={"mail": [{"mail_id": "m-2", "from_agent_id": "refinery-1", "subject": "review", "body": "looks ok"}]},
         says=("1 message:", "m-2 from refinery-1: review", "looks ok")),
    Case("gt_escalate", {"title": "stuck on auth", "body": "no creds", "priority": "high"},
         "POST", f"{T}/escalations",
         {"agent_id": "polecat-1", "title": "stuck on auth", "body": "no creds", "priority": "high"},
         reply={"bead_id": "bd-e1"}, says=("escalated: bead bd-e1",)),
    Case("gt_escalate", {"title": "help"}, "POST", f"{T}/escalations", {"agent_id": "polecat-1", "title": "help"},
         reply={"bead_id": "bd-e2"}, says=("escalated: bead bd-e2",)),
    Case("gt_checkpoint", {"data": '{"step": 2, "notes": ["a"]}'}, "POST", f"{T}/agents/polecat-1/checkpoint",
         {"data": {"step": 2, "notes": ["a"]}}, reply={"saved": True}, says=("checkpoint saved",)),
    Case("gt_nudge", {"target_agent_id": "refinery-1", "message": "ready for review"},
         "POST", f"{T}/agents/refinery-1/nudges",
         {"message": "ready for review", "mode": "wait-idle", "source": "polecat-1"},
         reply={"nudge_id": "n-1"}, says=("nudge queued for refinery-1 (wait-idle), nudge n-1",)),
    Case("gt_nudge", {"target_agent_id": "mayor-1", "message": "now", "mode": "immediate"},
         "POST", f"{T}/agents/mayor-1/nudges", {"message": "now", "mode": "immediate", "source": "polecat-1"},
         reply={"nudge_id": "n-2"}, says=("(immediate)",)),
]

MAYOR_CASES = [
    Case("gt_sling", {"rig_id": "rig-1", "title": "Add search", "body": "details"}, "POST", f"{T}/sling",
         {"rig_id": "rig-1", "title": "Add search", "body": "details"},
         reply={"bead_id": "bd-s1", "status": "open"}, says=("slung bead bd-s1 to rig rig-1 [open]",)),
    Case("gt_sling", {"rig_id": "rig-1", "title": "Small", "priority": "high"}, "POST", f"{T}/sling",
         {"rig_id": "rig-1", "title": "Small", "priority": "high"},
         reply={"bead_id": "bd-s2", "status": "open"}, says=("bd-s2",)),
    Case("gt_sling_batch",
         {"rig_id": "rig-1", "title": "Feature X", "merge_mode": "review-then-land", "staged": True,
          "beads": [{"title": "schema"}, {"title": "api", "body": "b", "depends_on": [0]},
                    {"title": "ui", "depends_on": [0, 1]}]},
         "POST", f"{T}/convoys",
         {"rig_id": "rig-1", "title": "Feature X", "merge_mode": "review-then-land", "staged": True,
          "beads": [{"title": "schema"}, {"title": "api", "body": "b", "depends_on": [0]},
                    {"title": "ui", "depends_on": [0, 1]}]},
         reply={"convoy_id": "cv-1", "bead_ids": ["bd-a", "bd-b", "bd-c"]},
         says=("convoy cv-1 (staged): 3 beads: bd-a, bd-b, bd-c",)),
    Case("gt_sling_batch", {"rig_id": "rig-1", "title": "Two", "beads": [{"title": "a"}, {"title": "b"}]},
         "POST", f"{T}/convoys", {"rig_id": "rig-1", "title": "Two", "beads": [{"title": "a"}, {"title": "b"}]},
         reply={"convoy_id": "cv-2", "bead_ids": ["bd-1", "bd-2"]}, says=("convoy cv-2: 2 beads",)),
    Case("gt_list_rigs", {}, "GET", f"{T}/rigs",
         reply={"rigs": [{"rig_id": "rig-1", "name": "web", "git_url": "https://git.example/o/web"}]},
         says=("1 rig:", "- rig-1 web https://git.example/o/web")),
    Case("gt_list_beads", {"status": "open", "rig_id": "rig-1"}, "GET", f"{T}/beads",
         query={"status": "open", "rig_id": "rig-1"},
         reply={"beads": [{"bead_id": "bd-1", "status": "open", "title": "A", "rig_id": "rig-1"},
                          {"bead_id": "bd-2", "status": "open", "title": "B", "type": "merge_request"}]},
         says=("2 beads:", "- bd-1 [open] A (rig rig-1)", "- bd-2 [open] (merge_request) B")),
    Case("gt_list_beads", {}, "GET", f"{T}/beads", reply={"beads": []}, says=("0 beads.",)),
    Case("gt_list_beads", {"type": "escalation"}, "GET", f"{T}/beads", query={"type": "escalation"},
         reply={"beads": [{"bead_id": "bd-e", "status": "open", "type": "escalation", "title": "help"}]},
         says=("bd-e [open] (escalation) help",)),
    Case("gt_list_agents", {}, "GET", f"{T}/agents",
         reply={"agents": [{"agent_id": "polecat-1", "role": "polecat", "name": "Toast", "status": "working",
                            "current_hook_bead_id": "bd-1"}]},
         says=("1 agent:", "polecat-1 polecat Toast [working] hooked bd-1")),
    Case("gt_list_convoys", {}, "GET", f"{T}/convoys",
         reply={"convoys": [{"convoy_id": "cv-1", "status": "open", "title": "F", "total_beads": 3, "closed_beads": 1}]},
         says=("1 convoy:", "cv-1 [open] F (1/3 closed)")),
    Case("gt_convoy_status", {"convoy_id": "cv-1"}, "GET", f"{T}/convoys/cv-1",
         reply={"bead_id": "cv-1", "status": "in_progress", "title": "F", "merge_mode": "review-then-land",
                "feature_branch": "convoy/f-cv-1", "progress": {"total": 2, "closed": 1, "failed": 0, "open": 1},
                "beads": [{"bead_id": "bd-a", "status": "closed", "title": "schema", "blocked_by": []},
                          {"bead_id": "bd-b", "status": "open", "title": "api", "blocked_by": ["bd-a"]}]},
         says=("cv-1 [in_progress] F (1/2 closed) merge_mode review-then-land feature_branch convoy/f-cv-1",
               "2 beads:", "bd-a [closed] schema", "bd-b [open] api (blocked by bd-a)")),
    Case("gt_convoy_start", {"convoy_id": "cv-1"}, "POST", f"{T}/convoys/cv-1/start", {},
         reply={"convoy_id": "cv-1", "status": "open"}, says=("convoy cv-1 started",)),
    Case("gt_convoy_close", {"convoy_id": "cv-1"}, "POST", f"{T}/convoys/cv-1/close", {},
         reply={"convoy_id": "cv-1", "status": "closed"}, says=("convoy cv-1 closed",)),
    Case("gt_bead_update", {"bead_id": "bd-1", "status": "closed", "priority": "high"}, "PATCH", f"{T}/beads/bd-1",
         {"status": "closed", "priority": "high"},
         reply={"bead_id": "bd-1", "status": "closed", "title": "A", "priority": "high"},
         says=("updated bead bd-1 (status, priority)", "bd-1 [closed] A")),
    Case("gt_bead_reassign", {"bead_id": "bd-1", "agent_id": "polecat-2"}, "POST", f"{T}/beads/bd-1/reassign",
         {"agent_id": "polecat-2"}, reply={"bead_id": "bd-1"}, says=("bead bd-1 reassigned to polecat-2",)),
    Case("gt_bead_reassign", {"bead_id": "bd-1"}, "POST", f"{T}/beads/bd-1/reassign", {},
         reply={"bead_id": "bd-1"}, says=("bead bd-1 unassigned",)),
    Case("gt_agent_reset", {"agent_id": "polecat-2"}, "POST", f"{T}/agents/polecat-2/reset", {},
         reply={"agent_id": "polecat-2", "status": "idle"}, says=("agent polecat-2 reset",)),
    Case("gt_escalation_ack", {"bead_id": "bd-7", "note": "on it"}, "POST", f"{T}/escalations/bd-7/acknowledge",
         {"agent_id": "mayor-1", "note": "on it"}, reply={"bead_id": "bd-7", "status": "open"},
         says=("acknowledged escalation bd-7 [open]",)),
    Case("gt_mail_check", {}, "GET", f"{T}/agents/mayor-1/mail",
         None, reply={"mail": []}, says=("0 messages.",)),
    Case("gt_mail_send", {"to_agent_id": "polecat-1", "subject": "s", "body": "b"}, "POST", f"{T}/mail",
         {"from_agent_id": "mayor-1", "to_agent_id": "polecat-1", "subject": "s", "body": "b"},
         reply={"mail_id": "m-9"}, says=("mail sent to polecat-1",)),
    Case("gt_nudge", {"target_agent_id": "polecat-1", "message": "status?", "mode": "queue"},
         "POST", f"{T}/agents/polecat-1/nudges", {"message": "status?", "mode": "queue", "source": "mayor-1"},
         reply={"nudge_id": "n-3"}, says=("nudge queued for polecat-1 (queue)",)),
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def worker() -> AsyncIterator[FakeWorker]:
    async with FakeWorker() as w:
        yield w


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig(worker: FakeWorker, tmp_path_factory: Any) -> AsyncIterator[Plugin]:
    env = identity_env(worker.url, role="polecat", agent_id="polecat-1")
    async with Plugin(env, tmp_path_factory.mktemp("rig") / "stderr.log") as p:
        yield p


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def mayor(worker: FakeWorker, tmp_path_factory: Any) -> AsyncIterator[Plugin]:
    env = identity_env(worker.url, role="mayor", agent_id="mayor-1")
    async with Plugin(env, tmp_path_factory.mktemp("mayor") / "stderr.log") as p:
        yield p


@pytest.fixture(autouse=True)
def _fresh(worker: FakeWorker) -> None:
    worker.reset()


async def _check(plugin: Plugin, worker: FakeWorker, case: Case) -> None:
    worker.script(case.method, case.path, Reply(body=case.reply))
    is_error, text = await plugin.call(case.tool, case.args)
    assert not is_error, text
    assert len(worker.requests) == 1, worker.requests
    req = worker.requests[0]
    assert (req.method, req.path) == (case.method, case.path)
    assert req.body == case.body
    assert req.query == case.query
    assert req.auth == f"Bearer {TOKEN}"
    for snippet in case.says:
        assert snippet in text, f"{snippet!r} not in {text!r}"
    assert len(text) < 1500


@pytest.mark.parametrize("case", RIG_CASES, ids=str)
async def test_rig_tool_request_and_answer(rig: Plugin, worker: FakeWorker, case: Case) -> None:
    await _check(rig, worker, case)
    assert worker.requests[0].headers["X-Gastown-Agent-Id"] == "polecat-1"
    assert worker.requests[0].headers["X-Gastown-Rig-Id"] == "rig-1"


@pytest.mark.parametrize("case", MAYOR_CASES, ids=str)
async def test_mayor_tool_request_and_answer(mayor: Plugin, worker: FakeWorker, case: Case) -> None:
    await _check(mayor, worker, case)
    assert worker.requests[0].headers["X-Gastown-Agent-Id"] == "mayor-1"


async def test_every_tool_has_a_case() -> None:
    from tests.test_plugin_support import MAYOR_TOOLS, RIG_TOOLS

    assert {c.tool for c in RIG_CASES} == RIG_TOOLS
    assert {c.tool for c in MAYOR_CASES} == MAYOR_TOOLS


async def test_ids_from_the_model_cannot_reshape_the_route(rig: Plugin, worker: FakeWorker) -> None:
    is_error, _ = await rig.call("gt_bead_status", {"bead_id": "../agents/x?y=1"})
    assert not is_error
    req = worker.requests[0]
    assert req.raw_path.startswith(f"{T}/beads/..%2Fagents%2Fx%3Fy"), req.raw_path
    assert req.path == f"{T}/beads/../agents/x?y=1"
    assert worker.requests[0].query == {}


async def test_large_lists_are_capped(mayor: Plugin, worker: FakeWorker) -> None:
    beads = [{"bead_id": f"bd-{i}", "status": "open", "title": "t" * 500} for i in range(100)]
    worker.script("GET", f"{T}/beads", Reply(body={"beads": beads}))
    is_error, text = await mayor.call("gt_list_beads", {})
    assert not is_error
    assert text.startswith("100 beads:")
    assert "… 70 more not shown" in text
    assert len(text) < 10_000


@pytest.mark.parametrize(
    "tool,args,says",
    [
        ("gt_sling_batch", {"rig_id": "r", "title": "x", "beads": [{"title": "a", "depends_on": [1]}]},
         "error: INVALID_ARGUMENT: beads[0].depends_on has 1, valid indexes are 0..0"),
        ("gt_sling_batch", {"rig_id": "r", "title": "x", "beads": [{"title": "a"}, {"title": "b", "depends_on": [1]}]},
         "error: INVALID_ARGUMENT: beads[1] depends on itself"),
        ("gt_bead_update", {"bead_id": "bd-1"}, "error: INVALID_ARGUMENT: pass at least one of"),
    ],
)
async def test_mayor_rejects_bad_arguments_without_calling_the_worker(
    mayor: Plugin, worker: FakeWorker, tool: str, args: dict[str, Any], says: str
) -> None:
    is_error, text = await mayor.call(tool, args)
    assert is_error and text.startswith(says), text
    assert worker.requests == []


async def test_checkpoint_rejects_data_that_is_not_json(rig: Plugin, worker: FakeWorker) -> None:
    is_error, text = await rig.call("gt_checkpoint", {"data": "step 2 done"})
    assert is_error and text.startswith("error: INVALID_ARGUMENT: data must be a JSON string"), text
    assert worker.requests == []


async def test_schema_violations_are_reported_to_the_model(rig: Plugin, worker: FakeWorker) -> None:
    is_error, text = await rig.call("gt_nudge", {"target_agent_id": "x", "message": "m", "mode": "loud"})
    assert is_error and "mode" in text, text
    is_error, text = await rig.call("gt_done", {})
    assert is_error and "branch" in text, text
    assert worker.requests == []
