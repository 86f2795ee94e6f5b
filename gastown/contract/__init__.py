"""What the container, the worker and the plugin must agree on, written down once.

Roles, agent states, git name rules and the identity env the plugin reads.
Everything here is data and pure functions; the apps import it, it imports only ``gastown.core``.
"""
