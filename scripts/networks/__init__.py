"""The paper's networks and SE blocks, and the one factory the configs use: :func:`get_network`."""

from __future__ import annotations

from torch import nn

from .base import SEEncoderDecoder, max_unpool
from .densenet import DenseBlock, FCDenseNet
from .sdnet import SDNet
from .se import SE_TYPES, ChannelSpatialSELayer, SpatialSELayer, get_se_block
from .unet import ConvBlock, UNet

__all__ = [
    "ARCHS",
    "SE_TYPES",
    "ChannelSpatialSELayer",
    "ConvBlock",
    "DenseBlock",
    "FCDenseNet",
    "SDNet",
    "SEEncoderDecoder",
    "SpatialSELayer",
    "UNet",
    "get_network",
    "get_se_block",
    "max_unpool",
]

# The names configs use for the architecture.
ARCHS: dict[str, type[SEEncoderDecoder]] = {"unet": UNet, "sdnet": SDNet, "densenet": FCDenseNet}


def get_network(
    arch: str, se: str, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, **options
) -> nn.Module:
    """Build one of the paper's networks with one of the SE variants.

    Args:
        arch: ``"unet"``, ``"sdnet"`` or ``"densenet"``.
        se: ``"none"``, ``"cse"``, ``"sse"`` or ``"scse"``.
        spatial_dims: 2 (the paper: slice-wise) or 3.
        in_channels: input channels.
        out_channels: number of classes.
        options: further keyword arguments of the network class (``features``, ``kernel_size``, ``se_reduction``,
            ``se_mode``, ``norm``, ``act``, ``dropout``).

    Raises:
        ValueError: for an unknown ``arch`` or ``se``, listing the valid names.
    """
    arch_name, se_name = str(arch).lower(), str(se).lower()
    if arch_name not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}.")
    if se_name not in SE_TYPES:
        raise ValueError(f"unknown se {se!r}; valid: {', '.join(SE_TYPES)}.")
    return ARCHS[arch_name](
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, se=se_name, **options
    )
