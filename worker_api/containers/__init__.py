"""Town containers owned by the worker: one provider interface (start, state, stop), a local-process
and a Docker-API provider, and the service that starts a town's container when work arrives."""
