"""Text from agents and models shown on a terminal: without the control characters a terminal acts
on (an ESC sequence can move the cursor, rewrite earlier lines, set the window title or, on some
terminals, answer back into the input)."""
from __future__ import annotations

_CONTROL = {c: "?" for c in [*range(0x20), *range(0x7f, 0xa0)]}  # C0, DEL, C1
_KEEP_LINES = {c: "?" for c in _CONTROL if c not in (0x0a, 0x09)}  # ... but newline and tab


def printable(text: object, *, lines: bool = False) -> str:
    """``text`` with control characters shown as ``?`` (newlines and tabs kept when ``lines``)."""
    return str(text).translate(_KEEP_LINES if lines else _CONTROL)
