"""The default run's arithmetic rate on this CPU: its network (U-Net + scSE, 64 filters, 5x5, 28 classes) in one
training step (a batch of 4 slices of 64 x 64, SGD as train.yaml) and one validation forward pass (16 slices, as the
validation's SliceInferer), contiguous and channels-last, against a 4096^2 float32 matmul on the same machine. Run it
from the bundle root, alone on the machine, with and without tcmalloc (output: default_run_step_probe_avx2.txt):

    python docs/results/benchmark/default_run_step_probe.py
    LD_PRELOAD=$(python -m scripts.allocator) python docs/results/benchmark/default_run_step_probe.py

2 threads; the variants take turns, median of 7. GFLOP/s counts a training step as 3 forward passes.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())

import torch
from torch.utils.flop_counter import FlopCounterMode

from scripts.allocator import loaded_allocator
from scripts.benchmark import cpu_kind, matmul_gflops
from scripts.networks import get_network

torch.set_num_threads(2)
torch.manual_seed(0)
print(f"CPU: {cpu_kind()}; torch {torch.__version__}; threads 2; allocator: {loaded_allocator()}")
print(f"matmul fp32 (4096^2): {matmul_gflops(torch.float32):.0f} GFLOP/s")
x, y = torch.randn(4, 1, 64, 64), torch.randint(0, 28, (4, 64, 64))
x_val = torch.randn(16, 1, 64, 64)
steps, flops = {}, 0.0
for layout in ("contiguous", "channels_last"):
    memory = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    net = get_network("unet", "scse", 2, 1, 28, features=64, kernel_size=5).to(memory_format=memory)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.95, weight_decay=1e-4)
    if not flops:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x_val[:1])
        flops = counter.get_total_flops()

    def train(net=net, optimizer=optimizer, memory=memory):
        loss = torch.nn.functional.cross_entropy(net(x.contiguous(memory_format=memory)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def validate(net=net, memory=memory):
        net.eval()
        with torch.no_grad():
            net(x_val.contiguous(memory_format=memory))
        net.train()

    steps[f"training step, {layout}"] = (train, 3 * 4 * flops)
    steps[f"validation 16 slices, {layout}"] = (validate, 16 * flops)
print(f"forward pass: {flops / 1e9:.2f} GFLOP per 64 x 64 slice")
times = {name: [] for name in steps}
for step, _ in steps.values():
    step()
for _ in range(7):
    for name, (step, _) in steps.items():
        start = time.perf_counter()
        step()
        times[name].append(time.perf_counter() - start)
for name, (_, work) in steps.items():
    median = statistics.median(times[name])
    print(f"{name:<34} {1000 * median:7.1f} ms {work / 1e9 / median:7.1f} GFLOP/s")
