"""Where scSE's time goes on CUDA: profiler table of U-Net + scSE vs no SE, and SE-block variants timed.

Run from the repository root with PYTHONPATH=. on a CUDA machine (output: h200_se_profile.txt, at commit ea0befe).
"""

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from scripts.benchmark import _autocast, time_interleaved
from scripts.networks import get_network

p = argparse.ArgumentParser()
p.add_argument("--device", default="cuda")
p.add_argument("--size", type=int, default=256)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--repeats", type=int, default=20)
p.add_argument("--compile", action="store_true")
args = p.parse_args()
dev = torch.device(args.device)
torch.manual_seed(0)


def flush(*a):
    print(*a, flush=True)


x_img = torch.randn(args.batch, 1, args.size, args.size, device=dev)
for precision in ("fp32", "bf16"):
    nets = {se: get_network("unet", se, out_channels=28, features=64, kernel_size=5).to(dev).eval() for se in ("none", "scse")}
    for se, net in nets.items():
        with torch.inference_mode(), _autocast(dev, precision):
            for _ in range(3):
                net(x_img)
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with torch.profiler.profile(activities=acts) as prof, torch.inference_mode(), _autocast(dev, precision):
            for _ in range(5):
                net(x_img)
            if dev.type == "cuda":
                torch.cuda.synchronize()
        key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        flush(f"\n=== profile {precision} unet+{se}, 5 forwards of batch {args.batch} ===")
        flush(prof.key_averages().table(sort_by=key, row_limit=22, max_name_column_width=60))

    # SE block variants on the largest feature map
    block = nets["scse"].encoders[0].se if hasattr(nets["scse"], "encoders") else None
    if block is None:
        for m in nets["scse"].modules():
            if type(m).__name__ == "ChannelSpatialSELayer":
                block = m
                break
    dt = torch.bfloat16 if precision == "bf16" else torch.float32
    x = torch.randn(args.batch, 64, args.size, args.size, device=dev, dtype=dt)
    blk = block.to(dt)
    w = blk.sse.squeeze.weight.view(-1)
    b = blk.sse.squeeze.bias
    fc = blk.cse.fc

    def current():
        with torch.inference_mode():
            blk(x)

    def pool_mean():
        with torch.inference_mode():
            n, c = x.shape[:2]
            cg = fc(x.mean((2, 3))).view(n, c, 1, 1)
            g = cg + torch.sigmoid(torch.matmul(w, x.flatten(2)).view(n, 1, *x.shape[2:]) + b.view(1, 1, 1, 1))
            g.mul_(x)

    def conv_sse():
        with torch.inference_mode():
            n, c = x.shape[:2]
            cg = fc(x.mean((2, 3))).view(n, c, 1, 1)
            g = cg + torch.sigmoid(F.conv2d(x, blk.sse.squeeze.weight, b))
            g.mul_(x)

    def einsum_sse():
        with torch.inference_mode():
            n, c = x.shape[:2]
            cg = fc(x.mean((2, 3))).view(n, c, 1, 1)
            q = torch.einsum("c,nchw->nhw", w, x).unsqueeze(1) + b.view(1, 1, 1, 1)
            g = cg + torch.sigmoid(q)
            g.mul_(x)

    def addcmul():
        with torch.inference_mode():
            n, c = x.shape[:2]
            cg = fc(x.mean((2, 3))).view(n, c, 1, 1)
            s = torch.sigmoid(torch.matmul(w, x.flatten(2)).view(n, 1, *x.shape[2:]) + b.view(1, 1, 1, 1))
            torch.mul(x, cg).addcmul_(x, s)

    def identity_pass():  # one read + one write of x: the bandwidth floor unit
        with torch.inference_mode():
            x.mul(1.0)

    steps = {"current": current, "pool_mean": pool_mean, "conv_sse": conv_sse, "einsum_sse": einsum_sse,
             "addcmul": addcmul, "one_rw_pass": identity_pass}
    if args.compile:
        try:
            t0 = time.perf_counter()
            cblk = torch.compile(blk, dynamic=False)
            with torch.inference_mode():
                ref = blk(x)
                out = cblk(x)
            flush(f"compile {precision}: {time.perf_counter() - t0:.1f} s, max abs diff {float((out.float() - ref.float()).abs().max()):.2e}")

            def compiled():
                with torch.inference_mode():
                    cblk(x)

            steps["compiled"] = compiled
        except Exception as e:  # noqa: BLE001
            flush(f"compile failed: {type(e).__name__}: {str(e)[:300]}")
    t = time_interleaved(steps, args.repeats, dev)
    flush(f"\n=== scSE block on {tuple(x.shape)} {precision}, median of {args.repeats} (ms) ===")
    for k, v in t.items():
        flush(f"{k:12s} {v * 1e3:8.3f}  ({v / t['one_rw_pass']:.2f} rw passes)")
    sys.stdout.flush()
