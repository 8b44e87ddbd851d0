"""U-Net (Ronneberger et al. 2015) with SE blocks, as configured in the scSE paper."""

from __future__ import annotations

from monai.networks.blocks import Convolution
from torch import nn

from .base import SEEncoderDecoder

__all__ = ["ConvBlock", "UNet"]


class ConvBlock(nn.Sequential):
    """``num_convs`` convolutions, each followed by normalisation and activation (MONAI's ``Convolution``, "NDA").

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: input channels.
        out_channels: output channels of every convolution.
        kernel_size: convolution kernel size ("same" padding).
        num_convs: number of convolutions.
        norm: normalisation, as MONAI's ``Norm`` factory takes it (name or ``(name, kwargs)``).
        act: activation, as MONAI's ``Act`` factory takes it.
        dropout: dropout probability after each normalisation, or ``None``.

    Shapes:
        input ``(N, in_channels, *spatial)``, output ``(N, out_channels, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 5,
        num_convs: int = 2,
        norm: str | tuple = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
        dropout: float | None = None,
    ) -> None:
        super().__init__(
            *[
                Convolution(
                    spatial_dims,
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    kernel_size=kernel_size,
                    norm=norm,
                    act=act,
                    dropout=dropout,
                )
                for i in range(num_convs)
            ]
        )


class UNet(SEEncoderDecoder):
    """U-Net with an optional SE block after every encoder and decoder block.

    Every block is two ``kernel_size`` convolutions with normalisation and activation; the decoder upsamples by
    parameter-free linear interpolation to the skip's size and concatenates the skip. With the defaults (64 filters,
    5x5 kernels, batch norm) the plain 2D U-Net for 28 classes has 2,157,276 parameters and scSE adds 34,056 (1.6%),
    the paper's "about 2.1e6" and "3.3e4 (1.5%)". Arguments and shapes: :class:`SEEncoderDecoder`.
    """

    upsampling = "interp"

    @staticmethod
    def make_block(spatial_dims, in_channels, out_channels, kernel_size, norm, act, dropout) -> nn.Module:
        return ConvBlock(spatial_dims, in_channels, out_channels, kernel_size, 2, norm, act, dropout)
