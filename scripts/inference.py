"""Fast inference paths: reduced precision where the hardware computes it natively, channels-last memory.

Whole-volume inference of the paper's U-Net (64 filters, 5x5) costs about 72 GFLOP per 256x256 slice. Two levers
change that cost on the same hardware without changing the network:

- precision: bfloat16 on CPUs with native BF16 instructions (AVX-512 BF16 / AMX, as oneDNN reports them), float16
  on CUDA; float32 elsewhere, since emulated bf16 is far slower than float32 (measured on AVX2-only CPUs);
- memory format: channels-last activations, which oneDNN's convolutions prefer.

:class:`FastInference` wraps a network for the evaluator and returns float32 logits; it shares the network's
parameters, so a checkpoint loaded into the network (MONAI's ``CheckpointLoader``) is what it runs. The third lever,
computing only where the head is, is declared in ``configs/inference.yaml`` (``CropForegroundd``, inverted by
``Invertd``).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .errors import as_bool

__all__ = ["PRECISIONS", "FastInference", "native_bf16", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
logger = logging.getLogger(__name__)


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check: AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """The precision ``"auto"`` means on ``device``: fp16 on CUDA, bf16 on a CPU with native BF16, else fp32.

    Raises:
        ValueError: for a name outside :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    kind = torch.device(device).type
    if precision != "auto":
        return precision
    if kind == "cuda":
        return "fp16"
    return "bf16" if kind == "cpu" and native_bf16() else "fp32"


class FastInference(nn.Module):
    """Runs ``network`` in the chosen precision and memory format; returns float32 logits.

    Args:
        network: the network (its parameters are shared, not copied).
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (see :func:`resolve_precision`).
        channels_last: channels-last memory format for 2D networks.
        device: where it runs, for ``"auto"``.

    Shapes:
        input ``(N, C, H, W)`` (or ``(N, C, D, H, W)`` for a 3D network), output ``(N, classes, ...)`` float32.
    """

    def __init__(
        self,
        network: nn.Module,
        precision: str = "auto",
        channels_last: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.network = network
        self.precision = resolve_precision(precision, device)
        self.device_type = torch.device(device).type
        self.channels_last = as_bool(channels_last, "channels_last") and getattr(network, "spatial_dims", 2) == 2
        if self.channels_last:
            network.to(memory_format=torch.channels_last)  # in place: the parameters stay the loaded ones
        logger.info(
            f"inference in {self.precision}{', channels-last' if self.channels_last else ''} on {self.device_type}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.precision == "fp32":
            return self.network(x)
        with torch.autocast(self.device_type, dtype=_DTYPES[self.precision]):
            return self.network(x).float()
