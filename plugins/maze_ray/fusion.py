"""Fusion of tiny calls, pure (no Ray): calls of a tool that takes well under a millisecond
(learned from its runs here) go to Ray in batches, one Ray task running several calls one after
another, so Ray's cost per task (a millisecond or so of scheduling, leasing and messages) is paid
once per batch. Only first attempts of CPU-only tasks without a timeout are fused, in order, with
enough batches to keep every CPU busy."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from maze_core.executor import Invocation

FUSE_BELOW_S = 0.001                    # calls of a tool shorter than this on average are fused
FUSE_MIN_SEEN = 3                       # ... once it has run this many times here
FUSE_SPAN_S = 0.002                     # work per fused batch
FUSE_MAX = 64                           # calls per fused batch at most
TOOLS_KEPT = 256                        # tools whose durations are remembered


class Fusion:
    """Each tool's learned duration, and the batches a turn's invocations go to Ray in."""

    def __init__(self) -> None:
        self.stats: OrderedDict[Any, list] = OrderedDict()   # func -> [runs, mean s]

    def learn(self, func: Any, took: float) -> None:
        """A call of ``func`` ran for ``took`` seconds."""
        stats = self.stats.get(func)
        if stats is None:
            self.stats[func] = [1, took]
            while len(self.stats) > TOOLS_KEPT:
                self.stats.popitem(last=False)
        else:
            self.stats.move_to_end(func)
            stats[0] += 1
            stats[1] += (took - stats[1]) * (0.5 if stats[0] <= FUSE_MIN_SEEN else 0.1)

    def plan(self, invocations: list[Invocation], cpus: float) -> Iterator[list[Invocation]]:
        """The Ray tasks for one engine turn's invocations, in order: each a single invocation, or
        a batch of one tool's fusable calls (in the place of the tool's first call). ``cpus``:
        the cluster's CPUs."""
        groups: dict[tuple, list[Invocation]] = {}
        means: dict[tuple, float] = {}
        order: list[Any] = []          # an invocation, or the key of a group, at its first place
        for inv in invocations:
            found = self.group_of(inv)
            if found is None:
                order.append(inv)
                continue
            key = found[:3]
            if key not in groups:
                groups[key] = []
                means[key] = found[3]
                order.append(key)
            groups[key].append(inv)
        for item in order:
            if isinstance(item, Invocation):
                yield [item]
            else:
                yield from split(groups[item], means[item], cpus)

    def group_of(self, inv: Invocation) -> tuple | None:
        """The group a fusable invocation joins (its tool, CPUs and memory, and the tool's mean
        duration), or None."""
        if inv.attempt != 1 or inv.held:
            return None
        if inv.timeout is not None:
            # a call's time would count from its batch's start, and a call queued behind a hung
            # one in its batch would time out with it, though it never ran
            return None
        if inv.grant is not True or inv.resources.get("gpu"):
            return None
        cpu = float(inv.resources.get("cpu") or 0.0)
        if cpu > 1:
            return None
        seen = self.stats.get(inv.func)
        if seen is None or seen[0] < FUSE_MIN_SEEN or seen[1] >= FUSE_BELOW_S:
            return None
        return (id(inv.func), cpu, int(inv.resources.get("mem") or 0), seen[1])


def split(group: list[Invocation], avg: float, cpus: float) -> list[list[Invocation]]:
    """Batches of a fusable group of calls taking ``avg`` seconds: about FUSE_SPAN_S of work
    each, at most FUSE_MAX calls, and at least as many batches as there are ``cpus`` (when there
    are enough calls)."""
    size = min(FUSE_MAX, max(1, int(FUSE_SPAN_S / max(avg, 1e-6))),
               max(1, math.ceil(len(group) / max(1.0, cpus))))
    return [group[i:i + size] for i in range(0, len(group), size)]
