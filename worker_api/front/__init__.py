"""The town's front door for users: user tokens and their towns, the mayor's inbox and
conversation, the agents' event archive and its live stream (issue 12)."""
