"""Mix any number of int16 blocks into one, saturating instead of wrapping around.

Used by the playback thread every period: pull one block from each speaker's jitter
buffer, mix, write to the sound card. Buffers are allocated once.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

_Int16Array = npt.NDArray[np.int16]
_INT16_MIN = -32768
_INT16_MAX = 32767


class Mixer:
    """Sums blocks of ``samples`` int16 samples in int32 and clips the sum to int16.

    :meth:`mix` returns a view of the mixer's own output buffer, overwritten by the next
    call: write it to the device (or copy it) before mixing again.
    """

    def __init__(self, samples: int) -> None:
        if samples <= 0:
            raise ValueError("samples must be positive")
        self.samples = samples
        self._acc = np.zeros(samples, dtype=np.int32)
        self._out: _Int16Array = np.zeros(samples, dtype=np.int16)

    def mix(self, blocks: Iterable[_Int16Array | None]) -> _Int16Array:
        """The saturated sum of ``blocks``; ``None`` entries (idle streams) are skipped.

        No blocks, or only ``None``, give silence. Every block must hold ``samples``
        samples.
        """
        streams = [block for block in blocks if block is not None]
        for block in streams:
            self._check(block)
        if not streams:
            self._out.fill(0)
        elif len(streams) == 1:
            # One stream cannot overflow: a straight copy, no int32 round trip.
            np.copyto(self._out, streams[0])
        else:
            np.copyto(self._acc, streams[0])
            for block in streams[1:]:
                np.add(self._acc, block, out=self._acc)
            # Two ufuncs, not np.clip: its Python wrappers cost more than the sum itself.
            np.minimum(self._acc, _INT16_MAX, out=self._acc)
            np.maximum(self._acc, _INT16_MIN, out=self._acc)
            np.copyto(self._out, self._acc, casting="unsafe")
        return self._out

    def _check(self, block: _Int16Array) -> None:
        if block.shape != (self.samples,) or block.dtype != np.int16:
            raise ValueError(
                f"expected {self.samples} int16 samples, got {block.dtype} {block.shape}"
            )
