"""The worker's HTTP client of the control server, against a real aiohttp server in-process."""
from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestServer

from worker_api.dispatch import HttpContainerClient, Target


async def test_agent_statuses_parse_a_long_answer_whole():
    """The client cut every answer at 2000 chars before parsing: with a few agents' stderr tails
    in ``GET /agents`` the JSON broke and every agent read as ``unknown``, so a dead agent was
    never seen."""
    agents = [{"agent_id": f"pc-{i}", "status": "failed" if i == 3 else "running",
               "last_exit": {"stderr_tail": "x" * 5000}} for i in range(5)]

    async def list_agents(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer ctl-0123456789"
        return web.json_response({"agents": agents})

    app = web.Application()
    app.router.add_get("/agents", list_agents)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = HttpContainerClient()
    try:
        target = Target("town-1", str(server.make_url("")).rstrip("/"), "ctl-0123456789")
        got = await client.agent_statuses(target, ["pc-1", "pc-3", "pc-9"])
        assert got == {"pc-1": "running", "pc-3": "failed", "pc-9": "not_found"}
    finally:
        await client.aclose()
        await server.close()
