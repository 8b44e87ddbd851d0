"""The encoder/decoder skeleton shared by the paper's three F-CNNs, with SE after every encoder and decoder block.

Each network (``unet.py``, ``sdnet.py``, ``densenet.py``) only says which block it uses and how its decoder upsamples;
the skeleton below places the blocks, the SE modules, pooling, upsampling, skip concatenation and the classifier the
same way for all three, as in Fig. 1(a) of the paper.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import nn

from .se import get_se_block

__all__ = ["MIN_SIZE", "NUM_LEVELS", "SEEncoderDecoder", "max_unpool"]

# Four encoder blocks, each followed by 2x max pooling: the paper's depth for all three networks.
NUM_LEVELS = 4
# Smallest spatial size that survives four poolings with at least one voxel left in the bottleneck.
MIN_SIZE = 2**NUM_LEVELS


def max_unpool(x: torch.Tensor, indices: torch.Tensor, output_size: list[int]) -> torch.Tensor:
    """Max-unpooling for any number of spatial dimensions, written with ``scatter``.

    ``nn.MaxUnpool2d`` fails ``torch.jit.script`` and ``torch.jit.trace`` under torch 2.13; ``scatter`` works for
    script, trace and ``torch.export``, in 2D and 3D alike.

    Args:
        x: pooled values ``(N, C, *pooled_spatial)``.
        indices: the flat indices returned by max pooling, same shape as ``x``.
        output_size: spatial size of the unpooled output (the encoder feature map's size, so odd sizes come back).

    Returns:
        ``(N, C, *output_size)``: zeros except at the positions the maxima came from.
    """
    n, c = x.shape[0], x.shape[1]
    numel = 1
    for s in output_size:
        numel *= s
    out = torch.zeros([n, c, numel], dtype=x.dtype, device=x.device)
    out = out.scatter(2, indices.flatten(2), x.flatten(2))
    return out.view([n, c] + list(output_size))  # noqa: RUF005 (TorchScript cannot star-unpack a list)


class SEEncoderDecoder(nn.Module):
    """Four encoder blocks, a bottleneck, four decoder blocks and a 1x1 classifier; an SE block after every encoder
    and every decoder block (a separate module each, no sharing).

    Encoder block ``i`` maps its input to ``features`` channels; its SE output is both the skip connection and the
    input of a 2x max pooling. Decoder block ``i`` takes the upsampled features concatenated with the matching skip
    (``2 * features`` channels) and maps them to ``features`` channels, followed by its SE block.

    A network (``UNet``, ``SDNet``, ``FCDenseNet``) subclasses this skeleton and sets two things: :meth:`make_block`
    (its encoder/bottleneck/decoder block) and ``upsampling``: ``"unpool"`` (max-unpooling with the encoder's pooling
    indices, SD-Net and the QuickNAT family of DenseNets) or ``"interp"`` (parameter-free linear interpolation to the
    skip's size, U-Net). Because every upsampling returns to the exact size of its skip, any spatial size of at least
    16 (``MIN_SIZE``) in every dimension is accepted, odd sizes included; nothing is padded or cropped. A smaller input
    raises ``ValueError``.

    Args:
        spatial_dims: number of spatial dimensions, 2 (the paper) or 3.
        in_channels: number of input channels.
        out_channels: number of output classes (the classifier's channels).
        features: channels of every block's output (the paper: 64).
        kernel_size: kernel size of the blocks' spatial convolutions (the paper: 5).
        se: SE variant after every encoder and decoder block: ``"none"``, ``"cse"``, ``"sse"`` or ``"scse"``.
        se_reduction: cSE reduction ratio ``r`` (the paper: 2).
        se_mode: scSE combination, ``"sum"`` (the paper) or ``"max"`` (the authors' code).
        norm: normalisation, as MONAI's ``Norm`` factory takes it (name or ``(name, kwargs)``); default batch norm.
        act: activation, as MONAI's ``Act`` factory takes it; default ReLU.
        dropout: dropout probability inside the blocks, or ``None``.

    Shapes:
        input ``(N, in_channels, *spatial)``, output logits ``(N, out_channels, *spatial)``.
    """

    upsampling: str = "interp"

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: int = 64,
        kernel_size: int = 5,
        se: str = "none",
        se_reduction: int = 2,
        se_mode: str = "sum",
        norm: str | tuple = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if self.upsampling not in ("unpool", "interp"):
            raise ValueError(f"upsampling must be 'unpool' or 'interp', got {self.upsampling!r}.")
        self.spatial_dims = spatial_dims
        self.num_levels = NUM_LEVELS
        self.min_size = MIN_SIZE
        self.upsample = self.upsampling  # an instance attribute, which TorchScript compiles into forward
        self.interp_mode = "bilinear" if spatial_dims == 2 else "trilinear"

        def block(in_ch: int) -> nn.Module:
            return self.make_block(spatial_dims, in_ch, features, kernel_size, norm, act, dropout)

        def stage(in_ch: int) -> nn.Sequential:
            return nn.Sequential(
                OrderedDict(
                    block=block(in_ch),
                    se=get_se_block(se, spatial_dims, features, r=se_reduction, mode=se_mode),
                )
            )

        self.encoders = nn.ModuleList([stage(in_channels if i == 0 else features) for i in range(NUM_LEVELS)])
        self.bottleneck = block(features)
        self.decoders = nn.ModuleList([stage(2 * features) for _ in range(NUM_LEVELS)])
        self.classifier = Conv[Conv.CONV, spatial_dims](features, out_channels, kernel_size=1)

    @staticmethod
    def make_block(
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        norm: str | tuple,
        act: str | tuple,
        dropout: float | None,
    ) -> nn.Module:
        """One encoder, bottleneck or decoder block ``(N, in_channels, *spatial) -> (N, out_channels, *spatial)``."""
        raise NotImplementedError

    def _pool(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.spatial_dims == 2:
            y, idx = F.max_pool2d_with_indices(x, kernel_size=2, stride=2)
        else:
            y, idx = F.max_pool3d_with_indices(x, kernel_size=2, stride=2)
        return [y, idx]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        if len(spatial) != self.spatial_dims or min(spatial) < self.min_size:
            raise ValueError(
                "expected input (N, C, *spatial) with "
                + str(self.spatial_dims)
                + " spatial dims of at least "
                + str(self.min_size)
                + ", got shape "
                + str(list(x.shape))
            )
        skips: list[torch.Tensor] = []
        indices: list[torch.Tensor] = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            pooled = self._pool(x)
            x = pooled[0]
            indices.append(pooled[1])
        x = self.bottleneck(x)
        for i, decoder in enumerate(self.decoders):
            level = self.num_levels - 1 - i
            skip = skips[level]
            size = skip.shape[2:]
            if self.upsample == "unpool":
                x = max_unpool(x, indices[level], size)
            else:
                x = F.interpolate(x, size=size, mode=self.interp_mode, align_corners=False)
            x = decoder(torch.cat([x, skip], dim=1))
        return self.classifier(x)
