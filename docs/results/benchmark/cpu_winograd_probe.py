"""Probe: Winograd F(2x2, 5x5) in torch ops against F.conv2d for the paper U-Net's 5x5 64->64 convolution on CPU.

    OMP_NUM_THREADS=2 LD_PRELOAD=$(python -m scripts.allocator) python docs/results/benchmark/cpu_winograd_probe.py 4

Winograd's minimal filtering computes 2x2 outputs of a 5x5 filter from a 6x6 input tile with 36 multiplications
instead of 100 (2.78x less arithmetic), as 36 matrix products of (tiles x 64) by (64 x 64), between transforms of the
input and output tiles. Printed: the error against F.conv2d, the median time of the direct convolution (oneDNN), of
the Winograd convolution in torch ops, and of its two least parts alone (the 36 products; cutting the input into
tiles) on a batch of N slices of the head's 176 x 208 box.
"""

import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def matrices(m=2, r=5, points=(0.0, 1.0, -1.0, 2.0, -2.0)):
    a = m + r - 1
    p = np.array(points)
    AT = np.zeros((m, a))
    G = np.zeros((a, r))
    for j, pj in enumerate(p):
        AT[:, j] = pj ** np.arange(m)
        f = np.prod([pj - q for q in p if q != pj])
        G[j] = pj ** np.arange(r) / f
    AT[m - 1, a - 1] = 1.0
    G[a - 1, r - 1] = 1.0
    # B^T from sum_j AT[i,j] G[j,k] BT[j,l] = [l == i + k]
    rows, rhs = [], []
    for i in range(m):
        for k in range(r):
            for col in range(a):
                row = np.zeros((a, a))
                for j in range(a):
                    row[j, col] = AT[i, j] * G[j, k]
                rows.append(row.ravel())
                rhs.append(1.0 if col == i + k else 0.0)
    sol = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    BT = sol.reshape(a, a)
    err = np.abs(np.array(rows) @ sol - np.array(rhs)).max()
    return [torch.tensor(x, dtype=torch.float32) for x in (AT, G, BT)], err


(AT, G, BT), err = matrices()
print("construction residual", err)


def wino_weights(w):  # (Co, Ci, 5, 5) -> (36, Ci, Co)
    U = torch.einsum("ak,oikl,bl->aboi", G, w, G)
    return U.reshape(36, w.shape[0], w.shape[1]).transpose(1, 2).contiguous()


def wino_conv(x, U, Co):
    N, C, H, W = x.shape
    Hp, Wp = H + H % 2, W + W % 2
    xp = F.pad(x, (2, 2 + Wp - W, 2, 2 + Hp - H))
    d = xp.unfold(2, 6, 2).unfold(3, 6, 2)  # N C th tw 6 6
    th, tw = d.shape[2], d.shape[3]
    V = torch.einsum("ai,ncxyij,bj->abnxyc", BT, d, BT).reshape(36, N * th * tw, C)
    M = torch.bmm(V, U).reshape(6, 6, N, th, tw, Co)
    Y = torch.einsum("ia,abnxyo,jb->noxiyj", AT, M, AT).reshape(N, Co, th * 2, tw * 2)
    return Y[:, :, :H, :W]


torch.manual_seed(0)
N, C, H, W = int(sys.argv[1]) if len(sys.argv) > 1 else 4, 64, 176, 208
x = torch.randn(N, C, H, W)
w = torch.randn(C, C, 5, 5) * 0.05
b = torch.zeros(C)
U = wino_weights(w)
with torch.inference_mode():
    ref = F.conv2d(x, w, b, padding=2)
    out = wino_conv(x, U, C)
    print("max abs err", (out - ref).abs().max().item(), "ref scale", ref.abs().max().item())
    xcl = x.contiguous(memory_format=torch.channels_last)
    wcl = w.contiguous(memory_format=torch.channels_last)
    steps = {
        "conv2d": lambda: F.conv2d(x, w, b, padding=2),
        "conv2d channels-last": lambda: F.conv2d(xcl, wcl, b, padding=2),
        "winograd F(2x2,5x5)": lambda: wino_conv(x, U, C),
    }
    times = {k: [] for k in steps}
    for s in steps.values():
        s()
    for _ in range(7):
        for k, s in steps.items():
            t = time.perf_counter()
            s()
            times[k].append(time.perf_counter() - t)
    flops = 2 * N * H * W * C * C * 25
    P = N * ((H + 1) // 2) * ((W + 1) // 2)
    V, xp = torch.randn(36, P, C), F.pad(x, (2, 2, 2, 2))
    steps2 = {
        "  its 36 products alone": lambda: torch.bmm(V, U),
        "  its input tiles alone": lambda: xp.unfold(2, 6, 2).unfold(3, 6, 2).contiguous(),
    }
    for s in steps2.values():
        s()
    for k, s in steps2.items():
        times[k] = []
        for _ in range(7):
            t = time.perf_counter()
            s()
            times[k].append(time.perf_counter() - t)
    for k, v in times.items():
        med = statistics.median(v)
        print(f"{k:<24} {med*1e3:8.1f} ms  {flops/med/1e9:6.1f} GFLOP/s of the direct convolution's arithmetic")
