"""Audits of any ``EventStore``: the hash chain (``maze events verify``) and the projections against
a replay of the log (``maze events replay``).

Both read the store through its public interface only, so they check third-party stores too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .events import GENESIS_HASH, chain_hash, compact_json
from .projections import TABLES, fold
from .store import EventStore


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The verdict of ``verify_chain``.

    ``events`` is how many events were read; ``first_bad_seq`` the seq where the log first departs
    from a valid chain (for a missing event, the seq it should have had) and ``problem`` says how."""

    ok: bool
    events: int
    first_bad_seq: int | None = None
    problem: str | None = None


Progress = Callable[[int, int], None]  # (events read, events in the log)


def _read(store: EventStore, progress: Progress | None, every: int = 5000) -> Iterator[Any]:
    total = store.last_seq() if progress else 0
    for n, event in enumerate(store.iter_all(), 1):
        if progress and n % every == 0:
            progress(n, total)
        yield event
    if progress:
        progress(total, total)


def verify_chain(store: EventStore, progress: Progress | None = None) -> VerifyReport:
    """Recompute the hash chain over the whole log and stop at the first problem.

    Checks that seq runs 1, 2, 3... without gaps, that each stream's versions run 1, 2, 3..., that
    every hash is ``chain_hash`` of the previous hash and the event, and finally that each stream
    ends at the version the store records (which catches events dropped from the end of a stream).
    Editing, dropping or reordering events is therefore detected; dropping the very last events of the
    log together with their stream versions cannot be, without an anchor kept elsewhere.
    ``progress(read, total)`` is called every few thousand events."""
    prev_hash = GENESIS_HASH
    versions: dict[str, int] = {}
    count = 0
    for event in _read(store, progress):
        count += 1
        if event.seq != count:
            problem = (f"seq {count} is missing (the log goes on at seq {event.seq})" if event.seq > count
                       else f"seq {event.seq} appears where seq {count} belongs (reordered or duplicated)")
            return VerifyReport(False, count, count, problem)
        expected_version = versions.get(event.stream, 0) + 1
        if event.version != expected_version:
            return VerifyReport(False, count, event.seq,
                                f"seq {event.seq}: stream {event.stream!r} is at version {event.version}, "
                                f"expected {expected_version}")
        versions[event.stream] = event.version
        digest = chain_hash(prev_hash, event.seq, event.stream, event.version, event.type, event.ts,
                            event.actor, compact_json(event.data))
        if digest != event.hash:
            return VerifyReport(False, count, event.seq,
                                f"seq {event.seq}: hash mismatch (the event or one before it was edited)")
        prev_hash = event.hash
    for stream, version in versions.items():
        recorded = store.stream_version(stream)
        if recorded != version:
            return VerifyReport(False, count, count + 1,
                                f"stream {stream!r} ends at version {version} in the log but the store "
                                f"records version {recorded} (events dropped from its end?)")
    return VerifyReport(True, count)


def replay_check(store: EventStore, progress: Progress | None = None) -> list[str]:
    """Differences between the stored projections and a fold of the log alone; [] when they agree.

    Every column is compared with ``==`` (floats exactly). ``progress`` as for ``verify_chain``."""
    expected = fold(_read(store, progress))
    problems: list[str] = []
    for table, (keys, cols) in TABLES.items():
        want = expected[table]
        have: dict[tuple[Any, ...], dict[str, Any]] = {
            tuple(row[k] for k in keys): row for row in store.projection_rows(table)}
        for key, row in want.items():
            stored = have.get(key)
            if stored is None:
                problems.append(f"{table} {key!r}: row missing from the store")
                continue
            for col in cols:
                if stored.get(col) != row[col]:
                    problems.append(f"{table} {key!r}: {col} is {stored.get(col)!r} in the store, "
                                    f"the log implies {row[col]!r}")
        problems.extend(f"{table} {key!r}: row in the store that the log does not imply"
                        for key in have if key not in want)
    return problems
