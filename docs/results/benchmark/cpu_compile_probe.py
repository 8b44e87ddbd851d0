"""torch.compile on a CPU: whole networks for inference (inductor, freezing) and the brain profile's training step.

Run from the repository root with PYTHONPATH=. and tcmalloc preloaded, alone on the machine (output:
cpu_compile_probe.txt, at commit eba840d):

    LD_PRELOAD=$(python -m scripts.allocator) PYTHONPATH=. python docs/results/benchmark/cpu_compile_probe.py

Inference: 4 slices of 256 x 256, 64 filters, 5x5 (the paper's profile), channels-last as ``FastInference`` runs it;
eager, then the same network compiled, median of 5 each. Training: U-Net + scSE, 32 filters, 32 slices of 128 x 128,
bf16 autocast forward, SGD (the brain profile), eager and compiled taking turns, median of 5.
"""

import statistics
import time

import torch
import torch._dynamo

from scripts.networks import get_network

torch.set_num_threads(2)
x = torch.randn(4, 1, 256, 256).contiguous(memory_format=torch.channels_last)


def median_s(step, repeats: int = 5) -> float:
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


for precision in ("fp32", "bf16"):
    for arch in ("unet", "sdnet"):
        for se in ("none", "scse"):
            torch._dynamo.reset()  # one network's compiled code per run, no recompilation limit across networks
            torch.manual_seed(0)
            net = get_network(arch, se, 2, 1, 28, features=64, kernel_size=5).eval()
            net.to(memory_format=torch.channels_last)
            compiled = torch.compile(net, options={"freezing": True})
            with torch.inference_mode(), autocast(precision):
                eager_s = median_s(lambda net=net: net(x))
                start = time.perf_counter()
                same = torch.equal(compiled(x).argmax(1), net(x).argmax(1))
                compile_s = time.perf_counter() - start
                compiled_s = median_s(lambda compiled=compiled: compiled(x))
            print(
                f"inference {precision} {arch} + {se}: eager {1000 * eager_s:.0f} ms, compiled {1000 * compiled_s:.0f} "
                f"ms ({eager_s / compiled_s:.2f}x), first call {compile_s:.0f} s, same labels: {same}",
                flush=True,
            )

torch._dynamo.reset()
xb, yb = torch.randn(32, 1, 128, 128), torch.randint(0, 28, (32, 128, 128))
steps = {}
for name in ("eager", "compiled"):
    torch.manual_seed(0)
    net = get_network("unet", "scse", 2, 1, 28, features=32, kernel_size=5).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.95)
    model = torch.compile(net) if name == "compiled" else net

    def step(model=model, optimizer=optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast("bf16"):
            logits = model(xb)
        torch.nn.functional.cross_entropy(logits.float(), yb).backward()
        optimizer.step()

    start = time.perf_counter()
    step()
    print(f"training {name}: first step {time.perf_counter() - start:.1f} s", flush=True)
    steps[name] = step
times = {name: [] for name in steps}
for _ in range(5):
    for name, step in steps.items():
        start = time.perf_counter()
        step()
        times[name].append(time.perf_counter() - start)
eager_s, compiled_s = (statistics.median(times[name]) for name in ("eager", "compiled"))
print(f"training bf16 unet + scse, 32 x 128^2: eager {eager_s:.3f} s, compiled {compiled_s:.3f} s "
      f"({eager_s / compiled_s:.2f}x)")  # fmt: skip
