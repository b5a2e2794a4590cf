"""maze_client: the Python SDK of Maze, with retries, pooled connections and typed results.

Build a workflow locally, submit it to a Maze server, wait, fetch results; no Ray on the client::

    import maze_client
    from maze_client import task

    @task
    def greet(name: str) -> dict:
        return {"text": f"hello {name}"}

    with maze_client.connect("http://127.0.0.1:8000", token=None) as client:
        dag = client.new_dag("hello")
        t1 = dag.add_task(greet, inputs={"name": "maze"})
        run_id = client.submit_dag(dag)
        client.wait(run_id, timeout=60)
        print(client.get_task_result(run_id, t1)["data"])

Errors are typed (``maze_client.exceptions``); results are dataclasses (``maze_client.models``).
"""

from __future__ import annotations

from maze_core.dag import DAG, OutputRef, TaskRef
from maze_core.registry import TYPE_FILEPATH, TYPE_FOLDERPATH, task

from . import exceptions
from ._http import RetryPolicy
from .client import MazeClient, connect
from .exceptions import (
    MazeAPIError,
    MazeAuthenticationError,
    MazeBadRequestError,
    MazeConflictError,
    MazeConnectionError,
    MazeNotFoundError,
    MazePayloadTooLargeError,
    MazePermissionError,
    MazeRateLimitError,
    MazeServerError,
    MazeTimeoutError,
    MazeWaitTimeoutError,
)
from .models import (
    ClusterInfo,
    Event,
    GPUInfo,
    Health,
    NodeInfo,
    Run,
    RunSummary,
    TaskResult,
    TaskSummary,
    Tool,
)

__version__ = "0.1.0"

__all__ = [
    "DAG",
    "TYPE_FILEPATH",
    "TYPE_FOLDERPATH",
    "ClusterInfo",
    "Event",
    "GPUInfo",
    "Health",
    "MazeAPIError",
    "MazeAuthenticationError",
    "MazeBadRequestError",
    "MazeClient",
    "MazeConflictError",
    "MazeConnectionError",
    "MazeNotFoundError",
    "MazePayloadTooLargeError",
    "MazePermissionError",
    "MazeRateLimitError",
    "MazeServerError",
    "MazeTimeoutError",
    "MazeWaitTimeoutError",
    "NodeInfo",
    "OutputRef",
    "RetryPolicy",
    "Run",
    "RunSummary",
    "TaskRef",
    "TaskResult",
    "TaskSummary",
    "Tool",
    "connect",
    "exceptions",
    "task",
]
