"""Fully convolutional DenseNet (Jegou et al. 2017; QuickNAT family, Roy et al. 2018) with SE blocks."""

from __future__ import annotations

import torch
from monai.networks.blocks import ADN
from monai.networks.layers.factories import Conv
from torch import nn

from .base import SEEncoderDecoder

__all__ = ["DenseBlock", "FCDenseNet"]


class DenseBlock(nn.Module):
    """A dense block as in QuickNAT: three pre-activated convolutions, each fed with the concatenation of the block's
    input and every earlier convolution's output.

    Layers: norm-act-conv ``k x k`` (``C_in -> F``), norm-act-conv ``k x k`` (``C_in + F -> F``), norm-act-conv
    ``1 x 1`` (``C_in + 2F -> F``); the last output is the block's output.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: input channels ``C_in``.
        out_channels: growth and output channels ``F``.
        kernel_size: kernel size of the first two convolutions ("same" padding).
        norm: normalisation (MONAI ``Norm`` factory).
        act: activation (MONAI ``Act`` factory).
        dropout: dropout probability after each activation, or ``None``.

    Shapes:
        input ``(N, C_in, *spatial)``, output ``(N, F, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 5,
        norm: str | tuple = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]

        def layer(c_in: int, k: int) -> nn.Sequential:
            return nn.Sequential(
                ADN(ordering="NAD", in_channels=c_in, act=act, norm=norm, norm_dim=spatial_dims, dropout=dropout),
                conv(c_in, out_channels, kernel_size=k, padding=k // 2),
            )

        self.layer1 = layer(in_channels, kernel_size)
        self.layer2 = layer(in_channels + out_channels, kernel_size)
        self.layer3 = layer(in_channels + 2 * out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o1 = self.layer1(x)
        o2 = self.layer2(torch.cat([x, o1], dim=1))
        return self.layer3(torch.cat([x, o1, o2], dim=1))


class FCDenseNet(SEEncoderDecoder):
    """Fully convolutional DenseNet with an optional SE block after every encoder and decoder block.

    Every encoder, bottleneck and decoder block is a :class:`DenseBlock` (``features`` is its growth and output);
    as in QuickNAT (the authors' DenseNet family), the decoder upsamples by max-unpooling with the encoder's pooling
    indices and concatenates the skip. Arguments and shapes: :class:`SEEncoderDecoder`.
    """

    upsampling = "unpool"

    @staticmethod
    def make_block(spatial_dims, in_channels, out_channels, kernel_size, norm, act, dropout) -> nn.Module:
        return DenseBlock(spatial_dims, in_channels, out_channels, kernel_size, norm, act, dropout)
