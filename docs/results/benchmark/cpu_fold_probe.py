"""Probe: batch norm folded into the convolutions, and TorchScript's freeze + optimize_for_inference, against eager.

    export OMP_NUM_THREADS=2 LD_PRELOAD=$(python -m scripts.allocator) PYTHONPATH=.
    python docs/results/benchmark/cpu_fold_probe.py unet   # or sdnet, densenet

One network with scSE (64 filters, 5x5, 28 classes, batch norms given random statistics), channels-last, a batch of
4 slices of the head's 176 x 208 box, inference mode; the variants take turns, median of 7. Printed: the largest
difference of the logits and the labels that differ, and the times.
"""

import copy
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from scripts.networks import get_network


def fold(net: nn.Module) -> nn.Module:
    """A copy with every MONAI ``Convolution``'s batch norm folded into its convolution."""
    net = copy.deepcopy(net)
    for m in net.modules():
        children = dict(m.named_children())
        if "conv" in children and "adn" in children and hasattr(children["adn"], "N"):
            m.conv = fuse_conv_bn_eval(m.conv, children["adn"].N)
            children["adn"].N = nn.Identity()
    return net


arch = sys.argv[1] if len(sys.argv) > 1 else "unet"
torch.manual_seed(0)
net = get_network(arch, "scse", 2, 1, 28, features=64, kernel_size=5).eval()
for m in net.modules():
    if isinstance(m, nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2)
        m.weight.data.uniform_(0.5, 1.5)
        m.bias.data.uniform_(-0.2, 0.2)
x = torch.randn(4, 1, 176, 208).contiguous(memory_format=torch.channels_last)
net = net.to(memory_format=torch.channels_last)
folded = fold(net)
with torch.inference_mode():
    scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(net, x)))
    variants = {"eager": net, "batch norm folded": folded, "jit freeze + optimize_for_inference": scripted}
    ref = net(x)
    for name, f in variants.items():
        out = f(x)
        print(
            f"{name}: max |logit difference| {(out - ref).abs().max().item():.1e}, "
            f"labels differing {(out.argmax(1) != ref.argmax(1)).sum().item()} of {ref[:, 0].numel()}"
        )
    times = {name: [] for name in variants}
    for _ in range(7):
        for name, f in variants.items():
            start = time.perf_counter()
            f(x)
            times[name].append(time.perf_counter() - start)
    eager = statistics.median(times["eager"])
    for name, t in times.items():
        print(f"{name:<38} {statistics.median(t) * 1e3:7.0f} ms  {statistics.median(t) / eager:.3f} of eager")
