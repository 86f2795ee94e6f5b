"""Shared plumbing for every gastown process: CLI entry, JSON logs, HTTP errors, id rules."""
