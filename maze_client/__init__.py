"""maze_client: the SDK (see the server API issue)."""
