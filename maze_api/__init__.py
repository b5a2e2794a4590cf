"""maze_api: the FastAPI server of Maze (the original Maze server API and what users expect beyond it).

``create_app(config, engine=None)`` builds the app; ``maze start`` (plugin ``maze_server``) serves it
with uvicorn.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app
        return create_app
    raise AttributeError(f"module 'maze_api' has no attribute {name!r}")
