"""DiffeoInvariantNet: an encoder whose embedding of a cell does not change under realistic diffeomorphisms.

Trained contrastively (``bundle.losses.MultiViewNTXentLoss``) so that deformed views of one cell land together and
different cells apart. Each new cell is then matched to its nearest archetype by cosine similarity
(``bundle.match``).

Shapes: image (B, C, P, P) with P divisible by 2 ** len(strides) (P = 64 by default) -> embedding (B, D), unit L2 norm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit


class DiffeoInvariantNet(nn.Module):
    """Residual CNN encoder (MONAI ``ResidualUnit`` blocks), global average pooling and a projection head.

    Global average pooling is what makes the embedding cheap to make rotation-robust: the training views supply the
    invariance, and pooling removes the need to learn it for every position. The optional decoder reconstructs the
    input view from the last feature map; it regularises the features and is used only in training.

    Args:
        in_channels: image channels (3 for H&E, 1 for a single fluorescence channel).
        channels: feature channels of each stage.
        strides: downsampling of each stage.
        embedding_dim: size D of the unit-norm embedding.
        reconstruction: build the decoder for the reconstruction loss.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2, 2),
        embedding_dim: int = 128,
        reconstruction: bool = False,
    ):
        super().__init__()
        self.in_channels = in_channels
        stages, c_in = [], in_channels
        for c_out, s in zip(channels, strides):
            stages.append(ResidualUnit(2, c_in, c_out, strides=s, subunits=2, norm="batch", act="relu"))
            c_in = c_out
        self.encoder = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.Linear(c_in, c_in), nn.ReLU(inplace=True), nn.Linear(c_in, embedding_dim))
        self.decoder = self._decoder(channels, strides, in_channels) if reconstruction else None

    @staticmethod
    def _decoder(channels, strides, out_channels) -> nn.Sequential:
        ups = []
        chans = list(channels[::-1]) + [channels[0]]
        for c_in, c_out, s in zip(chans[:-1], chans[1:], strides[::-1]):
            ups.append(Convolution(2, c_in, c_out, strides=s, kernel_size=3, is_transposed=True, norm="batch", act="relu"))
        ups.append(Convolution(2, chans[-1], out_channels, kernel_size=1, conv_only=True))
        return nn.Sequential(*ups)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) feature map -> (B, D) unit-norm embedding."""
        return F.normalize(self.head(features.mean(dim=(-2, -1))), dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, P, P) -> (B, D) unit-norm embedding."""
        # channels-last (NHWC) convolutions are faster on CPU (oneDNN)
        return self.embed(self.encoder(image.contiguous(memory_format=torch.channels_last)))

    def embed_and_reconstruct(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, P, P) -> embedding (B, D) and reconstruction (B, C, P, P); needs ``reconstruction=True``."""
        if self.decoder is None:
            raise RuntimeError("DiffeoInvariantNet was built without a decoder (reconstruction=False)")
        features = self.encoder(image)
        return self.embed(features), torch.sigmoid(self.decoder(features))
