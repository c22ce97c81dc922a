"""DiffeoInvariantNet."""

import torch

from bundle.networks import DiffeoInvariantNet


def test_embedding_is_unit_norm_with_the_configured_size():
    net = DiffeoInvariantNet(embedding_dim=32, channels=(8, 16, 16, 32)).eval()
    z = net(torch.rand(5, 3, 64, 64))
    assert z.shape == (5, 32)
    assert torch.allclose(z.norm(dim=1), torch.ones(5), atol=1e-5)


def test_single_channel_fluorescence_input_is_supported():
    net = DiffeoInvariantNet(in_channels=1, embedding_dim=16, channels=(8, 8, 16, 16)).eval()
    assert net(torch.rand(2, 1, 64, 64)).shape == (2, 16)


def test_the_decoder_reconstructs_at_input_size_only_when_asked_for():
    net = DiffeoInvariantNet(embedding_dim=16, channels=(8, 8, 16, 16), reconstruction=True)
    z, recon = net.embed_and_reconstruct(torch.rand(2, 3, 64, 64))
    assert z.shape == (2, 16) and recon.shape == (2, 3, 64, 64)
    assert DiffeoInvariantNet(channels=(8, 8, 16, 16)).decoder is None
