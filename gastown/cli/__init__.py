"""The ``gastown`` command: the top layer, the only code that may import every app."""
from gastown.cli.main import main

__all__ = ["main"]
