"""The one seed helper: named streams that never coincide across seeds, names or indices."""

from __future__ import annotations

import itertools

import pytest
import torch

from pipeline.seeds import stream_seed, torch_generator


def test_streams_differ_across_seeds_names_and_indices() -> None:
    """`seed + k` made seed 0's stream 1 equal seed 1's stream 0; named streams do not."""
    seeds = [stream_seed(s, name, i) for s, name, i in itertools.product(range(20), ("vae", "gan"), range(20))]
    assert len(set(seeds)) == len(seeds)
    assert stream_seed(0, "a", 1) != stream_seed(1, "a", 0)
    assert stream_seed(0, "a", 1) != stream_seed(0, "a1") != stream_seed(0, 1, "a")
    assert all(0 <= s < 2**63 for s in seeds)


def test_streams_are_reproducible_and_independent() -> None:
    first = torch.randn(1000, generator=torch_generator("cpu", 0, "vae", "batches"))
    again = torch.randn(1000, generator=torch_generator("cpu", 0, "vae", "batches"))
    other = torch.randn(1000, generator=torch_generator("cpu", 0, "vae", "noise"))
    assert torch.equal(first, again)
    assert abs(torch.corrcoef(torch.stack([first, other]))[0, 1]) < 0.1


@pytest.mark.parametrize("bad", [-1, 1.5, None, True])
def test_bad_stream_names_are_refused(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        stream_seed(0, "x", bad)
