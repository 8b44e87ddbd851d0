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

__all__ = ["SE_TYPES", "ChannelSpatialSELayer", "SpatialSELayer", "get_se_block", "squeeze_channels"]

# The names configs use for the SE variant; "none" gives an identity.
SE_TYPES = ("none", "cse", "sse", "scse")


def squeeze_channels(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """sSE's squeeze ``q = sum_c w_c x_c + b`` at every location, as a batched matrix-vector product on a CPU.

    Args:
        x: feature map ``(N, C, P)``, ``P`` the flattened spatial size, in either memory layout.
        weight: the 1x1 convolution's weight, ``C`` values in any shape (``(1, C, 1, 1)``).
        bias: its bias ``(1,)``, or ``None``.

    Returns:
        ``(N, 1, P)``, in the product's dtype (bf16 under autocast: a float32 bias would promote it).
    """
    n, c = x.shape[0], x.shape[1]
    # the weight broadcast over the batch: bmm reads x where it lies, while torch.matmul((C,), x) copies x into
    # (N, P, C) when x is NCHW or the weight requires a gradient (sSE's forward and backward on 4 x 64 x 256 x 256
    # fp32, 2 cores of an AVX2 CPU: 65-70 vs 171-187 ms, docs/results/benchmark/cpu_se_block_probe.py)
    q = torch.bmm(weight.reshape(1, 1, c).expand(n, 1, c), x)
    if bias is not None:  # always set in sSE; the check is for TorchScript's Optional
        q = q + bias.to(q.dtype)
    return q


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
        q = squeeze_channels(x.flatten(2), self.squeeze.weight, self.squeeze.bias)
        return q.view([x.shape[0], 1] + list(x.shape[2:]))  # noqa: RUF005 (TorchScript cannot star-unpack a list)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, 1, *spatial) broadcasts over the channels
        return x * torch.sigmoid(self.project(x))


class _SpatialMean(torch.autograd.Function):
    """The mean over the spatial positions, ``(N, C, P) -> (N, C)``, whose gradient is a broadcast view of
    ``(N, C, 1)`` rather than a feature-map-sized tensor: autograd adds it into the other gradient of the feature map
    in place (cSE's pooling in :class:`_ScSESum`'s CPU training path)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.shape = x.shape
        return x.mean(2)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        n, c, p = ctx.shape
        return (grad / p).unsqueeze(2).expand(n, c, p)


class _ScSESum(torch.autograd.Function):
    """scSE's sum ``x * (channel gate + sigmoid(sSE squeeze))`` with a backward pass of few full-size passes, for
    CPU training.

    Autograd's own graph of the block allocates about eight feature-map-sized tensors in the backward pass (the
    product's two gradients, the squeeze's outer product and layout copies, the pooling's expanded gradient, the sums
    of the three gradients of ``x``), and on a CPU each fresh allocation of that size costs page faults worth more
    than the arithmetic. Here the forward pass allocates only its output and the backward pass only the gradient of
    ``x``, into which the sSE terms are accumulated in place; the channel gate (cSE's pooling, with
    :class:`_SpatialMean`, and its small layers) stays in autograd's graph.

    Inputs: ``x`` ``(N, C, P)`` contiguous (``P`` the flattened spatial size), the channel gate ``(N, C)``, the sSE
    squeeze's weight (``C`` values) and bias ``(1,)``. Output ``(N, C, P)``.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x, channel_gate, weight, bias):  # type: ignore[override]
        gate_c = channel_gate.unsqueeze(2)  # (N, C, 1)
        gate_s = torch.sigmoid(squeeze_channels(x, weight, bias))  # (N, 1, P)
        out = torch.add(gate_c, gate_s, out=torch.empty_like(x))
        ctx.save_for_backward(x, gate_c, gate_s, weight)
        ctx.dtypes = (channel_gate.dtype, bias.dtype)
        return out.mul_(x)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, gate_c, gate_s, weight = ctx.saved_tensors
        c = x.shape[1]
        grad = grad.contiguous()
        prod = grad * x  # the one full-size buffer: reduced to the gates' gradients, then reused for x's
        d_gate_c = prod.sum(2).to(ctx.dtypes[0])  # (N, C)
        d_q = torch.ops.aten.sigmoid_backward(prod.sum(1, keepdim=True), gate_s)  # (N, 1, P)
        d_weight = d_bias = None
        if ctx.needs_input_grad[2]:
            d_weight = torch.bmm(d_q, x.transpose(1, 2)).sum(0).to(weight.dtype).view_as(weight)
        if ctx.needs_input_grad[3]:
            d_bias = d_q.sum().view(1).to(ctx.dtypes[1])
        # d x = grad * (gate_c + gate_s) + w d_q, in prod's buffer (the channel gate's term comes from autograd)
        torch.add(gate_c, gate_s, out=prod).mul_(grad)
        prod.addcmul_(weight.view(1, c, 1).to(prod.dtype), d_q)
        return prod, d_gate_c, d_weight, d_bias


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
        if not torch.jit.is_scripting():  # TorchScript skips this branch: it cannot compile a custom autograd function
            if self._use_fused(x):
                return self._fused(x)
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

    def _use_fused(self, x: torch.Tensor) -> bool:
        """The fused sum (:class:`_ScSESum`) for CPU training of a contiguous feature map; the plain graph elsewhere:
        CUDA (a caching allocator, no page faults), ONNX/TorchScript tracing (no custom functions), channels-last."""
        return (
            torch.is_grad_enabled()
            and x.requires_grad
            and x.device.type == "cpu"
            and x.is_contiguous()
            and not torch.jit.is_tracing()
        )

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        flat = x.view(n, c, -1)
        channel_gate = self.cse.fc(_SpatialMean.apply(flat))  # MONAI's cSE layers on its pooling: (N, C)
        out = _ScSESum.apply(flat, channel_gate, self.sse.squeeze.weight, self.sse.squeeze.bias)
        return out.view_as(x)


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
