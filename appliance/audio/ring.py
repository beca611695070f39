"""A preallocated int16 ring buffer shared by one producer and one consumer thread.

One side is a PortAudio callback thread, the other the asyncio loop. There is no lock:
every index has exactly one writer, and each side publishes its index only after it has
finished touching the samples (the GIL orders these stores for the other thread).

Positions are absolute sample counts that only grow (Python ints do not wrap):

- ``_write``: one past the last sample written. Written by the producer only.
- ``_writing_to``: where the producer's copy in progress will end; published *before* the
  copy so that a drop-oldest reader can tell which samples it may have read torn.
- ``_read``: the next sample to read. Written by the consumer only.
- ``_discard``: samples before it are thrown away. Written only by the thread that calls
  :meth:`clear` (the loop: the producer side of the speaker ring, the consumer side of the
  microphone ring).

Overflow policy, chosen per direction:

- ``drop_oldest=True`` (microphone): a write always succeeds; when the consumer is behind,
  the oldest samples are overwritten. The consumer notices at its next read, skips what was
  lost and counts it in :attr:`dropped`.
- ``drop_oldest=False`` (speaker): a write stores what fits and returns how much that was;
  the caller keeps the rest (the speaker never drops response audio).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.int16]
Pcm = Samples | bytes
"""Interleaved int16 samples: an array, or their bytes in native order as PortAudio reads them.

A microphone takes PortAudio's bytes as they come: wrapping each period in an array would
cost its device thread more than the copy into the ring does.
"""


class RingBuffer:
    """Fixed-capacity int16 FIFO for one producer thread and one consumer thread."""

    __slots__ = (
        "_buf",
        "_bytes",
        "_discard",
        "_dropped",
        "_read",
        "_write",
        "_writing_to",
        "capacity",
        "drop_oldest",
        "overruns",
        "underruns",
    )

    def __init__(self, capacity: int, *, drop_oldest: bool = False) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.drop_oldest = drop_oldest
        self._buf: Samples = np.zeros(capacity, dtype=np.int16)
        self._bytes = self._buf.data.cast("B")  # the same memory, copied into bytewise
        self._write = 0
        self._writing_to = 0
        self._read = 0
        self._discard = 0
        self._dropped = 0  # consumer-owned: samples skipped because they were overwritten
        self.overruns = 0  # producer-owned: writes that lost old audio or did not fit whole
        self.underruns = 0  # consumer-owned: reads that found fewer samples than asked for

    # ---- either side -------------------------------------------------------------------

    @property
    def write_position(self) -> int:
        """Samples ever written (the position the next written sample will take)."""
        return self._write

    @property
    def read_position(self) -> int:
        """Position of the next sample the consumer will read (skipped samples included)."""
        return self._read

    def available(self) -> int:
        """Samples a read would return now (never more than the capacity)."""
        unread = self._write - max(self._read, self._discard)
        return min(unread, self.capacity) if unread > 0 else 0

    def free(self) -> int:
        """Samples a write could store now without losing anything.

        Cleared samples count as used until the consumer has skipped them, so that a write
        never lands on samples the consumer may be copying at this moment.
        """
        return max(0, self.capacity - (self._write - self._read))

    @property
    def dropped(self) -> int:
        """Samples lost to drop-oldest overflow, including losses the reader has not seen yet."""
        pending = self._write - max(self._read, self._discard) - self.capacity
        return self._dropped + (pending if pending > 0 else 0)

    # ---- producer ----------------------------------------------------------------------

    def write(self, samples: Pcm) -> int:
        """Append samples; return how many were stored (all of them when drop_oldest)."""
        data = samples if isinstance(samples, bytes) else samples.data.cast("B")
        count = len(data) >> 1
        if count == 0:
            return 0
        capacity = self.capacity
        start = self._write
        if self.drop_oldest:
            if start + count - max(self._read, self._discard) > capacity:
                self.overruns += 1
            if count > capacity:  # only the newest `capacity` samples can survive
                data = data[2 * (count - capacity) :]
                start += count - capacity
            stored = len(data) >> 1
            end = self._write + count
        else:
            room = capacity - (start - self._read)
            if count > room:
                self.overruns += 1
                if room <= 0:
                    return 0
                data = data[: 2 * room]
                count = room
            stored = count
            end = start + count
        self._writing_to = end
        offset = start % capacity
        first = capacity - offset
        if stored <= first:
            self._bytes[2 * offset : 2 * (offset + stored)] = data
        else:
            self._bytes[2 * offset :] = data[: 2 * first]
            self._bytes[: 2 * (stored - first)] = data[2 * first :]
        self._write = end
        return count

    # ---- consumer ----------------------------------------------------------------------

    def read_into(self, out: Samples) -> int:
        """Fill ``out`` from the oldest unread samples; return how many were real audio.

        The rest of ``out`` is zeroed (silence). Allocates nothing when nothing was lost.
        """
        wanted = len(out)
        capacity = self.capacity
        end = self._write
        start = max(self._read, self._discard)
        unread = end - start
        if unread > capacity:  # drop_oldest: the oldest samples were overwritten
            self._dropped += unread - capacity
            start = end - capacity
            unread = capacity
        count = unread if unread < wanted else wanted
        if count > 0:
            self._copy_out(start, count, out)
            if self.drop_oldest:
                # Samples the producer overwrote (or began to) while we copied are torn.
                torn = self._writing_to - capacity - start
                if torn > 0:
                    torn = min(torn, count)
                    out[: count - torn] = out[torn:count].copy()
                    self._dropped += torn
                    start += torn
                    count -= torn
        if count < wanted:
            out[count:] = 0
            self.underruns += 1
        self._read = start + count
        return count

    def _copy_out(self, start: int, count: int, out: Samples) -> None:
        capacity = self.capacity
        offset = start % capacity
        first = capacity - offset
        if count <= first:
            out[:count] = self._buf[offset : offset + count]
        else:
            out[:first] = self._buf[offset:]
            out[first:count] = self._buf[: count - first]

    # ---- the loop (see the class docstring for which side that is) --------------------

    def clear(self) -> int:
        """Discard every sample written so far, at once; return the discard position.

        The next read returns only samples written after this call. Safe from either side
        as long as only one thread ever calls it: the consumer for a drop-oldest ring (it
        settles the overflow count first), the producer otherwise.
        """
        end = self._write
        if self.drop_oldest:
            lost = end - max(self._read, self._discard) - self.capacity
            if lost > 0:
                self._dropped += lost
        self._discard = end
        return end
