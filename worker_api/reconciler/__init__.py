"""The town reconciler: events → ``reconcile(state)`` (pure) → actions → side effects → invariants.

Modules: ``state`` (snapshot), ``plan`` + ``rules_*`` + ``gupp`` (pure rules), ``reconcile``
(composition), ``actions`` (the tagged union), ``apply`` (SQL + effects), ``events_apply``
(phase 0), ``lifecycle`` (status consequences shared with routes), ``tick``/``loop``/``service``
(the per-town loop), ``invariants``, ``constants``.
"""
