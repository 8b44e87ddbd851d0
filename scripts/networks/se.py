"""Squeeze & excitation blocks for segmentation (Roy, Navab, Wachinger, MICCAI 2018).

- cSE (spatial squeeze, channel excitation, Eq. 1-2) is MONAI's ``ChannelSELayer`` with ``r=2``; it is reused, not
  rewritten here.
- sSE (channel squeeze, spatial excitation, Eq. 3) is :class:`SpatialSELayer`.
- scSE (concurrent spatial and channel SE) is :class:`ChannelSpatialSELayer`: ``cSE(U) + sSE(U)`` as in the paper, or
  the element-wise maximum of the two (``mode="max"``) as in the authors' public code and their TMI 2019 journal
  version.

All blocks take ``spatial_dims`` (2 or 3) and keep the input's shape: ``(N, C, H, W[, D]) -> (N, C, H, W[, D])``.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import ChannelSELayer
from monai.networks.layers.factories import Conv
from torch import nn

__all__ = ["SE_TYPES", "ChannelSpatialSELayer", "SpatialSELayer", "get_se_block"]

# The names configs use for the SE variant; "none" gives an identity.
SE_TYPES = ("none", "cse", "sse", "scse")


class SpatialSELayer(nn.Module):
    """Channel squeeze and spatial excitation (sSE), Eq. 3 of the paper.

    A 1x1 convolution ``W_sq`` projects the ``C`` channels at every location onto one value ``q``; the input is
    rescaled at every location by ``sigmoid(q)``. It adds ``C + 1`` parameters (weights and bias).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of channels ``C`` of the input feature map.

    Shapes:
        input ``(N, C, *spatial)``, output ``(N, C, *spatial)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int) -> None:
        super().__init__()
        self.squeeze = Conv[Conv.CONV, spatial_dims](in_channels, 1, kernel_size=1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The squeeze ``q = W_sq * U + b`` at every location: ``(N, C, *spatial) -> (N, 1, *spatial)``.

        On a CPU it is computed as a matrix-vector product with the 1x1 convolution's own weights rather than by
        calling the convolution: the same weights and sum, but oneDNN's convolution with one output channel is about
        14x slower (18.4 vs 1.3 ms for a 4 x 64 x 256 x 256 fp32 input on 2 cores), which made sSE a visible part of
        a full-resolution block. Elsewhere (CUDA) the convolution itself is faster: cuDNN reads the input once, while
        the product first copies it into the layout of a matrix-vector product (H200, U-Net + scSE per slice, batch
        16: 1.05 vs 1.14 ms fp32, 0.90 vs 0.97 ms bf16).
        """
        if x.device.type != "cpu":
            return self.squeeze(x)
        weight = self.squeeze.weight.view(-1)  # (C,)
        q = torch.matmul(weight, x.flatten(2))  # (C,) @ (N, C, P) -> (N, P)
        bias = self.squeeze.bias
        if bias is not None:  # always set; the check is for TorchScript's Optional
            # in the product's dtype: a float32 bias would promote a bf16 (autocast) squeeze, and with it the gate and
            # the block's output, to float32
            q = q + bias.to(q.dtype)
        return q.view([x.shape[0], 1] + list(x.shape[2:]))  # noqa: RUF005 (TorchScript cannot star-unpack a list)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, 1, *spatial) broadcasts over the channels
        return x * torch.sigmoid(self.project(x))


class ChannelSpatialSELayer(nn.Module):
    """Concurrent spatial and channel squeeze & excitation (scSE), section 2.3 of the paper.

    The input is recalibrated by cSE (MONAI's ``ChannelSELayer``) and by sSE (:class:`SpatialSELayer`) separately,
    and the two recalibrated maps are combined element-wise.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of channels ``C`` of the input feature map.
        r: reduction ratio of the cSE bottleneck (``C -> C / r -> C``); the paper uses 2.
        mode: ``"sum"`` (the paper: ``cSE(U) + sSE(U)``) or ``"max"`` (the authors' code and TMI 2019 version:
            ``max(cSE(U), sSE(U))``).

    Shapes:
        input ``(N, C, *spatial)``, output ``(N, C, *spatial)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, r: int = 2, mode: str = "sum") -> None:
        super().__init__()
        if mode not in ("sum", "max"):
            raise ValueError(f"scSE mode must be 'sum' or 'max', got {mode!r}.")
        self.mode = mode
        self.cse = ChannelSELayer(spatial_dims, in_channels, r=r)
        self.sse = SpatialSELayer(spatial_dims, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "max":
            return torch.maximum(self.cse(x), self.sse(x))
        # cSE(U) + sSE(U) = U * (channel gate + spatial gate): the same sum with one full-size pass over U fewer,
        # which matters at full resolution where these element-wise passes dominate the block's cost.
        # The channel gate is computed by the layers of MONAI's ChannelSELayer itself.
        b, c = x.shape[0], x.shape[1]
        channel_gate = self.cse.fc(self.cse.avg_pool(x).view(b, c)).view([b, c] + [1] * (x.dim() - 2))
        spatial_gate = torch.sigmoid(self.sse.project(x))
        if torch.is_grad_enabled() or torch.jit.is_tracing():  # autograd; a traced export (ONNX) has no out=
            return x * (channel_gate + spatial_gate)
        # without autograd the gate's full-size buffer is reused for the output: one fewer allocation of a feature
        # map, whose fresh pages cost the CPU more than the multiplication itself. It takes x's dtype and memory
        # layout: the sum of the two broadcast gates would be contiguous (NCHW), and multiplying it in place by a
        # channels-last x (the inference default) is 20x slower than with matching layouts (57 vs 2.7 ms for
        # 4 x 64 x 256 x 256 fp32 on 2 cores), and a bf16 x would give a float32 output
        gate = torch.add(channel_gate, spatial_gate, out=torch.empty_like(x))
        return gate.mul_(x)


def get_se_block(se: str, spatial_dims: int, in_channels: int, r: int = 2, mode: str = "sum") -> nn.Module:
    """Build one SE block by name.

    Args:
        se: one of :data:`SE_TYPES`: ``"none"`` (identity), ``"cse"``, ``"sse"`` or ``"scse"``.
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of channels of the feature map the block recalibrates.
        r: cSE reduction ratio (cSE and scSE).
        mode: scSE combination, ``"sum"`` or ``"max"`` (scSE only).

    Raises:
        ValueError: for an unknown ``se``, listing the valid names.
    """
    name = str(se).lower()
    if name == "none":
        return nn.Identity()
    if name == "cse":
        return ChannelSELayer(spatial_dims, in_channels, r=r)
    if name == "sse":
        return SpatialSELayer(spatial_dims, in_channels)
    if name == "scse":
        return ChannelSpatialSELayer(spatial_dims, in_channels, r=r, mode=mode)
    raise ValueError(f"unknown se {se!r}; valid: {', '.join(SE_TYPES)}.")
