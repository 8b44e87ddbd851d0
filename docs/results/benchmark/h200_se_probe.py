"""scSE / no SE on CUDA: eager vs CUDA-graph replay (launches removed) vs torch.compile (fused), whole networks.

Run from the repository root with PYTHONPATH=. on a CUDA machine (output: h200_se_probe.txt, at commit ea0befe).
"scse_conv" patches sSE's squeeze to the 1x1 convolution, which the networks use on CUDA since commit d076036.
"""
import argparse
import time
import types

import torch

from scripts.benchmark import _autocast, time_interleaved
from scripts.networks import get_network
from scripts.networks.se import SpatialSELayer

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=16)
p.add_argument("--repeats", type=int, default=20)
p.add_argument("--archs", nargs="+", default=["unet", "sdnet", "densenet"])
p.add_argument("--compile", action="store_true")
args = p.parse_args()
dev = torch.device("cuda")
torch.manual_seed(0)
x = torch.randn(args.batch, 1, 256, 256, device=dev)


def graphed(net, precision):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.inference_mode(), _autocast(dev, precision):
        for _ in range(3):
            net(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g), torch.inference_mode(), _autocast(dev, precision):
        net(x)
    return g.replay


for precision in ("fp32", "bf16"):
    for arch in args.archs:
        steps = {}
        for se in ("none", "scse", "scse_conv"):
            net = get_network(arch, se.split("_")[0], out_channels=28, features=64, kernel_size=5).to(dev).eval()
            if se == "scse_conv":  # sSE's squeeze through cuDNN's 1x1 convolution instead of the matrix product
                for m in net.modules():
                    if isinstance(m, SpatialSELayer):
                        m.project = types.MethodType(lambda self, t: self.squeeze(t), m)

            def eager(net=net):
                with torch.inference_mode(), _autocast(dev, precision):
                    net(x)

            steps[f"eager {se}"] = eager
            steps[f"graph {se}"] = graphed(net, precision)
            if args.compile:
                t0 = time.perf_counter()
                cnet = torch.compile(net)
                with torch.inference_mode(), _autocast(dev, precision):
                    cnet(x)
                ct = time.perf_counter() - t0

                def comp(cnet=cnet):
                    with torch.inference_mode(), _autocast(dev, precision):
                        cnet(x)

                steps[f"compiled {se}"] = comp
                print(f"{arch} {se} {precision}: compiled in {ct:.1f} s", flush=True)
        t = time_interleaved(steps, args.repeats, dev)
        row = "  ".join(f"{k} {v * 1e3 / args.batch:.3f}" for k, v in t.items())
        ratios = "  ".join(
            f"{m}: {t[f'{m} scse'] / t[f'{m} none']:.3f} (sSE as conv {t[f'{m} scse_conv'] / t[f'{m} none']:.3f})" for m in ("eager", "graph", "compiled") if f"{m} none" in t
        )
        print(f"{precision} {arch} batch {args.batch}, ms per slice: {row}\n   scSE / no SE  {ratios}", flush=True)
