"""SD-Net (SkipDeconv-Net, Roy et al. MICCAI 2017) with SE blocks, as configured in the scSE paper."""

from __future__ import annotations

from functools import partial

from .base import SEEncoderDecoder
from .unet import ConvBlock

__all__ = ["SDNet"]


class SDNet(SEEncoderDecoder):
    """SD-Net with an optional SE block after every encoder and decoder block.

    As in SegNet and SD-Net, the decoder upsamples by max-unpooling with the pooling indices of the matching encoder
    block, then concatenates that block's output (the skip) and applies one convolution with normalisation and
    activation. Every block is a single ``kernel_size`` convolution (the original SD-Net used 7x7; the scSE paper's
    defaults here are 5x5, so ``kernel_size=7`` gives the original). The unpooling is written with ``scatter`` so the
    network exports with ``torch.jit.script``. Any spatial size of at least 16 is accepted (see
    :class:`SEEncoderDecoder`). SD-Net is trained with cross-entropy plus Dice loss, which the configs declare.

    Args:
        spatial_dims: 2 (the paper) or 3.
        in_channels: input channels.
        out_channels: number of classes.
        features: channels of every block (the paper: 64).
        kernel_size: convolution kernel size.
        se: ``"none"``, ``"cse"``, ``"sse"`` or ``"scse"``.
        se_reduction: cSE reduction ratio.
        se_mode: scSE combination, ``"sum"`` or ``"max"``.
        norm: normalisation (MONAI ``Norm`` factory), default batch norm.
        act: activation (MONAI ``Act`` factory), default ReLU.
        dropout: dropout probability in the blocks, or ``None``.

    Shapes:
        input ``(N, in_channels, *spatial)``, output logits ``(N, out_channels, *spatial)``.
    """

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
        block = partial(
            ConvBlock, spatial_dims, kernel_size=kernel_size, num_convs=1, norm=norm, act=act, dropout=dropout
        )
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            block=block,
            features=features,
            se=se,
            se_reduction=se_reduction,
            se_mode=se_mode,
            upsample="unpool",
        )
