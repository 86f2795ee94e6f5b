"""Shared plumbing below every app: logging, HTTP errors, ids, ports, child processes."""
