"""Inference backends and fast paths: reduced precision where the hardware computes it natively, channels-last
memory, or the network's ONNX export run by ONNX Runtime.

Whole-volume inference of the paper's U-Net (64 filters, 5x5) costs about 72 GFLOP per 256x256 slice. Two levers
change that cost on the same hardware without changing the network:

- precision: bfloat16 on CPUs with native BF16 instructions (AVX-512 BF16 / AMX, as oneDNN reports them) where a
  bf16 convolution is measured faster than a float32 one on this machine (:func:`bf16_speedup`), float16 on CUDA;
  float32 elsewhere: emulated bf16 is far slower than float32 (AVX2-only CPUs), and native BF16 without AMX on an
  Intel Xeon, whose float32 already runs on two full-width AVX-512 units, is slower too (inference 1.1-1.8x);
- memory format: channels-last activations, which oneDNN's convolutions prefer.

:class:`FastInference` wraps a network for the evaluator and returns float32 logits; it shares the network's
parameters, so a checkpoint loaded into the network (MONAI's ``CheckpointLoader``) is what it runs.
:class:`OnnxRuntimeNetwork` runs an ONNX export (``python -m monai.bundle onnx_export --args_file
configs/onnx_export.yaml``) with ONNX Runtime instead. The third lever, computing only where the head is, is MONAI's
``CropForegroundd`` (inverted by ``Invertd``), chosen by :func:`foreground_crop`: the head's box, or only the slices
through the head, kept whole, which gives the plain path's labels (a 2D network sees every slice it segments as the
plain path does); ``boxes`` adds :class:`ForegroundBoxNetwork`, which cuts every batch of slices to its own,
smaller box (a slice near the top of the head is far smaller than the head's widest one).
"""

from __future__ import annotations

import functools
import logging
import math
import os

import numpy as np
import torch
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import CropForegroundd
from torch import nn
from torch.nn import functional as F

from .checkpoint import check_checkpoint
from .errors import InputError, as_bool
from .timing import paired_ratio, time_interleaved_runs

__all__ = [
    "BACKENDS",
    "BF16_MIN_SPEEDUP",
    "PRECISIONS",
    "ArgmaxInferer",
    "AutocastInferer",
    "FastInference",
    "ForegroundBoxNetwork",
    "OnnxRuntimeNetwork",
    "SliceBatches",
    "argmax_in_inferer",
    "bf16_speedup",
    "check_model",
    "foreground_crop",
    "inference_network",
    "native_bf16",
    "needs_loss_scaling",
    "resolve_precision",
    "slice_boxes",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("torch", "onnxruntime")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
logger = logging.getLogger(__name__)


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check: AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


# bf16 is what "auto" picks on a CPU only where a bf16 convolution runs at least this much faster than a float32 one
# (bf16 / fp32 matmul rates measured: 2.1-2.5x on AMD Zen 4, 5-6x with AMX; this convolution 0.52-0.62x on an Intel
# Xeon with AVX-512 BF16 but no AMX)
BF16_MIN_SPEEDUP = 1.15


@functools.cache
def bf16_speedup(threads: int, repeats: int = 5) -> float:
    """How many times faster a bfloat16 convolution runs than a float32 one on this CPU, with ``threads`` threads.

    A 5x5 convolution of 64 to 64 channels on 2 x 64 x 64 x 64 channels-last inputs (the paper's U-Net's layer), each
    precision once to warm up, then ``repeats`` times in turns; the median of the ratios paired by repeat (about 0.1 s
    in all; :mod:`scripts.timing`). Measured rather than inferred from the instruction set: oneDNN's native BF16 path
    is 2-5x faster than float32 on some CPUs and slower on others. Cached per thread count for the process; logged
    once with what ``--precision auto`` makes of it.

    Args:
        threads: torch's thread count when it is measured (the cache's key; the caller's current one).
        repeats: timed runs of each precision.
    """
    generator = torch.Generator().manual_seed(0)  # the process's own random stream stays untouched
    x = torch.randn(2, 64, 64, 64, generator=generator).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(64, 64, 5, 5, generator=generator).div_(40).contiguous(memory_format=torch.channels_last)
    x_bf16, weight_bf16 = x.to(torch.bfloat16), weight.to(torch.bfloat16)
    with torch.no_grad():  # the first call of each, which builds oneDNN's kernel, is not timed
        runs = time_interleaved_runs(
            {"fp32": lambda: F.conv2d(x, weight, padding=2), "bf16": lambda: F.conv2d(x_bf16, weight_bf16, padding=2)},
            repeats,
            torch.device("cpu"),
        )
    speedup = paired_ratio(runs["fp32"], runs["bf16"])["median"]
    chosen = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
    logger.info(
        f"a bf16 convolution runs {speedup:.2f}x as fast as float32 on this CPU ({threads} threads): "
        f"--precision auto is {chosen} here (bf16 from {BF16_MIN_SPEEDUP}x)"
    )
    return speedup


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """The precision ``"auto"`` means on ``device``: fp16 on CUDA; on a CPU bf16 where it is native and measured at
    least :data:`BF16_MIN_SPEEDUP` times faster than float32 (:func:`bf16_speedup`, once per process), else fp32.

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
    if kind != "cpu" or not native_bf16():
        return "fp32"
    return "bf16" if bf16_speedup(torch.get_num_threads()) >= BF16_MIN_SPEEDUP else "fp32"


def needs_loss_scaling(precision: str, device: str | torch.device) -> bool:
    """Whether a training in ``precision`` on ``device`` needs its loss scaled: float16 autocast on CUDA, whose small
    gradients would underflow to zero (MONAI's trainer then scales them, ``amp``); bfloat16 and float32 need none."""
    return torch.device(device).type == "cuda" and resolve_precision(precision, device) == "fp16"


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


class SliceBatches(nn.Module):
    """Runs a batch of slices through ``network`` in parts of at most ``max_pixels`` pixels (one slice at least):
    the peak memory of whole-volume inference is a batch's activations, and on a CPU a batch of 4 slices of 256^2
    runs as fast per slice as one of 16 (the paper's U-Net: 1.0 instead of 2.5-2.9 GiB; docs/README.md, "Speed of
    whole-volume inference").

    Args:
        network: the 2D network (or its fast wrapper).
        max_pixels: slices x height x width per part; ``None`` (or ``"null"``) or 0: the whole batch at once.

    Shapes:
        input ``(N, C, H, W)``, output the network's, its parts concatenated along the batch.

    Raises:
        InputError: ``max_pixels`` is not a whole number >= 0 (or ``None``).
    """

    def __init__(self, network: nn.Module, max_pixels: int | None) -> None:
        super().__init__()
        if isinstance(max_pixels, str) and max_pixels.strip().lower() in ("null", "none"):
            max_pixels = None  # as typed on the command line
        if max_pixels is not None and (
            isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 0
        ):
            raise InputError(f"--max_batch_pixels {max_pixels!r} is not a whole number of pixels >= 0 (or null)")
        self.network = network
        self.max_pixels = int(max_pixels or 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slices = max(1, self.max_pixels // max(1, math.prod(x.shape[2:]))) if self.max_pixels else x.shape[0]
        if x.shape[0] <= slices:
            return self.network(x)
        return torch.cat([self.network(part) for part in x.split(slices)])


class ForegroundBoxNetwork(nn.Module):
    """Runs a 2D network on each batch of slices' foreground box only; background logits outside it.

    The box is the smallest one holding every voxel of the batch above ``threshold``, plus ``margin`` voxels, each
    side rounded up to a multiple of ``k_divisible`` (or the slice's side, if that is smaller), centred on the
    foreground. The slices through a head are far smaller there than the volume's box: the paper's U-Net computes
    on about 57% of the volume box's pixels on a 1 mm scan. A batch without foreground is not run at all.

    Args:
        network: the 2D network (or its fast wrapper) returning logits.
        num_classes: its output channels.
        threshold: foreground = input intensities above it (after the loading transforms' scaling).
        margin: voxels kept around the foreground.
        k_divisible: the network's size multiple.
        background: the class index given to the voxels outside the box.

    Shapes:
        input ``(N, C, H, W)``, output ``(N, num_classes, H, W)`` float32 (other inputs go to ``network`` as they are).
    """

    def __init__(
        self,
        network: nn.Module,
        num_classes: int,
        threshold: float,
        margin: int,
        k_divisible: int,
        background: int = 0,
    ) -> None:
        super().__init__()
        self.network = network
        self.num_classes, self.threshold, self.margin = int(num_classes), float(threshold), int(margin)
        self.k_divisible, self.background = max(1, int(k_divisible)), int(background)

    def _span(self, present: torch.Tensor) -> tuple[int, int]:
        """Start and end of the box along one side, from which of its positions hold foreground."""
        size = present.numel()
        where = torch.nonzero(present).flatten()
        first, last = int(where[0]) - self.margin, int(where[-1]) + self.margin + 1
        length = min(size, -(-(last - first) // self.k_divisible) * self.k_divisible)
        start = min(max(0, (first + last - length) // 2), size - length)
        return start, start + length

    def box(self, x: torch.Tensor) -> tuple[int, int, int, int] | None:
        """The box ``(top, bottom, left, right)`` a batch ``(N, C, H, W)`` is segmented in; ``None``: no foreground."""
        foreground = (x > self.threshold).any(dim=1).any(dim=0)  # (H, W)
        if not bool(foreground.any()):
            return None
        return (*self._span(foreground.any(dim=1)), *self._span(foreground.any(dim=0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return self.network(x)
        box = self.box(x)
        if box is not None and (box[1] - box[0], box[3] - box[2]) == tuple(x.shape[2:]):
            return self.network(x).float()
        # logits whose softmax is 1 for the background class and 0 for the others (finite: safe to interpolate)
        out = torch.full((x.shape[0], self.num_classes, *x.shape[2:]), -1e4, dtype=torch.float32, device=x.device)
        out[:, self.background] = 0.0
        if box is not None:
            top, bottom, left, right = box
            out[:, :, top:bottom, left:right] = self.network(x[:, :, top:bottom, left:right].contiguous())
        return out


class AutocastInferer(SimpleInferer):
    """MONAI's ``SimpleInferer`` with the forward pass under autocast: the training's reduced precision (the backward
    pass follows the forward's dtypes; weights, gradients and optimiser stay float32). Returns float32 logits.

    Args:
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (see :func:`resolve_precision`).
        device: where the network runs.
    """

    def __init__(self, precision: str = "fp32", device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.precision = resolve_precision(precision, device)
        self.device_type = torch.device(device).type
        if self.precision != "fp32":
            logger.info(f"training forward pass in {self.precision} autocast on {self.device_type}")

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        if self.precision == "fp32":
            return super().__call__(inputs, network, *args, **kwargs)
        with torch.autocast(self.device_type, dtype=_DTYPES[self.precision]):
            return super().__call__(inputs, network, *args, **kwargs).float()


class _Argmax(nn.Module):
    """``network``'s class index at every location, as a float32 channel: ``(N, C, ...) -> (N, 1, ...)``."""

    def __init__(self, network) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x).argmax(dim=1, keepdim=True).to(torch.float32)


class ArgmaxInferer(Inferer):
    """Runs ``inferer`` with the argmax taken on every batch of slices, so it stitches one channel of labels into the
    volume instead of one channel of logits per class.

    For a model at the scan's resolution (labels inverted with nearest neighbours) the labels are the same as the
    argmax of the stitched logits, since every voxel is segmented once (slices do not overlap), but the volume-sized
    buffer is 1 channel instead of ``classes`` (28 x 4 bytes per voxel: 1.9 GB for a 256^3 scan).

    Args:
        inferer: the inferer to run (``SliceInferer``); its windows must not overlap.

    Shapes:
        output ``(N, 1, ...)`` float32 class indices.
    """

    def __init__(self, inferer: Inferer) -> None:
        super().__init__()
        self.inferer = inferer

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        return self.inferer(inputs, _Argmax(network), *args, **kwargs)


def argmax_in_inferer(requested: object, interpolate: bool, views: object, mirror: bool = False) -> bool:
    """Whether :class:`ArgmaxInferer` takes the labels per batch of slices (the ``argmax_in_inferer`` option).

    Args:
        requested: ``"auto"`` (whenever it gives the same labels), ``true`` or ``false``.
        interpolate: whether the class probabilities are interpolated to the scan's grid (they are needed whole).
        views: the other views' models (their probabilities are averaged, so they are needed whole).
        mirror: whether test-time mirroring averages probabilities (needed whole, as for views).

    Raises:
        InputError: ``true`` with probability interpolation, several views or mirroring, which need every class's
            values.
    """
    possible = not interpolate and not views and not mirror
    if str(requested).lower() == "auto":
        return possible
    wanted = as_bool(requested, "argmax_in_inferer")
    if wanted and not possible:
        raise InputError(
            "--argmax_in_inferer true needs one unmirrored view whose labels are inverted with nearest neighbours; "
            "with interpolate_probabilities true, --views or --mirror true every class's probability is needed: "
            "use auto or false"
        )
    return wanted


class OnnxRuntimeNetwork(nn.Module):
    """An ONNX export of the network run by ONNX Runtime, called like the network (``(N, C, H, W)`` float32 in,
    logits out, on the input's device).

    Args:
        path: the ``.onnx`` file (exported with dynamic batch and spatial axes).
        device: ``cuda`` uses ONNX Runtime's CUDA provider when it is installed; the CPU provider otherwise.
    """

    def __init__(self, path: str, device: str | torch.device = "cpu") -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError as e:
            raise InputError("--backend onnxruntime needs ONNX Runtime: pip install onnxruntime") from e
        if not os.path.isfile(path):
            raise InputError(
                f"--onnx_file '{path}' does not exist: export it first (python -m monai.bundle onnx_export "
                "--args_file configs/onnx_export.yaml)"
            )
        providers: list = ["CPUExecutionProvider"]
        device = torch.device(device)
        if device.type == "cuda":
            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
            else:
                logger.warning("ONNX Runtime has no CUDA provider here (onnxruntime-gpu): the export runs on the CPU")
        options = onnxruntime.SessionOptions()
        # the threads torch was given (OMP_NUM_THREADS, or the cores this process may use), not ONNX Runtime's own
        # count of the machine's physical cores: several processes on few cores must not oversubscribe them
        options.intra_op_num_threads = torch.get_num_threads()
        # memory patterns plan one buffer layout per input shape, and the batches of slices come in several shapes:
        # without them the same speed and a lower peak (docs/README.md, "Speed of whole-volume inference")
        options.enable_mem_pattern = False
        try:
            self.session = onnxruntime.InferenceSession(path, options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise InputError(
                f"--onnx_file '{path}' cannot be loaded by ONNX Runtime: {str(e).splitlines()[0][:200]}"
            ) from e
        self.input_name = self.session.get_inputs()[0].name
        classes = self.session.get_outputs()[0].shape[1]
        self.out_channels = classes if isinstance(classes, int) else None  # None: a dynamic axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = {self.input_name: x.detach().cpu().numpy().astype(np.float32, copy=False)}
        return torch.from_numpy(self.session.run(None, inputs)[0]).to(x.device)


def inference_network(
    network: nn.Module,
    backend: str = "torch",
    onnx_file: str = "",
    precision: str = "fp32",
    channels_last: bool = True,
    device: str | torch.device = "cpu",
    boxes: dict | None = None,
    max_batch_pixels: int | None = None,
) -> nn.Module:
    """The module the evaluator (or another view of :class:`scripts.aggregation.MultiViewInferer`) runs: the network
    through :class:`FastInference`, or its ONNX export, in parts of at most ``max_batch_pixels`` pixels
    (:class:`SliceBatches`); with ``boxes``, on each batch's foreground box only.

    Args:
        network: the network, its checkpoint loaded (or loaded later into the same parameters).
        backend: ``"torch"`` or ``"onnxruntime"`` (runs ``onnx_file``).
        onnx_file: the ONNX export, for ``"onnxruntime"``.
        precision, channels_last, device: :class:`FastInference`'s.
        boxes: :class:`ForegroundBoxNetwork`'s arguments but the network (``None``: whole slices).
        max_batch_pixels: :class:`SliceBatches`' ``max_pixels`` (``None``: whole batches).

    Raises:
        InputError: for an unknown backend.
    """
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        module: nn.Module = OnnxRuntimeNetwork(onnx_file, device)
    else:
        module = FastInference(network, precision, channels_last, device)
    if max_batch_pixels is not None:
        # inside the boxes: a batch's box is the same whatever its parts
        module = SliceBatches(module, max_batch_pixels)
    return ForegroundBoxNetwork(module, **boxes) if boxes else module


def slice_boxes(crop: object) -> bool:
    """Whether ``crop_foreground`` (``boxes``) also cuts every batch of slices to its own foreground box."""
    return str(crop).strip().lower() == "boxes"


def check_model(backend: str, checkpoint: str, onnx_file: str, network: nn.Module) -> str:
    """Refuse before any volume is read what the backend cannot run: a checkpoint that is missing, unreadable or of
    another network (torch), or an ONNX file that is missing, unreadable or of another number of classes
    (onnxruntime).

    Returns:
        the file the backend runs.
    """
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        classes = OnnxRuntimeNetwork(onnx_file).out_channels
        expected = getattr(getattr(network, "classifier", None), "out_channels", None)
        if classes is not None and expected is not None and classes != expected:
            raise InputError(
                f"--onnx_file '{onnx_file}' gives {classes} classes but the configured protocol has {expected}; "
                "expected an export of this protocol's network"
            )
        return onnx_file
    return check_checkpoint(checkpoint, network)


def foreground_crop(
    crop: object, threshold: float, margin: int, slice_axis: int, k_divisible: int, key: str = "image"
) -> list[CropForegroundd]:
    """The ``crop_foreground`` option as MONAI's ``CropForegroundd`` on the voxels of ``key`` above ``threshold``.

    Args:
        crop: ``true``: the foreground's bounding box plus ``margin`` voxels, each side a multiple of ``k_divisible``
            (fewer FLOPs, but the network sees smaller slices and its labels near the head move, see the model
            card); ``"boxes"``: the same box, and :class:`ForegroundBoxNetwork` then cuts every batch of slices to
            its own (``inference_network``'s ``boxes``); ``"slices"``: only the slices through the foreground (plus
            ``margin``) along ``slice_axis``, kept whole, so each is segmented as the plain path segments it;
            ``false``: no crop (an empty list).
        threshold: foreground = intensities above it (after the loading transforms' scaling).
        margin: voxels kept beyond the foreground.
        slice_axis: spatial axis of the 2D slices.
        k_divisible: the network's size multiple, for the box's in-plane sides.
        key: the image key.

    Raises:
        InputError: for another value of ``crop``.
    """
    choice = str(crop).strip().lower()
    if choice == "slices":
        # in plane, a margin larger than any image, clipped to its edges (allow_smaller): the whole slice
        margins = [margin if axis == slice_axis else 2**31 - 1 for axis in range(3)]
        return [CropForegroundd(key, key, lambda x: x > threshold, margin=margins, allow_smaller=True)]
    try:
        boxed = choice == "boxes" or as_bool(crop, "crop_foreground")
    except InputError:
        raise InputError(f"--crop_foreground {crop!r} is not one of true, false, slices, boxes") from None
    if not boxed:
        return []
    return [
        CropForegroundd(key, key, lambda x: x > threshold, margin=margin, allow_smaller=True, k_divisible=k_divisible)
    ]
