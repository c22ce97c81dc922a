"""DiffeoMappingNet: a diffeomorphic registration network on one screen.

Direction conventions (stated once, used by the whole bundle):

* The **archetype** (an annotated cell from the bank) is the MOVING image; the **new cell** is the FIXED image.
* The network takes ONE tensor ``pair = torch.cat([archetype, cell], dim=1)`` of shape (B, 2C, P, P), P divisible by
  16 (64 by default). One tensor, because MONAI Label's ``BundleInferTask`` and the model zoo's ``verify_net_in_out``
  call a bundle's network with a single input.
* It predicts a stationary velocity field ``v`` (B, 2, P, P) in pixels (channel 0 rows, channel 1 columns) and
  integrates it by scaling and squaring (``bundle.fields.ScalingAndSquaring``, MONAI's ``DVF2DDF``) into
  ``phi = exp(v)``: the DDF that warps the archetype and its labels onto the cell, by MONAI's pull convention
  ``warped(p) = archetype(p + phi(p))``.
* The inverse map is ``exp(-v)``: it warps the cell onto the archetype. Both come from one backbone pass
  (``fields``); the flow of a smooth velocity field is a diffeomorphism, so labels do not tear or fold.

``forward`` returns ``phi`` only: it is the bundle's ``network_def`` output ("pred").
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.nets import LocalNet, VoxelMorphUNet

from ..fields import ScalingAndSquaring

__all__ = ["DiffeoMappingNet", "BACKBONES"]

BACKBONES = ("localnet", "voxelmorph")


class DiffeoMappingNet(nn.Module):
    """Velocity-field registration network: backbone -> v -> exp(v) (see the module docstring for directions).

    Args:
        in_channels: channels C of ONE image (3 for H&E); the network input has 2C channels.
        backbone: "localnet" (MONAI ``LocalNet``, 4 levels, multi-scale output averaged) or "voxelmorph" (MONAI
            ``VoxelMorphUNet``, 3 levels, small channels). Both end in a zero-initialised convolution, so an untrained
            network predicts the identity map.
        num_steps: scaling-and-squaring steps of the integration (v is divided by 2 ** num_steps first).
        max_velocity: if given, each velocity component is bounded softly to (-max_velocity, max_velocity) pixels by
            ``m * tanh(v / m)``; a guard against wild fields early in training. None: unbounded.
    """

    def __init__(self, in_channels: int = 3, backbone: str = "localnet", num_steps: int = 7, max_velocity: float | None = None):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
        if max_velocity is not None and max_velocity <= 0:
            raise ValueError(f"max_velocity must be positive or None, got {max_velocity}")
        self.in_channels = int(in_channels)
        self.backbone_name = backbone
        self.num_steps = int(num_steps)
        self.max_velocity = None if max_velocity is None else float(max_velocity)

        if backbone == "localnet":
            # out_kernel_initializer="zeros" zeroes the (bias-free) output convolutions: v = 0, phi = identity at init.
            self.backbone = LocalNet(
                spatial_dims=2,
                in_channels=2 * self.in_channels,
                out_channels=2,
                num_channel_initial=16,
                extract_levels=(0, 1, 2, 3),
                out_kernel_initializer="zeros",
                out_activation=None,
            )
            self.head: nn.Module = self.backbone.output_block
        else:
            # VoxelMorph(half_res=True) fails in 2-D, so the full-resolution UNet is used and integrated here. Its last
            # layer ("final_conv_out", 16 -> 2 channels, no activation) is already the velocity head: zero it.
            self.backbone = VoxelMorphUNet(
                spatial_dims=2,
                in_channels=2 * self.in_channels,
                unet_out_channels=16,
                channels=(16, 32, 32, 32, 32, 32),
                final_conv_channels=(16,),
            )
            self.head = self.backbone.net[-1].final_conv_out
            for p in self.head.parameters():
                nn.init.zeros_(p)

        self.integrate = ScalingAndSquaring(self.num_steps)

    def _check(self, pair: torch.Tensor) -> None:
        if pair.ndim != 4 or pair.shape[1] != 2 * self.in_channels:
            raise ValueError(
                f"expected pair (B, {2 * self.in_channels}, P, P) = cat([archetype, cell], 1), got {tuple(pair.shape)}"
            )

    def velocity(self, pair: torch.Tensor) -> torch.Tensor:
        """Stationary velocity field v (B, 2, P, P) in pixels of ``pair`` (B, 2C, P, P)."""
        self._check(pair)
        # channels-last (NHWC) convolutions are faster on CPU (oneDNN)
        v = self.backbone(pair.contiguous(memory_format=torch.channels_last)).contiguous()
        if self.max_velocity is not None:
            v = self.max_velocity * torch.tanh(v / self.max_velocity)
        return v

    def exp(self, v: torch.Tensor) -> torch.Tensor:
        """DDF (B, 2, P, P) of the time-1 flow of velocity ``v`` (B, 2, P, P)."""
        return self.integrate(v)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        """phi = exp(v) (B, 2, P, P): warps the archetype onto the cell, ``warped(p) = archetype(p + phi(p))``."""
        return self.exp(self.velocity(pair))

    def fields(self, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi, phi_inverse) = (exp(v), exp(-v)), each (B, 2, P, P), from one backbone pass.

        phi warps the archetype onto the cell; phi_inverse warps the cell onto the archetype.
        """
        v = self.velocity(pair)
        # One integration of the stacked (v, -v): half the Python overhead of two calls, same arithmetic.
        both = self.exp(torch.cat([v, -v], dim=0))
        return both[: v.shape[0]], both[v.shape[0] :]
