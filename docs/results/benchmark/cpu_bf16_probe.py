"""Is bf16 faster than float32 on this CPU? What ``--precision auto`` decides on (``scripts.inference.bf16_speedup``:
one 5x5 convolution, 64 -> 64 channels, 2 x 64 x 64 x 64) beside what it stands for: the 4096^2 matmul, the
convolution at the paper's sizes, and the whole networks (the paper's U-Net + scSE at 256^2 and the shipped brain
model's at 128^2, random weights) in inference (FastInference, channels-last) and per training step (forward in
autocast, backward, SGD); medians after a warm-up, fp32 and bf16 taking turns (scripts.benchmark.time_interleaved):

    OMP_NUM_THREADS=2 LD_PRELOAD=$(python -m scripts.allocator) PYTHONPATH=. \
        python docs/results/benchmark/cpu_bf16_probe.py
"""

import torch
from torch.nn import functional as F

from scripts.allocator import loaded_allocator
from scripts.benchmark import cpu_kind, matmul_gflops, time_interleaved
from scripts.inference import FastInference, bf16_speedup
from scripts.networks import get_network

torch.set_num_threads(2)
CPU = torch.device("cpu")


def convolution(batch: int, side: int) -> None:
    x = torch.randn(batch, 64, side, side).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 5, 5).div_(40).contiguous(memory_format=torch.channels_last)
    xb, wb = x.bfloat16(), w.bfloat16()
    with torch.no_grad():
        times = time_interleaved(
            {"fp32": lambda: F.conv2d(x, w, padding=2), "bf16": lambda: F.conv2d(xb, wb, padding=2)}, 5, CPU
        )
    print(
        f"conv 5x5 64->64 on {batch}x64x{side}^2: fp32 {times['fp32'] * 1e3:.1f} ms, bf16 {times['bf16'] * 1e3:.1f} "
        f"ms: bf16 {times['fp32'] / times['bf16']:.2f}x"
    )


def network(name: str, features: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = get_network("unet", "scse", 2, 1, 28, features=features, kernel_size=5).eval()
    x = torch.randn(shape)
    fast = {p: FastInference(net, p, True, "cpu") for p in ("fp32", "bf16")}
    with torch.no_grad():
        times = time_interleaved({"fp32": lambda: fast["fp32"](x), "bf16": lambda: fast["bf16"](x)}, 3, CPU)
    print(
        f"{name}, inference: fp32 {times['fp32']:.3f} s, bf16 {times['bf16']:.3f} s: bf16 "
        f"{times['fp32'] / times['bf16']:.2f}x"
    )
    net.train().to(memory_format=torch.contiguous_format)
    optimiser = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    y = torch.randint(0, 28, (shape[0], *shape[2:]))

    def step(precision: str) -> None:
        optimiser.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()
        optimiser.step()

    times = time_interleaved({"fp32": lambda: step("fp32"), "bf16": lambda: step("bf16")}, 3, CPU)
    print(
        f"{name}, training step: fp32 {times['fp32']:.3f} s, bf16 {times['bf16']:.3f} s: bf16 "
        f"{times['fp32'] / times['bf16']:.2f}x"
    )


print(f"CPU: {cpu_kind()}; torch {torch.__version__}; threads {torch.get_num_threads()}; {loaded_allocator()}")
print(f"bf16_speedup (what --precision auto decides on): {bf16_speedup(torch.get_num_threads()):.2f}x")
fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
print(f"matmul 4096^2: fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s: bf16 {bf16 / fp32:.2f}x")
convolution(2, 64)
convolution(4, 256)
network("paper U-Net + scSE (64 filters) on 4 x 256^2", 64, (4, 1, 256, 256))
network("brain model's U-Net + scSE (32 filters) on 16 x 128^2", 32, (16, 1, 128, 128))
