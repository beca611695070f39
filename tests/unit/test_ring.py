"""RingBuffer: order, counts and both overflow policies, under any interleaving."""

from __future__ import annotations

import gc
import sys
import threading
import tracemalloc
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.audio.ring import RingBuffer, Samples


def ramp(start: int, count: int) -> Samples:
    """Samples whose values are their positions (+1, so silence is never mistaken for data)."""
    return (np.arange(start, start + count) % 32000 + 1).astype(np.int16)


def test_reads_back_what_was_written_across_the_wrap() -> None:
    ring = RingBuffer(8)
    out = np.empty(5, dtype=np.int16)
    assert ring.write(ramp(0, 6)) == 6
    assert ring.read_into(out) == 5
    assert list(out) == [1, 2, 3, 4, 5]
    assert ring.write(ramp(6, 6)) == 6  # wraps around the end of the array
    got = np.empty(7, dtype=np.int16)
    assert ring.read_into(got) == 7
    assert list(got) == [6, 7, 8, 9, 10, 11, 12]
    assert ring.available() == 0


def test_a_short_read_is_padded_with_silence_and_counted() -> None:
    ring = RingBuffer(8)
    ring.write(ramp(0, 3))
    out = np.full(5, 99, dtype=np.int16)
    assert ring.read_into(out) == 3
    assert list(out) == [1, 2, 3, 0, 0]
    assert ring.underruns == 1
    assert ring.read_into(out) == 0
    assert ring.underruns == 2


def test_speaker_policy_stores_what_fits_and_keeps_the_rest_to_the_caller() -> None:
    ring = RingBuffer(8, drop_oldest=False)
    assert ring.write(ramp(0, 5)) == 5
    assert ring.free() == 3
    assert ring.write(ramp(5, 5)) == 3  # the caller keeps the last two
    assert ring.overruns == 1
    assert ring.dropped == 0
    out = np.empty(8, dtype=np.int16)
    ring.read_into(out)
    assert list(out) == list(ramp(0, 8))


def test_microphone_policy_drops_the_oldest_and_counts_it() -> None:
    ring = RingBuffer(8, drop_oldest=True)
    ring.write(ramp(0, 6))
    ring.write(ramp(6, 6))  # 4 too many
    assert ring.overruns == 1
    assert ring.dropped == 4
    assert ring.available() == 8
    out = np.empty(8, dtype=np.int16)
    assert ring.read_into(out) == 8
    assert list(out) == list(ramp(4, 8))
    assert ring.dropped == 4


def test_a_write_longer_than_the_ring_keeps_its_newest_samples() -> None:
    ring = RingBuffer(8, drop_oldest=True)
    ring.write(ramp(0, 20))
    out = np.empty(8, dtype=np.int16)
    assert ring.read_into(out) == 8
    assert list(out) == list(ramp(12, 8))
    assert ring.dropped == 12


@pytest.mark.parametrize("drop_oldest", [False, True])
def test_clear_takes_effect_at_once(drop_oldest: bool) -> None:
    ring = RingBuffer(16, drop_oldest=drop_oldest)
    ring.write(ramp(0, 10))
    ring.clear()
    assert ring.available() == 0
    out = np.empty(4, dtype=np.int16)
    assert ring.read_into(out) == 0
    assert list(out) == [0, 0, 0, 0]
    ring.write(ramp(10, 3))
    assert ring.read_into(out) == 3
    assert list(out[:3]) == [11, 12, 13]


def test_cleared_space_is_reused_only_after_the_reader_skipped_it() -> None:
    # The reader may be copying those samples right now; a write must not land on them.
    ring = RingBuffer(8)
    ring.write(ramp(0, 8))
    ring.clear()
    assert ring.free() == 0
    ring.read_into(np.empty(1, dtype=np.int16))
    assert ring.free() == 8


def test_steady_state_keeps_no_memory() -> None:
    ring = RingBuffer(4800, drop_oldest=True)
    frame = ramp(0, 480)
    out = np.empty(480, dtype=np.int16)
    tracemalloc.start(32)
    try:
        for _ in range(1000):  # the indices now hold ints allocated while tracing
            ring.write(frame)
            ring.read_into(out)
        before = ring_memory_of_this_test(collected_snapshot())
        for _ in range(5000):
            ring.write(frame)
            ring.read_into(out)
        after = ring_memory_of_this_test(collected_snapshot())
    finally:
        tracemalloc.stop()
    assert sum(stat.size_diff for stat in after.compare_to(before, "filename")) == 0


def collected_snapshot() -> tracemalloc.Snapshot:
    """A snapshot after a full collection, which also empties CPython's free lists.

    A tuple the ring made and freed waits in the tuple free list, still traced to ring.py,
    until a full collection empties the list. Any thread can set one off (an earlier test's
    threads allocate), so without this a snapshot may or may not count it (seen: 56 bytes).
    """
    gc.collect()
    return tracemalloc.take_snapshot()


def ring_memory_of_this_test(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    """Blocks ring.py allocated on behalf of this test.

    Other threads of the test process (a PortAudio callback of an earlier test's stream
    that is still closing) may run ring.py too; their stacks do not pass through this file.
    """
    from_this_test = snapshot.filter_traces([tracemalloc.Filter(True, __file__, all_frames=True)])
    return from_this_test.filter_traces([tracemalloc.Filter(True, "*appliance/audio/ring.py")])


# ---- model-based: any sequence of operations matches a plain deque ------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 40)),
        st.tuples(st.just("read"), st.integers(0, 40)),
        st.tuples(st.just("clear"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=operations, capacity=st.integers(1, 24), drop_oldest=st.booleans(), as_bytes=st.booleans()
)
def test_any_sequence_of_operations_keeps_order_and_counts(
    ops: list[tuple[str, int]], capacity: int, drop_oldest: bool, as_bytes: bool
) -> None:
    """Writes take arrays, or their bytes as PortAudio reads them (``as_bytes``)."""
    ring = RingBuffer(capacity, drop_oldest=drop_oldest)
    model: deque[int] = deque()
    ghost = 0  # cleared samples that still occupy space until the reader skips them
    dropped = overruns = underruns = 0
    written = 0
    for op, n in ops:
        if op == "write":
            samples = ramp(written, n)
            if drop_oldest:
                if len(model) + n > capacity and n:
                    overruns += 1
                model.extend(int(v) for v in samples)
                while len(model) > capacity:
                    model.popleft()
                    dropped += 1
                assert ring.write(samples.tobytes() if as_bytes else samples) == n
                written += n
            else:
                room = capacity - len(model) - ghost
                stored = min(n, max(room, 0))
                if n > room and n:
                    overruns += 1
                model.extend(int(v) for v in samples[:stored])
                assert ring.write(samples.tobytes() if as_bytes else samples) == stored
                written += stored
        elif op == "read":
            out = np.full(n, -1, dtype=np.int16)
            expected = [model.popleft() for _ in range(min(n, len(model)))]
            ghost = 0
            if len(expected) < n:
                underruns += 1
            count = ring.read_into(out)
            assert count == len(expected)
            assert list(out[:count]) == expected
            assert not out[count:].any()
        else:
            ghost = 0 if drop_oldest else len(model) + ghost
            model.clear()
            ring.clear()
        assert ring.available() == len(model)
        assert ring.dropped == dropped
        assert ring.overruns == overruns
        assert ring.underruns == underruns
        if not drop_oldest:
            assert ring.free() == capacity - len(model) - ghost


# ---- a producer write landing in the middle of a read (drop-oldest) ------------------------


class InterleavedRing(RingBuffer):
    """Runs scheduled producer writes between the reader's bookkeeping and its copy."""

    __slots__ = ("during_copy",)

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity, drop_oldest=True)
        self.during_copy: list[Samples] = []

    def _copy_out(self, start: int, count: int, out: Samples) -> None:
        while self.during_copy:
            self.write(self.during_copy.pop(0))
        super()._copy_out(start, count, out)


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(2, 32),
    steps=st.lists(
        st.tuples(st.integers(0, 50), st.lists(st.integers(0, 50), max_size=3), st.integers(1, 50)),
        max_size=30,
    ),
)
def test_reads_racing_writes_never_return_torn_or_reordered_audio(
    capacity: int, steps: list[tuple[int, list[int], int]]
) -> None:
    ring = InterleavedRing(capacity)
    written = 0
    received: list[int] = []
    for before, during, wanted in steps:
        ring.write(ramp(written, before))
        written += before
        for size in during:
            ring.during_copy.append(ramp(written, size))
            written += size
        out = np.empty(wanted, dtype=np.int16)
        count = ring.read_into(out)
        while ring.during_copy:  # nothing to copy: the producer writes after the read
            ring.write(ring.during_copy.pop(0))
        chunk = [int(v) for v in out[:count]]
        # A read returns consecutive samples, each the value written at its position.
        assert chunk == list(range(chunk[0], chunk[0] + count)) if chunk else True
        received += chunk
    assert received == sorted(set(received))  # in order, nothing twice
    assert len(received) + ring.dropped + ring.available() == written


# ---- real threads ----------------------------------------------------------------------


@pytest.fixture
def busy_switching():
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    yield
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("busy_switching")
@pytest.mark.parametrize("drop_oldest", [False, True])
def test_two_threads_keep_order_and_counts(drop_oldest: bool) -> None:
    total = 30000
    ring = RingBuffer(500, drop_oldest=drop_oldest)
    done = threading.Event()

    def produce() -> None:
        position = 0
        while position < total:
            chunk = ramp(position, min(97, total - position))
            position += ring.write(chunk)  # the speaker policy may store only part
        done.set()

    received: list[Samples] = []
    out = np.empty(113, dtype=np.int16)
    producer = threading.Thread(target=produce)
    producer.start()
    while not done.is_set() or ring.available():
        count = ring.read_into(out)
        received.append(out[:count].copy())
    producer.join()
    values = np.concatenate(received).astype(np.int64)
    assert np.all(np.diff(values) >= 1)  # in order, nothing twice
    if drop_oldest:
        assert len(values) + ring.dropped == total
    else:
        assert list(values) == list(range(1, total + 1))
        assert ring.dropped == 0
