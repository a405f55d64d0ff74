"""pipeline.distributed without a process group: what a lost peer turns into (the two-rank runs are in
test_vae_ddp.py and test_gan_ddp.py)."""

from __future__ import annotations

import pytest
import torch

from pipeline.distributed import DistContext, PeerLostError, peer_loss_explained

GLOO_LOST = "[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:51591. This is typically..."


def test_a_collective_that_lost_its_peer_becomes_one_line_with_the_transport_s_words() -> None:
    rank1 = DistContext(1, 2, torch.device("cpu"))
    want = r"^train_vae: another process .* rank 1 stops too; .* \(\[gloo.*closed by peer \[127.0.0.1\]:51591. This"
    with pytest.raises(PeerLostError, match=want), peer_loss_explained("train_vae", rank1):
        raise RuntimeError(GLOO_LOST + "\nmore lines")


@pytest.mark.parametrize(("world_size", "message"), [(2, "mat1 and mat2 shapes cannot be multiplied"), (1, GLOO_LOST)])
def test_other_errors_and_a_single_process_s_errors_pass_unchanged(world_size: int, message: str) -> None:
    context = DistContext(0, world_size, torch.device("cpu"))
    with pytest.raises(RuntimeError) as raised, peer_loss_explained("train_vae", context):
        raise RuntimeError(message)
    assert type(raised.value) is RuntimeError and str(raised.value) == message
