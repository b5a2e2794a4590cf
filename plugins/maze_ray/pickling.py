"""Ray's pickler follows the modules Maze ships by value.

``cloudpickle.register_pickle_by_value`` marks modules that exist only in this process (a
workflow file that ``maze run`` loaded, its sibling modules, an uploaded tool): their functions
and classes are pickled with their code instead of by name. Ray serialises task arguments with
its own copy of cloudpickle (``ray.cloudpickle``), whose registry is separate, so an argument
holding an instance of such a class (an upstream result decoded in the driver for a retry or a
resumed run) would reach the worker as a name it cannot import. ``sync()`` copies the standard
registry into Ray's before anything is handed to Ray; task functions themselves travel as bytes
of the standard pickler (``worker.make_body``).
"""

from __future__ import annotations

import sys
import threading
import types

import cloudpickle

_lock = threading.Lock()
_mirrored: frozenset[str] = frozenset()


def sync() -> None:
    """Make Ray's by-value registry hold what the standard one holds (cheap when unchanged)."""
    global _mirrored
    wanted = frozenset(cloudpickle.list_registry_pickle_by_value())
    if wanted == _mirrored:
        return
    from ray import cloudpickle as ray_pickle
    with _lock:
        have = set(ray_pickle.list_registry_pickle_by_value())
        for name in wanted - have:
            module = sys.modules.get(name)
            if module is not None:        # gone from sys.modules: pickled by value anyway
                ray_pickle.register_pickle_by_value(module)
        for name in (_mirrored - wanted) & have:
            ray_pickle.unregister_pickle_by_value(types.ModuleType(name))   # only its name counts
        _mirrored = wanted
