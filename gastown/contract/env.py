"""Which environment variables belong to the runtime: the one policy the worker (a town's or a rig's
``env_vars`` setting: 400 naming the key) and the container (a start request's ``env_vars``: dropped)
both apply.

Why these: an agent's env carries its identity and tokens (``GASTOWN_*``, ``KILO*``, the git
tokens), the runtime's git wiring (``GIT_*``: the credential helper, the author identity), what the
loader and the runtimes trust (``LD_*``, ``DYLD_*``, ``NODE_*``, ``BUN_*``, ``PYTHON*``: the plugin and the
credential helper are Python), where things live
(``PATH``, ``HOME``, ``XDG_*``, ``TMPDIR``, ``SHELL``) and how TLS and proxies are reached. A custom
variable that could redirect any of these could take the agent's credentials elsewhere.
"""
from __future__ import annotations

import re

ENV_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"  # pydantic reads "$" strictly; Python code uses fullmatch
RESERVED_PREFIXES = ("GASTOWN_", "KILO_", "KILOCODE_", "OPENCODE_", "XDG_", "LD_", "DYLD_", "GIT_", "BUN_", "NODE_",
                     "PYTHON")
RESERVED_KEYS = frozenset({
    "PATH", "HOME", "SHELL", "USER", "LOGNAME", "PWD", "TMPDIR", "TERM",
    "KILOCODE_TOKEN", "GITHUB_TOKEN", "GH_TOKEN", "GITLAB_TOKEN", "GITLAB_INSTANCE_URL", "GITHUB_CLI_PAT",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "FTP_PROXY",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSLKEYLOGFILE",
})
_KEY = re.compile(ENV_KEY_PATTERN)


def is_reserved_env_key(key: str) -> bool:
    """Case-insensitive: ``https_proxy`` is read as readily as ``HTTPS_PROXY``."""
    upper = key.upper()
    return upper in RESERVED_KEYS or upper.startswith(RESERVED_PREFIXES)


def is_env_key(key: str) -> bool:
    return bool(_KEY.fullmatch(key))  # fullmatch: "$" would let "PATH\n" through
