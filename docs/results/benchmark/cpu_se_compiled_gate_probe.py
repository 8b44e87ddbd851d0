"""scSE / no SE in the inference path (``FastInference``, fp32, channels-last) with scSE's gate as it is (eager: the
pooling, the squeeze, the gates' sum and the product as separate passes over the feature map) and compiled by
``torch.compile`` (inductor's C++ kernels fuse them into fewer passes): does a fused gate bring the SD-Net's scSE cost
under the 3% asked (issue 12, P2)? A probe, not a path of the bundle: it needs a C++ compiler at run time and compiles
for tens of seconds. Run it alone on the machine, with tcmalloc preloaded (output: cpu_se_compiled_gate_probe.txt):

    LD_PRELOAD=$(python -m scripts.allocator) python docs/results/benchmark/cpu_se_compiled_gate_probe.py

4 slices of 256 x 256, 64 filters, 5x5 kernels, 28 classes, 2 threads; each network's variants take turns, median of
the repeats (argument 1, default 7).
"""

import copy
import functools
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from scripts.benchmark import peer_networks, time_interleaved
from scripts.inference import FastInference
from scripts.networks import se

repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 7
torch.set_num_threads(2)
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
avx512 = open("/proc/cpuinfo").read().count("avx512f")
print(f"commit {commit}, torch {torch.__version__}, grep -c avx512f /proc/cpuinfo = {avx512}, {repeats} repeats")


def gate(x, w1, b1, w2, b2, ws, bs):
    """scSE (sum) of x: x * (cSE's channel gate + sSE's spatial gate), written for inductor to fuse."""
    n, c = x.shape[0], x.shape[1]
    channel = torch.sigmoid(F.linear(torch.relu(F.linear(x.mean((2, 3)), w1, b1)), w2, b2)).view(n, c, 1, 1)
    spatial = torch.sigmoid((x * ws.view(1, c, 1, 1)).sum(1, keepdim=True) + bs.view(1, 1, 1, 1))
    return x * (channel + spatial)


compiled_gate = torch.compile(gate, dynamic=True)
eager_forward = se.ChannelSpatialSELayer.forward


def forward(self, x):
    if not getattr(self, "compiled", False):
        return eager_forward(self, x)
    fc = self.cse.fc
    squeeze = self.sse.squeeze
    return compiled_gate(x, fc[0].weight, fc[0].bias, fc[2].weight, fc[2].bias, squeeze.weight, squeeze.bias)


se.ChannelSpatialSELayer.forward = forward
torch.manual_seed(0)
nets = {name: net.eval() for name, net in peer_networks(28, 64, 5).items() if name.startswith("ours")}
for arch in ("unet", "sdnet", "densenet"):
    fused = copy.deepcopy(nets[f"ours {arch} + scse"])
    for module in fused.modules():
        if isinstance(module, se.ChannelSpatialSELayer):
            module.compiled = True
    nets[f"ours {arch} + scse compiled"] = fused
x = torch.randn(4, 1, 256, 256)
fast = {name: FastInference(net, precision="fp32", channels_last=True) for name, net in nets.items()}
with torch.inference_mode():
    for arch in ("unet", "sdnet", "densenet"):
        start = time.perf_counter()
        out = fast[f"ours {arch} + scse compiled"](x)
        took = time.perf_counter() - start
        ref = fast[f"ours {arch} + scse"](x)
        same = (out.argmax(1) == ref.argmax(1)).float().mean().item()
        print(f"{arch}: first call with the compiled gate {took:.1f} s (compiling), max |difference| "
              f"{(out - ref).abs().max().item():.2e}, the same label at {100 * same:.4f}% of the pixels")  # fmt: skip
    median = time_interleaved({name: functools.partial(step, x) for name, step in fast.items()}, repeats, x.device)
for arch in ("unet", "sdnet", "densenet"):
    plain, eager, fused = (median[f"ours {arch} + {v}"] for v in ("none", "scse", "scse compiled"))
    print(
        f"fp32 {arch}: no SE {1000 * plain:.0f} ms, scSE {1000 * eager:.0f} ms (/ no SE {eager / plain:.3f}), "
        f"scSE with the compiled gate {1000 * fused:.0f} ms (/ no SE {fused / plain:.3f})"
    )
