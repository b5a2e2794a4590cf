"""The local executor passes the executor contract, in thread and process mode."""

from __future__ import annotations

import pytest
from maze_local import LocalExecutor

from maze_core.resources import normalize
from maze_core.testing.executor_contract import ExecutorContract


class TestLocalThreads(ExecutorContract):
    @pytest.fixture
    def executor(self):
        ex = LocalExecutor(cpus=2)
        yield ex
        ex.shutdown(wait=False)


class TestLocalProcesses(ExecutorContract):
    @pytest.fixture
    def executor(self):
        ex = LocalExecutor(cpus=2, mode="process")
        yield ex
        ex.shutdown(wait=False)


def test_memory_and_gpu_accounting():
    ex = LocalExecutor(cpus=4, mem=1000, gpus=1)
    assert ex.check(normalize({"mem": 2000})) and "1000 MB" in ex.check(normalize({"mem": 2000}))
    assert ex.try_reserve(normalize({"mem": 600}))
    assert not ex.try_reserve(normalize({"mem": 600}))
    assert ex.try_reserve(normalize({"gpu": 1}))
    assert not ex.try_reserve(normalize({"gpu": 1}))
    assert "GPU" in LocalExecutor(cpus=1).check(normalize({"gpu": 1}))


def test_io_tasks_take_a_small_share():
    ex = LocalExecutor(cpus=1)
    for _ in range(10):
        assert ex.try_reserve(normalize({"type": "io"}))
    assert not ex.try_reserve(normalize({"type": "io"}))
