"""SD-Net (SkipDeconv-Net, Roy et al. MICCAI 2017) with SE blocks, as configured in the scSE paper."""

from __future__ import annotations

from torch import nn

from .base import SEEncoderDecoder
from .unet import ConvBlock

__all__ = ["SDNet"]


class SDNet(SEEncoderDecoder):
    """SD-Net with an optional SE block after every encoder and decoder block.

    As in SegNet and SD-Net, the decoder upsamples by max-unpooling with the pooling indices of the matching encoder
    block, then concatenates that block's output (the skip) and applies one convolution with normalisation and
    activation. Every block is a single ``kernel_size`` convolution (the original SD-Net used 7x7; the scSE paper's
    defaults here are 5x5, so ``kernel_size=7`` gives the original). The unpooling is written with ``scatter`` so the
    network exports with ``torch.jit.script``. SD-Net is trained with cross-entropy plus Dice loss, which the configs
    declare. Arguments and shapes: :class:`SEEncoderDecoder`.
    """

    upsampling = "unpool"

    @staticmethod
    def make_block(spatial_dims, in_channels, out_channels, kernel_size, norm, act, dropout) -> nn.Module:
        return ConvBlock(spatial_dims, in_channels, out_channels, kernel_size, 1, norm, act, dropout)
