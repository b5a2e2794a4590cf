"""Serves maze_api with uvicorn for ``maze start`` (issue 4)."""
