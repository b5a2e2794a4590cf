"""maze_api: FastAPI servers (see the server API issue)."""
