"""scSE / no SE in the inference path (``FastInference``, channels-last), fp32 and bf16, ours only: the before/after
of the scSE layout fix (commit eba840d). Pass the root of a checkout of the commit to time (the code is imported from
there), and run it alone on the machine with tcmalloc preloaded (output: cpu_se_layout_probe.txt):

    git worktree add ../before 2eccc17
    for root in ../before .; do
        LD_PRELOAD=$(python -m scripts.allocator) python docs/results/benchmark/cpu_se_layout_probe.py $root
    done

4 slices of 256 x 256, 64 filters, 5x5 kernels, 28 classes, 2 threads; each network's variants take turns, median of 5.
"""

import functools
import subprocess
import sys

root = sys.argv[1]
sys.path.insert(0, root)

import torch  # noqa: E402

from scripts.benchmark import peer_networks, time_interleaved  # noqa: E402
from scripts.inference import FastInference  # noqa: E402

torch.set_num_threads(2)
commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
print(f"commit {commit.strip()}")
torch.manual_seed(0)
nets = {name: net for name, net in peer_networks(28, 64, 5).items() if name.startswith("ours")}
x = torch.randn(4, 1, 256, 256)
for precision in ("fp32", "bf16"):
    fast = {name: FastInference(net.eval(), precision=precision, channels_last=True) for name, net in nets.items()}
    with torch.inference_mode():
        median = time_interleaved({name: functools.partial(step, x) for name, step in fast.items()}, 5, x.device)
    for arch in ("unet", "sdnet", "densenet"):
        plain, se = median[f"ours {arch} + none"], median[f"ours {arch} + scse"]
        print(
            f"{precision} {arch}: no SE {1000 * plain:.0f} ms, scSE {1000 * se:.0f} ms, scSE / no SE {se / plain:.3f}"
        )
