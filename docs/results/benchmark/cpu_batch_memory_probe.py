"""Time per slice and peak memory of the paper's U-Net + scSE (64 filters, 5x5, 28 classes, random weights) on
batches of B slices of S x S through FastInference (fp32, channels-last), one process per batch size, as the peak is
the process's:

    for b in 16 8 4; do OMP_NUM_THREADS=2 PYTHONPATH=. python docs/results/benchmark/cpu_batch_memory_probe.py $b 256; done
"""

import resource
import sys
import time

import torch

from scripts.inference import FastInference
from scripts.networks import get_network

torch.set_num_threads(2)
b, side = int(sys.argv[1]), int(sys.argv[2])
net = get_network("unet", "scse", 2, 1, 28, features=64, kernel_size=5, se_mode="sum").eval()
fast = FastInference(net, "fp32", True, "cpu")
x = torch.rand(b, 1, side, side)
with torch.inference_mode():
    fast(x[:1])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    times = []
    for _ in range(max(1, 48 // b)):  # 48 slices per batch size
        start = time.perf_counter()
        fast(x).argmax(1)
        times.append((time.perf_counter() - start) / b)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
median = sorted(times)[len(times) // 2]
print(f"batch {b} side {side}: {median * 1000:.0f} ms per slice, peak {peak:.2f} GiB (after one slice {base:.2f})")
