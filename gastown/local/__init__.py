"""Local stand-ins a town can run on one machine: the scripted model and a SeaweedFS store."""
