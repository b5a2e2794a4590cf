"""Reusable contract test suites for plugins (``store_contract``, ``executor_contract``)."""

import pytest

# assertion details in failures of the contract suites, for whoever runs them
pytest.register_assert_rewrite("maze_core.testing.store_contract", "maze_core.testing.executor_contract")
