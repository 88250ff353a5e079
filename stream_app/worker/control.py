"""Control messages that name no customer: the batches of customers stay in memory.

A re-scoring, sweep or audience pass queues its work as messages on the internal control
topic, co-partitioned with the inputs, so that the work runs in the ``process`` agent, in
order with the partition's events (table writes need the customer's partition). The
customers of a message are not written to the topic: they would stay there, readable, after
the customers are erased (and without ``PSEUDONYM_KEY`` they are raw ids). The worker that
queues a batch owns the partition, and it is the worker that consumes the message, so it
keeps the batch's keys in memory (:class:`ControlBatches`) and the message names only the
op, its parameters (model version, sweep time, definitions version), the worker and the
batch number (``schemas/control.schema.json``).

A message whose batch the worker does not hold (queued before a restart, or by the
partition's previous owner before a rebalance) names nobody: the new owner re-scores every
customer of a partition it was just assigned (``rescore_work``: the partition is not
indexed yet), sweeps them from the schedule their re-scoring fills (``Outcome.sweep_at``)
and judges their audiences again when the definitions differ (``count_segments``), so
nothing is left undone. What such a message can still do is re-send the changes it caused
(a crash may have lost them after their state was stored): a change names its cause (the
request and the message's partition and offset), so while the worker reads what its
partitions held at the assignment it finds the customers whose last change that message
caused (:func:`last_control_causes`) and sends those changes again.

>>> batches = ControlBatches()
>>> n = batches.add(3, [b"c-1", b"c-2"])
>>> batches.forget(b"c-1"); batches.pending()
1
>>> batches.take(3, n), batches.take(3, n)
([b'c-2'], None)
>>> m = batches.add(1, [b"c-3"]); batches.drop_partitions({1}); batches.take(1, m) is None
True
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from stream_app.core.state import CustomerState

#: Triggers of the changes control messages cause (re-scoring, sweeps, audience passes).
CONTROL_TRIGGERS = frozenset({"model_update", "inactivity", "definitions"})


class ControlBatches:
    """The customers of the control messages this worker queued and has not processed yet,
    per partition and batch number (per process: :attr:`worker` tells this process's
    messages from those of another worker, or of this one before a restart)."""

    __slots__ = ("_batches", "_next", "worker")

    def __init__(self) -> None:
        #: Names this process in its messages (random: no two processes share one).
        self.worker = os.urandom(8).hex()
        self._next = 0
        self._batches: dict[int, dict[int, list[bytes]]] = {}

    def add(self, partition: int, keys: list[bytes]) -> int:
        """Hold ``keys`` (customers of ``partition``) for a message; its batch number."""
        self._next += 1
        self._batches.setdefault(partition, {})[self._next] = keys
        return self._next

    def take(self, partition: int, batch: int) -> list[bytes] | None:
        """The customers of a message of this process (None: not held, or taken already)."""
        held = self._batches.get(partition)
        return None if held is None else held.pop(batch, None)

    def forget(self, key: bytes) -> None:
        """Drop customer ``key`` from every pending batch (erased, or consent withdrawn)."""
        for held in self._batches.values():
            for keys in held.values():
                if key in keys:
                    keys.remove(key)

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the batches of partitions revoked from this worker (the next owner
        re-judges their customers itself)."""
        for partition in partitions:
            self._batches.pop(partition, None)

    def pending(self) -> int:
        """Customers in batches not processed yet."""
        return sum(len(keys) for held in self._batches.values() for keys in held.values())


def last_control_causes(stored: bytes) -> Iterator[int]:
    """The cause digests of a stored customer's last segment change and last audience
    changes, when a control message caused them (else nothing)."""
    state = CustomerState.from_bytes(stored)
    if state.last_change is not None and state.last_change[1] in CONTROL_TRIGGERS:
        yield int(state.last_change[0])
    if state.last_audience is not None and state.last_audience[1] in CONTROL_TRIGGERS:
        yield int(state.last_audience[0])
