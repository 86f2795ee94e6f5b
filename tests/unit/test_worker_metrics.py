"""The worker's /metrics: Prometheus text with invariants, backlog, beads and agents per town."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_TOKEN


async def test_worker_metrics_parse_and_reflect_the_store(worker):
    town_id, token = await worker.create_town()
    await worker.request("POST", f"/api/towns/{town_id}/agents", json={"agent_id": "mayor", "role": "mayor", "name": "Mayor"})
    code, rig = await worker.request("POST", f"/api/towns/{town_id}/rigs", json={"name": "r", "git_url": "https://example.invalid/r.git"})
    assert code == 201
    code, _ = await worker.request("POST", f"/api/towns/{town_id}/beads", json={"rig_id": rig["rig_id"], "title": "a bead"})
    assert code == 201
    async with worker.http.get(worker.url + "/metrics", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status in (401, 403)
    async with worker.http.get(worker.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        assert r.status == 200
        text = await r.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    issue_beads = sum(v for (name, labels), v in samples.items()
                      if name == "gastown_beads" and ("type", "issue") in labels and ("town_id", town_id) in labels)
    assert issue_beads == 1
    assert samples[("gastown_worker_agents", (("role", "mayor"), ("status", "idle"), ("town_id", town_id)))] == 1
    assert ("gastown_town_events_unprocessed", (("town_id", town_id),)) in samples
    assert not any(name == "gastown_invariant_violations" for name, _ in samples)
