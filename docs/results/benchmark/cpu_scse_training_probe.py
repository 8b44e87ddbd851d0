"""scSE / no SE per training step with the fused scSE sum (commit bc763f2) and with autograd's plain graph of the
same sum forced, the variants interleaved (scripts.benchmark.time_interleaved), 4 x 1 x 256 x 256, 64 filters, 5x5,
28 classes, fp32, 2 threads.

    LD_PRELOAD=$(python -m scripts.allocator) python docs/results/benchmark/cpu_scse_training_probe.py 256 unet 3
"""
import sys, torch
sys.path.insert(0, ".")  # run from the bundle root
from scripts.benchmark import _training_step, time_interleaved
from scripts.networks import get_network, se
torch.set_num_threads(2)
size, arch = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
x = torch.randn(4, 1, size, size); y = torch.randint(0, 28, (4, size, size))
nets = {s: get_network(arch, s, 2, 1, 28, features=64, kernel_size=5) for s in ("none", "scse")}
steps = {s: _training_step(n, x, y, "fp32") for s, n in nets.items()}
orig = se.ChannelSpatialSELayer._use_fused
def plain():
    se.ChannelSpatialSELayer._use_fused = lambda self, x: False
    try: steps["scse"]()
    finally: se.ChannelSpatialSELayer._use_fused = orig
steps["scse plain"] = plain
t = time_interleaved(steps, int(sys.argv[3]) if len(sys.argv) > 3 else 3, torch.device("cpu"))
for k, v in t.items(): print(f"{arch} {k}: {v*1e3:.0f} ms, / none {v/t['none']:.3f}")
