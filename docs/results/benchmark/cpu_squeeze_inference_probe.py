"""Inference of a network without SE and with scSE, and scSE with the squeeze of the commit before bc763f2
(torch.matmul), interleaved: 4 x 1 x 256 x 256, 64 filters, 5x5, 28 classes, fp32, channels-last as FastInference
runs it, 2 threads. From the bundle root:

    LD_PRELOAD=$(python -m scripts.allocator) python docs/results/benchmark/cpu_squeeze_inference_probe.py unet 9
"""
import sys, torch
sys.path.insert(0, ".")
from scripts.benchmark import inference_step, time_interleaved
from scripts.networks import get_network, se
torch.set_num_threads(2)
arch = sys.argv[1]; reps = int(sys.argv[2])
torch.manual_seed(0)
x = torch.randn(4, 1, 256, 256)
nets = {s: get_network(arch, s, 2, 1, 28, features=64, kernel_size=5).eval() for s in ("none", "scse")}
steps = {s: inference_step(n, x, "fp32", True) for s, n in nets.items()}
new = se.SpatialSELayer.project
def old_project(self, x):
    if x.device.type != "cpu":
        return self.squeeze(x)
    q = torch.matmul(self.squeeze.weight.view(-1), x.flatten(2))
    q = q + self.squeeze.bias.to(q.dtype)
    return q.view([x.shape[0], 1] + list(x.shape[2:]))
def old():
    se.SpatialSELayer.project = old_project
    try: steps["scse"]()
    finally: se.SpatialSELayer.project = new
steps["scse matmul squeeze"] = old
t = time_interleaved(steps, reps, torch.device("cpu"))
for k, v in t.items(): print(f"{arch} inference {k}: {v*1e3:.0f} ms per 4 slices, / none {v/t['none']:.3f}")
