"""Short text renderings of worker objects for the model.

Tool output lands in the model's context on every call, so it stays compact: one summary line, then
one line per item with the ids the model needs for its next call. Lists and bodies are capped.
Field lookups are tolerant (``bead_id`` or ``id``) so a small shape change on the worker degrades
to a missing field, not a crashed tool.
"""
from __future__ import annotations

from typing import Any, Iterable

MAX_ITEMS = 30
MAX_BODY = 2000
MAX_LINE_TEXT = 200


def pick(obj: Any, *keys: str) -> Any:
    if not isinstance(obj, dict):
        return None
    for key in keys:
        value = obj.get(key)
        if value not in (None, ""):
            return value
    return None


def clip(text: Any, limit: int = MAX_LINE_TEXT) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= limit else s[:limit] + f"… [{len(s) - limit} more chars]"


def one_line(text: Any, limit: int = MAX_LINE_TEXT) -> str:
    return clip(" ".join(str(text or "").split()), limit)


def items(data: Any, key: str) -> list[Any]:
    """The list under ``key`` (or ``data`` itself when the worker answered a bare list)."""
    value = data.get(key) if isinstance(data, dict) else data
    return value if isinstance(value, list) else []


def bead_line(b: Any) -> str:
    parts = [str(pick(b, "bead_id", "id") or "?"), f"[{pick(b, 'status') or '?'}]"]
    kind = pick(b, "type")
    if kind and kind != "issue":
        parts.append(f"({kind})")
    parts.append(one_line(pick(b, "title")))
    extra = []
    if pick(b, "rig_id"):
        extra.append(f"rig {pick(b, 'rig_id')}")
    assignee = pick(b, "assignee_agent_id", "assignee")
    if assignee:
        extra.append(f"assignee {assignee}")
    blocked = pick(b, "blocked_by")
    if isinstance(blocked, list) and blocked:
        extra.append(f"blocked by {join_ids(blocked)}")
    if pick(b, "priority"):
        extra.append(f"priority {pick(b, 'priority')}")
    return " ".join(parts) + (f" ({', '.join(extra)})" if extra else "")


def bead_detail(b: Any) -> str:
    """A bead with its body; for a merge request also the branch and PR a reviewer needs."""
    lines = [bead_line(b)]
    review = pick(b, "review")
    if isinstance(review, dict):
        parts = [f"branch {review['branch']}" if review.get("branch") else "",
                 f"into {review['target_branch']}" if review.get("target_branch") else "",
                 f"PR {review['pr_url']}" if review.get("pr_url") else ""]
        if any(parts):
            lines.append("review: " + " ".join(p for p in parts if p))
    body = pick(b, "body")
    if body:
        lines.append(clip(body, MAX_BODY))
    return "\n".join(lines)


def agent_line(a: Any) -> str:
    line = f"{pick(a, 'agent_id', 'id') or '?'} {pick(a, 'role') or '?'}"
    if pick(a, "name"):
        line += f" {one_line(pick(a, 'name'))}"
    if pick(a, "status"):
        line += f" [{pick(a, 'status')}]"
    hooked = pick(a, "current_hook_bead_id", "hooked_bead_id")
    if hooked:
        line += f" hooked {hooked}"
    if pick(a, "rig_id"):
        line += f" rig {pick(a, 'rig_id')}"
    return line


def mail_line(m: Any, with_body: bool = True) -> str:
    head = f"{pick(m, 'mail_id', 'id') or '?'} from {pick(m, 'from_agent_id', 'from') or '?'}: {one_line(pick(m, 'subject'))}"
    body = pick(m, "body")
    return head + (f"\n  {clip(body, 1000)}" if with_body and body else "")


def rig_line(r: Any) -> str:
    line = str(pick(r, "rig_id", "id") or "?")
    if pick(r, "name"):
        line += f" {one_line(pick(r, 'name'))}"
    url = pick(r, "git_url", "repo_url", "repository")
    if url:
        line += f" {url}"
    return line


def convoy_line(c: Any) -> str:
    line = f"{pick(c, 'convoy_id', 'bead_id', 'id') or '?'} [{pick(c, 'status') or '?'}] {one_line(pick(c, 'title'))}"
    progress = pick(c, "progress")
    if isinstance(progress, dict):
        total, closed, failed = progress.get("total"), progress.get("closed"), progress.get("failed")
    else:
        total, closed, failed = pick(c, "total_beads"), pick(c, "closed_beads"), None
    if total is not None:
        line += f" ({closed or 0}/{total} closed" + (f", {failed} failed" if failed else "") + ")"
    for key in ("merge_mode", "feature_branch"):
        if pick(c, key):
            line += f" {key} {pick(c, key)}"
    if isinstance(c, dict) and c.get("staged"):
        line += " staged"
    return line


def listing(noun: str, rows: list[Any], render: Any) -> str:
    """``"3 beads:"`` then one rendered line each, capped at :data:`MAX_ITEMS`."""
    n = len(rows)
    head = f"{n} {noun}{'' if n == 1 else 's'}" + (":" if n else ".")
    lines = [head, *(f"- {render(r)}" for r in rows[:MAX_ITEMS])]
    if n > MAX_ITEMS:
        lines.append(f"… {n - MAX_ITEMS} more not shown")
    return "\n".join(lines)


def join_ids(ids: Iterable[Any]) -> str:
    return ", ".join(str(i) for i in ids)
