"""The mixer: saturating sums of int16 blocks, any number of streams."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from appliance.audio import tone
from appliance.audio.mixer import Mixer

N = 960


def block(value: int) -> np.ndarray:
    return np.full(N, value, dtype=np.int16)


def test_no_streams_is_silence() -> None:
    mixer = Mixer(N)
    assert not mixer.mix([]).any()
    assert not mixer.mix([None, None]).any()


def test_one_stream_passes_through() -> None:
    a = tone.sine(440, N)
    assert np.array_equal(Mixer(N).mix([a]), a)


def test_streams_add() -> None:
    a, b = tone.sine(440, N, amplitude=0.25), tone.sine(1000, N, amplitude=0.25)
    out = Mixer(N).mix([a, None, b])
    assert np.array_equal(out, a.astype(np.int32) + b)


def test_sums_saturate_instead_of_wrapping() -> None:
    mixer = Mixer(N)
    assert (mixer.mix([block(30_000), block(30_000)]) == 32_767).all()
    assert (mixer.mix([block(-30_000), block(-30_000), block(-30_000)]) == -32_768).all()
    assert (mixer.mix([block(30_000), block(30_000), block(-30_000)]) == 30_000).all()


def test_the_output_buffer_is_reused() -> None:
    mixer = Mixer(N)
    first = mixer.mix([block(1)])
    second = mixer.mix([block(2), block(3)])
    assert first is second
    assert (second == 5).all()


def test_wrong_blocks_are_refused() -> None:
    with pytest.raises(ValueError, match="960 int16"):
        Mixer(N).mix([np.zeros(480, np.int16)])
    with pytest.raises(ValueError, match="960 int16"):
        Mixer(N).mix([np.zeros(N, np.float32)])  # type: ignore[list-item]


@given(st.lists(hnp.arrays(np.int16, N), max_size=6))
def test_mix_is_the_clipped_sum(blocks: list[np.ndarray]) -> None:
    expected = np.clip(np.sum([b.astype(np.int64) for b in blocks], axis=0), -32_768, 32_767)
    assert np.array_equal(Mixer(N).mix(blocks), np.broadcast_to(expected, (N,)))
