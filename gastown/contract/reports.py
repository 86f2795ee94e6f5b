"""Reports from a container to the worker (``/api/towns/{t}/agents/{a}/...``), one model each: the
container builds its bodies with these and the worker validates with the same classes.

Strict types (no ``"5"`` → 5, no ``true`` → 1) and bounded lengths so garbage is a 400, never a 500
or a row of junk. Unknown fields are ignored: a newer container may send more than an older worker
reads. Times are epoch milliseconds (``gastown/contract/wire.py``), see :data:`EpochMs`.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gastown.contract.agents import AgentStateName, RoleName
from gastown.core.ids import ID_PATTERN, is_valid_id


def check_id(v: str) -> str:
    if not is_valid_id(v):
        raise ValueError("must match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    return v


MIN_EPOCH_MS = 100_000_000_000  # 1973-03-03 in ms; any smaller number is seconds from an old container
MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: keeps every time inside SQLite INTEGER
MAX_COUNT = 2**53  # counters beyond JSON's exact integers are garbage, and 2**63 overflows SQLite


def to_epoch_ms(v: int | float | str) -> int:
    """Numbers are epoch ms, the one unit on the wire (``gastown/contract/wire.py``); strings are
    ISO-8601 (``Z`` or an offset; naive means UTC). A number below 1e11 (before 1973 in ms) is what
    an older container sends in seconds: refused with a 400 rather than stored as 1970, which would
    make every agent look decades quiet (it used to be scaled by 1000: two units on one wire)."""
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v)
        except ValueError:
            raise ValueError("must be epoch milliseconds or an ISO-8601 timestamp") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return int(dt.timestamp() * 1000)
    if v < 0 or v != v or v in (float("inf"), float("-inf")):
        raise ValueError("must be a non-negative finite number")
    if v < MIN_EPOCH_MS:
        raise ValueError("must be epoch milliseconds (this looks like seconds)")
    ms = int(v)
    if ms > MAX_EPOCH_MS:
        raise ValueError("must be a time before year 10000")
    return ms


def _empty_to_none(v: str) -> str | None:
    return v or None


Id = Annotated[str, Field(min_length=1, max_length=64, json_schema_extra={"pattern": ID_PATTERN}), AfterValidator(check_id)]
EpochMs = Annotated[int | float | str, AfterValidator(to_epoch_ms)]
ShortText = Annotated[str, Field(min_length=1, max_length=200)]
# Optional text where the container may send "" for "nothing yet": stored as NULL, not refused.
BlankableText = Annotated[str, Field(max_length=200), AfterValidator(_empty_to_none)]


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", str_strip_whitespace=False)


class Heartbeat(Body):
    status: AgentStateName
    last_event_type: Optional[BlankableText] = None
    last_event_at: Optional[EpochMs] = None
    active_tools: Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=200)] = []
    message_count: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 0
    container_instance_id: Optional[BlankableText] = None
    # Only for an agent the worker does not know yet (see routes_container.heartbeat).
    role: Optional[RoleName] = None
    name: Optional[ShortText] = None
    rig_id: Optional[Id] = None


class Completed(Body):
    status: Literal["completed", "failed"]
    reason: Optional[Annotated[str, Field(max_length=2000)]] = None


class Waiting(Body):
    fired_at: EpochMs


class EvictionContext(Body):
    branch: Annotated[str, Field(min_length=1, max_length=512)]
    agent_name: ShortText
    saved_at: EpochMs


