"""Forward + backward of one SE block on 4 x 64 x 256 x 256 fp32 (a full-resolution block of the paper's networks),
2 threads, the variants interleaved, median of 9: no SE (the input's copy and its gradient only), sSE and scSE as
the bundle computes them in CPU training, and both again with the code before commit bc763f2 (sSE's squeeze by
torch.matmul, scSE through autograd's own graph). From the bundle root:

    LD_PRELOAD=$(python -m scripts.allocator) python docs/results/benchmark/cpu_se_block_probe.py
"""

import functools
import sys

import torch

sys.path.insert(0, ".")
from scripts.benchmark import time_interleaved  # noqa: E402
from scripts.networks import se  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)
N, C, H = 4, 64, 256
x0, g = torch.randn(N, C, H, H), torch.randn(N, C, H, H)
sse, scse = se.SpatialSELayer(2, C), se.ChannelSpatialSELayer(2, C)


def old_project(self, x):
    q = torch.matmul(self.squeeze.weight.view(-1), x.flatten(2)) + self.squeeze.bias
    return q.view([x.shape[0], 1] + list(x.shape[2:]))


def old(block):
    def run(x):
        new_project, new_use = se.SpatialSELayer.project, se.ChannelSpatialSELayer._use_fused
        se.SpatialSELayer.project, se.ChannelSpatialSELayer._use_fused = old_project, lambda self, x: False
        try:
            return block(x)
        finally:
            se.SpatialSELayer.project, se.ChannelSpatialSELayer._use_fused = new_project, new_use

    return run


variants = {"none": lambda x: x * 1, "sse": sse, "sse before": old(sse), "scse": scse, "scse before": old(scse)}


def step(block):
    x = x0.clone().requires_grad_()
    block(x).backward(g)


median = time_interleaved({k: functools.partial(step, b) for k, b in variants.items()}, 9, torch.device("cpu"))
print(f"CPU avx512f flags: {open('/proc/cpuinfo').read().count('avx512f')}; torch {torch.__version__}")
for k, t in median.items():
    print(f"{k:12s} forward + backward {t * 1e3:6.1f} ms")
