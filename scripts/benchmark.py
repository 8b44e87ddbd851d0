"""Benchmarks that print figures: whole-volume inference end to end, and our networks beside MONAI's peers.

    python -m scripts.benchmark volume --image scan.nii.gz --checkpoint models/model.pt [--onnx models/model.onnx]
        [--config ...] [--only "<setting>" ...] [-- overrides, e.g. --device cpu]
    python -m scripts.benchmark peers [--size 256 --features 64 --batch 4 --precision fp32 --volume_slices 0]
        [--peers false: ours only, for the SE blocks' cost] [--memory false: no process per network for its peak]

``peers``: our U-Net, SD-Net and FC-DenseNet without SE and with scSE beside MONAI's ``BasicUNet`` and ``Quicknat``
(without SE and with its cSE), at the same slice size, filters and classes, in one process, the networks taking
turns in every repeat (a change of the machine's load hits all alike): median time of an inference forward pass
per slice, of a training step (forward, backward, SGD) per batch and, with ``--volume_slices``, of a whole stack of
slices; the FLOPs torch counts, the GFLOP/s they achieve against the matmul peak measured in the same run, the
ratios to our U-Net + scSE, and each network's peak memory (resident memory of a process of its own on a CPU, the
allocator's peak on CUDA). The SE blocks' cost, scSE / no SE for each of our networks, is the median of the ratios
of the two within each repeat, with their quartiles and range: it is steadier than a ratio of medians on a machine
whose speed drifts.

``volume``:
Each setting runs ``python -m monai.bundle run inference`` in its own process (read, preprocess, segment, invert,
write: what a user waits for), alone, ``--repeats`` times; the median wall time and the peak resident memory are
printed, with per-structure Dice of every setting's labels against the plain path's, the arithmetic the network
computed (FLOPs counted by torch on the slices the setting segments), and the floor that arithmetic sets at the
float32 and reduced-precision matmul rates measured where the network runs (the config's device: CUDA when present,
unless ``-- --device cpu``). The CPU's kind is printed first: figures from machines with and without AVX-512 differ
about 2x.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import torch

from .allocator import find_tcmalloc, loaded_allocator
from .errors import InputError, as_bool, check_device
from .inference import _DTYPES, PRECISIONS, FastInference, bf16_speedup, native_bf16, resolve_precision
from .outputs import atomic_write
from .timing import paired_ratio
from .timing import sync as _sync
from .timing import time_interleaved, time_interleaved_runs

__all__ = [
    "SETTINGS",
    "cpu_kind",
    "inference_step",
    "main",
    "matmul_gflops",
    "paired_ratio",
    "peer_networks",
    "time_interleaved",
    "time_interleaved_runs",
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> overrides of configs/inference.yaml; "plain" is the reference the others are compared with
SETTINGS: dict[str, list[str]] = {
    "plain fp32": ["--precision", "fp32", "--channels_last", "false", "--crop_foreground", "false"],
    "default (fp32 + channels-last + crop)": [],
    "fp32 + channels-last + crop slices only": ["--crop_foreground", "slices"],
    "fp32 + channels-last + crop boxes per batch": ["--crop_foreground", "boxes"],
    "auto precision + channels-last, no crop": ["--precision", "auto", "--crop_foreground", "false"],
    "auto precision + channels-last + crop": ["--precision", "auto"],
    "auto precision + channels-last + crop slices only": ["--precision", "auto", "--crop_foreground", "slices"],
    "auto precision + channels-last + crop boxes per batch": ["--precision", "auto", "--crop_foreground", "boxes"],
}


def cpu_kind() -> str:
    """``AVX512 with native BF16 (...)`` / ``AVX512`` / ``AVX2``..., as torch and oneDNN see this CPU, and with
    native BF16 how fast a bf16 convolution runs here against float32 (what ``--precision auto`` decides on)."""
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    avx512 = "avx512f" if "avx512f" in flags else "no avx512f"
    amx = ", amx_bf16" if "amx_bf16" in flags else ""
    bf16 = ""
    if native_bf16():
        bf16 = f" with native BF16 (a bf16 convolution {bf16_speedup(torch.get_num_threads()):.2f}x as fast as fp32)"
    return f"{torch.backends.cpu.get_cpu_capability()}{bf16} ({avx512}{amx})"


def matmul_gflops(dtype: torch.dtype, size: int = 4096, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Median GFLOP/s of a ``size`` x ``size`` matmul on this machine's threads (or GPU): the peak to compare with."""
    device = torch.device(device)
    a, b = torch.rand(size, size, device=device).to(dtype), torch.rand(size, size, device=device).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def _dice(a: np.ndarray, b: np.ndarray, labels: list[int]) -> dict[int, float]:
    out = {}
    for label in labels:
        x, y = a == label, b == label
        total = x.sum() + y.sum()
        out[label] = 1.0 if total == 0 else 2.0 * np.logical_and(x, y).sum() / total
    return out


def _parser(configs: list[str], overrides: list[str]):
    """The merged configs with ``--key value`` overrides, values read as the runner (fire) reads them."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs)
    parser["bundle_root"] = ROOT
    for key, value in zip(overrides[::2], overrides[1::2]):
        try:
            parser[key.lstrip("-")] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parser[key.lstrip("-")] = value
    return parser


def _network_work(configs: list[str], overrides: list[str], image: str) -> tuple[str, float]:
    """What the setting's network computes on ``image``: the slices it is handed (``"<slices>x<H>x<W>"``, after the
    volume's crop) and the FLOPs of its passes, over each batch's foreground box where the setting cuts them."""
    from torch.utils.flop_counter import FlopCounterMode

    from .inference import ForegroundBoxNetwork

    parser = _parser(configs, overrides)
    volume = torch.as_tensor(parser.get_parsed_content("preprocessing")({"image": image})["image"])
    axis = parser.get_parsed_content("slice_axis")
    slices = volume.movedim(axis + 1, 0)  # (S, C, H, W), the order SliceInferer hands them over in
    network = parser.get_parsed_content("network_def").eval()
    boxes = parser.get_parsed_content("boxes")
    boxed = ForegroundBoxNetwork(network, **boxes) if boxes else None
    batch = int(parser.get_parsed_content("slice_inferer#sw_batch_size"))
    per_size: dict[tuple[int, int], float] = {}
    total = 0.0
    for start in range(0, slices.shape[0], batch):
        chunk = slices[start : start + batch]
        size = tuple(chunk.shape[2:])
        if boxed is not None:
            box = boxed.box(chunk)
            if box is None:
                continue
            size = (box[1] - box[0], box[3] - box[2])
        if size not in per_size:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                network(torch.zeros(1, slices.shape[1], *size))
            per_size[size] = float(counter.get_total_flops())
        total += per_size[size] * chunk.shape[0]
    return f"{slices.shape[0]}x{'x'.join(map(str, slices.shape[2:]))}", total


def volume(args: argparse.Namespace) -> None:
    configs = [os.path.join(ROOT, "configs", "inference.yaml"), *args.config]
    tcmalloc = None
    if args.tcmalloc:
        tcmalloc = find_tcmalloc() if args.tcmalloc == "auto" else args.tcmalloc
        if tcmalloc is None or not os.path.isfile(tcmalloc):
            raise SystemExit(f"--tcmalloc: {args.tcmalloc!r} not found; python -m scripts.allocator says how to get it")
    unknown = [name for name in args.only if name not in SETTINGS]
    if unknown:
        raise SystemExit(f"--only: unknown setting {unknown[0]!r}; expected some of {list(SETTINGS)}")
    # where the bundle runs the network: the config's choice (CUDA when present) unless overridden (-- --device cpu)
    device = torch.device(_parser(configs, args.overrides).get_parsed_content("device"))
    print(
        f"CPU: {cpu_kind()}; torch threads: {torch.get_num_threads()}; torch {torch.__version__}; "
        f"allocator: {loaded_allocator()}"
    )
    reduced = resolve_precision("auto", device)
    if device.type == "cuda":
        print(f"network on {device} ({torch.cuda.get_device_name(device)}); peak GiB: the host process's memory")
    peaks = {"fp32": matmul_gflops(torch.float32, device=device)}
    if reduced != "fp32":
        peaks[reduced] = matmul_gflops(_DTYPES[reduced], device=device)
    print(
        f"matmul peak on {device.type} (4096^2, median of 5): "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
    )
    source = nib.load(args.image)
    print(
        f"image: {args.image} {source.shape} voxel {tuple(round(float(z), 2) for z in source.header.get_zooms()[:3])}"
    )
    results, outputs = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        scan_dir = os.path.join(scratch, "in")
        os.makedirs(scan_dir)
        name = os.path.basename(args.image)
        os.symlink(os.path.abspath(args.image), os.path.join(scan_dir, name))
        # "plain fp32" always runs: it is the reference of the Dice columns
        settings = {k: v for k, v in SETTINGS.items() if not args.only or k in args.only or k == "plain fp32"}
        if reduced == "fp32":
            # no native BF16, or no faster: "auto" is fp32, and its settings would time the fp32 ones again
            settings = {k: v for k, v in settings.items() if not k.startswith("auto precision")}
            why = "bf16 is no faster than fp32 on this CPU" if native_bf16() else "no native BF16 on this CPU"
            print(f"{why}: --precision auto is fp32, so its settings are not run (the fp32 ones again)")
        if args.onnx:
            settings["onnxruntime (fp32 + crop)"] = [
                "--backend",
                "onnxruntime",
                "--onnx_file",
                os.path.abspath(args.onnx),
            ]
        preload = {}  # setting -> the library its process starts with (LD_PRELOAD)
        if tcmalloc:
            for setting in list(settings):
                if setting != "plain fp32":
                    settings[f"{setting} + tcmalloc"] = settings[setting]
                    preload[f"{setting} + tcmalloc"] = tcmalloc
        for index, (setting, overrides) in enumerate(settings.items()):
            env = dict(os.environ)
            if setting in preload:
                env["LD_PRELOAD"] = preload[setting]
            out = os.path.join(scratch, f"out{index}")
            extra = [*overrides, *args.overrides]
            command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(configs),
                       "--bundle_root", ROOT, "--dataset_dir", scan_dir, "--output_dir", out,
                       "--checkpoint", args.checkpoint, *extra]  # fmt: skip
            walls, peak = [], 0.0
            for _ in range(args.repeats):
                with tempfile.TemporaryFile("w+") as log:
                    start = time.perf_counter()
                    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)
                    _, status, usage = os.wait4(process.pid, 0)  # this child's own peak memory
                    walls.append(time.perf_counter() - start)
                    if os.waitstatus_to_exitcode(status) != 0:
                        log.seek(0)
                        raise SystemExit(f"benchmark run '{setting}' failed:\n{log.read()[-3000:]}")
                peak = max(peak, usage.ru_maxrss / 2**20)
            (seg,) = [f for f in os.listdir(out) if f.endswith("_seg.nii.gz")]
            outputs[setting] = np.asarray(nib.load(os.path.join(out, seg)).dataobj)
            shape, flops = _network_work(configs, extra, os.path.join(scan_dir, name))
            results[setting] = (statistics.median(walls), peak, shape, flops)
            # as it goes: a run cut short (a time limit) keeps the settings it finished
            print(f"[{index + 1}/{len(settings)}] {setting}: {results[setting][0]:.1f} s, {peak:.2f} GiB", flush=True)
    reference = outputs["plain fp32"]
    labels = [int(v) for v in np.unique(reference) if v != 0]
    print(f"\n{'setting':<62} {'wall s':>7} {'peak GiB':>9} {'slices':>14} {'TFLOP':>6} {'floor s':>12} "
          f"{'min Dice':>9} {'mean Dice':>9}")  # fmt: skip
    for setting, (wall, peak, shape, flops) in results.items():
        dice = _dice(reference, outputs[setting], labels) or {0: float(np.array_equal(reference, outputs[setting]))}
        floors = "/".join(f"{flops / 1e9 / p:.0f}" for p in peaks.values())
        print(f"{setting:<62} {wall:>7.1f} {peak:>9.2f} {shape:>14} {flops / 1e12:>6.1f} {floors:>12} "
              f"{min(dice.values()):>9.4f} {np.mean(list(dice.values())):>9.4f}")  # fmt: skip
    print(
        f"\nwall: median of {args.repeats}, end to end (process start to label file written); slices: those handed to "
        f"the network after the volume's crop; TFLOP: its passes, over each batch's foreground box where the setting "
        f"cuts them (crop_foreground boxes); floor: TFLOP / matmul peak ({'/'.join(peaks)}); Dice: per structure "
        f"against 'plain fp32' ({len(labels)} structures present)"
    )
    # Linux charges a child with the memory of the process it was forked from: a setting's peak cannot read below this
    print(f"this benchmark's own peak memory: {_own_peak_gib():.2f} GiB (a floor of the 'peak GiB' column)")


def peer_networks(
    num_classes: int, features: int, kernel_size: int, monai_peers: bool = True
) -> dict[str, torch.nn.Module]:
    """Ours (no SE, scSE) and MONAI's peers, 2D, one input channel, ``num_classes`` outputs, ``features`` filters.

    MONAI's ``BasicUNet`` gets ``features`` at its first level, doubling down to 8x (its own 3x3 kernels);
    ``Quicknat`` (the dense blocks our FC-DenseNet follows) gets ``features`` filters and ``kernel_size`` kernels.
    ``monai_peers=False``: ours only (the SE blocks' cost, in a third of the time).
    """
    from monai.networks.nets import BasicUNet, Quicknat

    from .networks import get_network

    nets: dict[str, torch.nn.Module] = {}
    for arch in ("unet", "sdnet", "densenet"):
        for se in ("none", "scse"):
            nets[f"ours {arch} + {se}"] = get_network(
                arch, se, 2, 1, num_classes, features=features, kernel_size=kernel_size
            )
    if not monai_peers:
        return nets
    f = features
    nets["MONAI BasicUNet"] = BasicUNet(2, 1, num_classes, features=(f, f, 2 * f, 4 * f, 8 * f, f))
    for se in ("None", "CSE"):
        nets[f"MONAI Quicknat + {se}"] = Quicknat(num_classes, 1, f, kernel_size, se_block=se)
    return nets


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def inference_step(
    net: torch.nn.Module, x: torch.Tensor, precision: str = "fp32", channels_last: bool = False
) -> Callable[[], None]:
    """One inference forward pass of ``net`` on ``x`` as the inference config runs it (``FastInference``: autocast
    unless ``precision`` is fp32, channels-last memory if asked, which converts ``net`` in place), for timing."""
    fast = FastInference(net, precision, channels_last, x.device)

    def step() -> None:
        with torch.inference_mode():
            fast(x)

    return step


def _training_step(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str) -> Callable[[], None]:
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-6, momentum=0.95)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(x.device, precision):
            logits = net(x)
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        optimizer.step()

    return step


def _count_flops(step: Callable[[], None]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def _peer_memory(args: argparse.Namespace, name: str) -> float:
    """GiB: peak memory of one inference batch and one training step of ``name`` (a process of its own on a CPU)."""
    device = torch.device(args.device)
    if device.type == "cuda":
        net = peer_networks(args.classes, args.features, args.kernel_size)[name].to(device)
        x = torch.randn(args.batch, 1, args.size, args.size, device=device)
        y = torch.randint(0, args.classes, (args.batch, args.size, args.size), device=device)
        torch.cuda.reset_peak_memory_stats(device)
        inference_step(net.eval(), x, args.precision, args.channels_last)()
        _training_step(net.train().to(memory_format=torch.contiguous_format), x, y, args.precision)()
        return torch.cuda.max_memory_allocated(device) / 2**30
    command = [sys.executable, "-m", "scripts.benchmark", "peers", "--_memory_of", name,
               *[f"--{k}={v}" for k, v in vars(args).items() if k in _PEER_OPTIONS]]  # fmt: skip
    # the child reports its own peak: the rusage of a child forked from this (large) process counts this one's memory
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"memory run of '{name}' failed:\n{result.stderr[-3000:]}")
    return float(result.stdout.split()[-1])


def _own_peak_gib() -> float:
    """This process's peak resident memory (Linux's VmHWM; else the rusage maximum)."""
    if os.path.exists("/proc/self/status"):
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


_PEER_OPTIONS = (
    "size",
    "features",
    "kernel_size",
    "classes",
    "batch",
    "precision",
    "channels_last",
    "device",
    "threads",
)


def peers(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.precision = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    nets = peer_networks(args.classes, args.features, args.kernel_size, args.peers)
    x = torch.randn(args.batch, 1, args.size, args.size, device=device)
    y = torch.randint(0, args.classes, (args.batch, args.size, args.size), device=device)
    if args._memory_of:  # the child process of _peer_memory: one network, one batch, one step
        net = nets[args._memory_of].to(device)
        inference_step(net.eval(), x, args.precision, args.channels_last)()
        _training_step(net.train().to(memory_format=torch.contiguous_format), x, y, args.precision)()
        print(f"{_own_peak_gib():.4f}")
        return
    if device.type == "cuda":
        where = f"GPU: {torch.cuda.get_device_name(device)}"
    else:
        where = f"CPU: {cpu_kind()}; torch threads: {torch.get_num_threads()}"
    memory_format = "channels-last" if args.channels_last else "contiguous"
    print(
        f"{where}; torch {torch.__version__}; precision {args.precision}; inference {memory_format}, training "
        f"contiguous; allocator: {loaded_allocator()}"
    )
    dtype = torch.float32 if args.precision == "fp32" else _DTYPES[args.precision]
    peak = matmul_gflops(dtype, device=device)
    print(f"matmul peak ({args.precision}, 4096^2, median of 5): {peak:.0f} GFLOP/s")
    print(
        f"{args.size}x{args.size} slices, {args.features} filters, {args.kernel_size}x{args.kernel_size} kernels "
        f"(BasicUNet: 3x3), {args.classes} classes; batch {args.batch}; median of {args.repeats}, interleaved\n"
    )
    for net in nets.values():
        net.to(device)
    infer = {name: inference_step(net.eval(), x, args.precision, args.channels_last) for name, net in nets.items()}
    infer_flops = {name: _count_flops(step) for name, step in infer.items()}
    infer_runs = time_interleaved_runs(infer, args.repeats, device)
    infer_s = {name: statistics.median(t) for name, t in infer_runs.items()}
    volume_s: dict[str, float] = {}
    if args.volume_slices:
        stack = torch.randn(args.volume_slices, 1, args.size, args.size)

        def whole(net: torch.nn.Module) -> Callable[[], None]:
            fast = FastInference(net.eval(), args.precision, args.channels_last, device)

            def run() -> None:
                with torch.inference_mode():
                    for batch in stack.split(args.batch):
                        fast(batch.to(device)).argmax(1).cpu()

            return run

        volume_s = time_interleaved({name: whole(net) for name, net in nets.items()}, 1, device)
    # training as train.yaml runs it: contiguous (NCHW) memory
    train = {name: _training_step(net.train().to(memory_format=torch.contiguous_format), x, y, args.precision)
             for name, net in nets.items()}  # fmt: skip
    train_flops = {name: _count_flops(step) for name, step in train.items()}
    train_runs = time_interleaved_runs(train, args.repeats, device)
    train_s = {name: statistics.median(t) for name, t in train_runs.items()}
    memory: dict[str, float | None] = dict.fromkeys(nets)  # None: not measured (--memory false)
    if args.memory and device.type == "cuda":
        memory = {name: _peer_memory(args, name) for name in nets}
    elif args.memory:
        # a process per network, each reporting its own peak: two at a time only shortens the wait (imports)
        with ThreadPoolExecutor(max_workers=2) as pool:
            memory = dict(zip(nets, pool.map(lambda name: _peer_memory(args, name), nets)))
    ref = "ours unet + scse"
    header = ("| network | parameters | GFLOP per slice | inference ms per slice | vs ours U-Net+scSE | GFLOP/s "
              "(% of peak) | training step ms | vs ours U-Net+scSE | GFLOP/s (% of peak) |")  # fmt: skip
    if volume_s:
        header += f" {args.volume_slices} slices s |"
    header += " peak GiB |"
    print(header)
    print("|---|" + "---:|" * (header.count("|") - 2))
    rows = []
    for name, net in nets.items():
        per_slice = infer_s[name] / args.batch
        gflops_i = infer_flops[name] / infer_s[name] / 1e9
        gflops_t = train_flops[name] / train_s[name] / 1e9
        row = {"network": name, "parameters": sum(p.numel() for p in net.parameters()),
               "gflop_per_slice": infer_flops[name] / args.batch / 1e9, "inference_ms_per_slice": 1000 * per_slice,
               "inference_ratio": infer_s[name] / infer_s[ref], "inference_gflops": gflops_i,
               "train_step_ms": 1000 * train_s[name], "train_ratio": train_s[name] / train_s[ref],
               "train_gflops": gflops_t, "peak_gib": memory[name],
               "inference_runs_ms": [1000 * t for t in infer_runs[name]],
               "train_step_runs_ms": [1000 * t for t in train_runs[name]]}  # fmt: skip
        cells = [
            name,
            f"{row['parameters']:,}",
            f"{row['gflop_per_slice']:.1f}",
            f"{1000 * per_slice:.1f}",
            f"{row['inference_ratio']:.2f}",
            f"{gflops_i:.0f} ({100 * gflops_i / peak:.0f}%)",
            f"{1000 * train_s[name]:.0f}",
            f"{row['train_ratio']:.2f}",
            f"{gflops_t:.0f} ({100 * gflops_t / peak:.0f}%)",
        ]
        line = "| " + " | ".join(cells) + " |"
        if volume_s:
            row["volume_s"] = volume_s[name]
            line += f" {volume_s[name]:.1f} |"
        line += " - |" if memory[name] is None else f" {memory[name]:.2f} |"
        rows.append(row)
        print(line)
    # the SE blocks' cost as the median of the ratios within each repeat (paired_ratio), with their spread
    se_ratios = {}
    print(f"scSE / no SE: the median of the {args.repeats} ratios within a repeat, their quartiles and range")
    for arch in ("unet", "sdnet", "densenet"):
        se, plain = f"ours {arch} + scse", f"ours {arch} + none"
        ratios = {"inference": paired_ratio(infer_runs[se], infer_runs[plain]),
                  "training_step": paired_ratio(train_runs[se], train_runs[plain])}  # fmt: skip
        se_ratios[arch] = ratios
        print(f"scSE / no SE, ours {arch}: " + ", ".join(
            f"{kind.replace('_', ' ')} {r['median']:.3f} (quartiles {r['q1']:.3f}-{r['q3']:.3f}, range "
            f"{r['min']:.3f}-{r['max']:.3f})" for kind, r in ratios.items()))  # fmt: skip
    if args.peers:
        quick = "MONAI Quicknat + CSE"
        print(f"training step, {quick} / ours densenet + scse: "
              f"{train_s[quick] / train_s['ours densenet + scse']:.2f}x")  # fmt: skip
    if args.json:
        figures = {"peak_gflops": peak, "precision": args.precision, "rows": rows, "se_ratios": se_ratios}
        atomic_write(args.json, lambda path: json.dump(figures, open(path, "w"), indent=1))


def _switch(name: str) -> Callable[[str], bool]:
    """An argparse type for a true/false option whose refusal is ``as_bool``'s one line (not "invalid <lambda>")."""

    def parse(value: str) -> bool:
        try:
            return as_bool(value, name)
        except InputError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmark", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    vol = commands.add_parser("volume", help="whole-volume inference, plain vs fast paths")
    vol.add_argument("--image", required=True, help="a volume (NIfTI, or .mgz / .mgh)")
    vol.add_argument("--checkpoint", required=True, help="model.pt of the network the configs declare")
    vol.add_argument("--config", action="append", default=[], help="configs merged over inference.yaml")
    vol.add_argument("--onnx", help="the network's ONNX export, to time ONNX Runtime too (configs/onnx_export.yaml)")
    vol.add_argument("--repeats", type=int, default=1, help="runs per setting (median wall time)")
    vol.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="SETTING",
        help="run these settings (their names as the table prints them) and the plain one, not all",
    )
    vol.add_argument(
        "--tcmalloc",
        nargs="?",
        const="auto",
        help="also run every setting but the plain one with tcmalloc preloaded (a path, or found on the system)",
    )
    vol.add_argument("overrides", nargs="*", help="bundle overrides after --, e.g. -- --features 32")
    peer = commands.add_parser("peers", help="our networks (no SE, scSE) beside MONAI's BasicUNet and Quicknat")
    peer.add_argument("--size", type=int, default=256, help="slice size (the paper's 256)")
    peer.add_argument("--features", type=int, default=64, help="filters (the paper's 64)")
    peer.add_argument("--kernel_size", type=int, default=5)
    peer.add_argument("--classes", type=int, default=28, help="28: the paper's 27 brain structures + background")
    peer.add_argument("--batch", type=int, default=4, help="slices per forward pass and per training step")
    peer.add_argument("--precision", default="fp32", choices=PRECISIONS, help="autocast precision (auto: as inference)")
    peer.add_argument(
        "--channels_last",
        type=_switch("channels_last"),
        default=True,
        help="inference in channels-last memory as configs/inference.yaml (training timed contiguous, as train.yaml)",
    )
    peer.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    peer.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    peer.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    peer.add_argument("--volume_slices", type=int, default=0, help="also time a stack of this many slices (e.g. 256)")
    peer.add_argument("--json", help="also write the figures to this JSON file")
    peer.add_argument(
        "--peers",
        type=_switch("peers"),
        default=True,
        help="also time MONAI's BasicUNet and Quicknat (false: our six networks only, for the SE blocks' cost)",
    )
    peer.add_argument(
        "--memory",
        type=_switch("memory"),
        default=True,
        help="also measure every network's peak memory (on a CPU a process each, which imports MONAI again)",
    )
    peer.add_argument("--_memory_of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    {"volume": volume, "peers": peers}[args.command](args)


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad arguments in one line before anything is measured (a missing --image failed after the matmul
    peak, a missing --onnx after every other setting, --repeats 0 and --threads -1 with tracebacks)."""
    least = {"repeats": 1}
    if args.command == "peers":
        least.update(size=16, features=1, kernel_size=1, classes=2, batch=1, threads=0, volume_slices=0)
        try:
            check_device(args.device)
        except InputError as error:
            parser.error(str(error))
    else:
        files = [("--image", args.image), ("--checkpoint", args.checkpoint), ("--onnx", args.onnx)]
        for option, path in files + [("--config", c) for c in args.config]:
            if path is not None and not os.path.isfile(path):
                parser.error(f"{option} '{path}' does not exist")
    for name, low in least.items():
        if getattr(args, name) < low:
            parser.error(f"--{name} {getattr(args, name)} is out of range; expected at least {low}")


if __name__ == "__main__":
    main()
