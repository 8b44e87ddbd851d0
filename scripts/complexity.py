"""Model complexity of the 12 network x SE combinations, as the paper reports it, and optionally their speed.

    python -m scripts.complexity                      # parameter table (Markdown)
    python -m scripts.complexity --time --size 256    # plus median forward time per batch of 2D slices on this CPU,
                                                      # the SE variants of a network taking turns in every repeat

The SE overhead is the parameter count with SE minus the count of the same network without it. The paper's U-Net has
about 2.1e6 parameters and scSE adds about 3.3e4 (1.5%).
"""

from __future__ import annotations

import argparse

import torch

from scripts.benchmark import inference_step, time_interleaved
from scripts.networks import ARCHS, SE_TYPES, get_network

__all__ = ["complexity_table", "count_parameters", "main", "time_forwards"]


def count_parameters(net: torch.nn.Module) -> int:
    """Number of trainable parameters of ``net``."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def complexity_table(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 28, **options) -> list[dict]:
    """One row per (arch, se): ``params``, ``se_params`` (overhead over the same arch without SE) and ``se_percent``."""
    rows = []
    for arch in ARCHS:
        base = count_parameters(get_network(arch, "none", spatial_dims, in_channels, out_channels, **options))
        for se in SE_TYPES:
            n = count_parameters(get_network(arch, se, spatial_dims, in_channels, out_channels, **options))
            rows.append(
                {"arch": arch, "se": se, "params": n, "se_params": n - base, "se_percent": 100.0 * (n - base) / base}
            )
    return rows


def time_forwards(nets: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int = 7) -> dict[str, float]:
    """Median wall time in seconds of inference forward passes of each network on ``x``.

    The networks take turns within every repeat (after one warm-up pass each), so a change in the machine's load
    affects all of them alike and their ratios stay comparable (:func:`scripts.benchmark.time_interleaved`).
    """
    return time_interleaved({name: inference_step(net.eval(), x) for name, net in nets.items()}, repeats, x.device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spatial_dims", type=int, default=2)
    parser.add_argument("--in_channels", type=int, default=1)
    parser.add_argument("--out_channels", type=int, default=28, help="classes; 28 = the paper's 27 brain structures")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--kernel_size", type=int, default=5)
    parser.add_argument("--time", action="store_true", help="also time inference forward passes on this machine")
    parser.add_argument("--size", type=int, default=256, help="slice size for --time")
    parser.add_argument("--batch", type=int, default=4, help="slices per forward pass for --time")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads for --time (0: torch's default)")
    args = parser.parse_args(argv)
    options = {"features": args.features, "kernel_size": args.kernel_size}
    rows = complexity_table(args.spatial_dims, args.in_channels, args.out_channels, **options)

    header = "| network | SE | parameters | SE overhead | overhead % |"
    sep = "|---|---|---:|---:|---:|"
    if args.time:
        if args.threads:
            torch.set_num_threads(args.threads)
        header += f" forward ms ({args.batch}x{args.size}^{args.spatial_dims}) | time vs no SE |"
        sep += "---:|---:|"
        x = torch.randn(args.batch, args.in_channels, *([args.size] * args.spatial_dims))
        for arch in ARCHS:
            torch.manual_seed(0)
            nets = {
                se: get_network(arch, se, args.spatial_dims, args.in_channels, args.out_channels, **options)
                for se in SE_TYPES
            }
            seconds = time_forwards(nets, x, args.repeats)
            for row in rows:
                if row["arch"] == arch:
                    row["seconds"] = seconds[row["se"]]
                    row["ratio"] = seconds[row["se"]] / seconds["none"]
    print(
        f"{args.spatial_dims}D, {args.in_channels} input channel(s), {args.out_channels} classes, "
        f"{args.features} features, {args.kernel_size}x{args.kernel_size} kernels "
        f"(paper: U-Net about 2.1e6 parameters, scSE +3.3e4 = 1.5%)"
    )
    print(header)
    print(sep)
    for row in rows:
        line = f"| {row['arch']} | {row['se']} | {row['params']:,} | {row['se_params']:+,} | {row['se_percent']:.2f} |"
        if args.time:
            line += f" {1000 * row['seconds']:.1f} | {row['ratio']:.3f} |"
        print(line)


if __name__ == "__main__":
    main()
