"""Where the time of one bundle run goes, from py-spy's raw (collapsed) stacks: the run's phases, then the network's
time by the innermost Python function (the convolutions, normalisation, SE operations ...).

    py-spy record -r 20 --idle -f raw -o prof.txt -- python -m monai.bundle run inference --config_file configs/inference.yaml ...
    python docs/results/benchmark/pyspy_phases.py prof.txt 20
"""
import collections
import sys

PHASES = [  # the first phase with a frame of the stack matching one of its keys wins
    ("import", ["<module> (<frozen importlib", "_find_and_load", "import_module"]),
    ("check volumes", ["check_volumes"]),
    ("save", ["SaveImage", "AtomicNibabelWriter", "write_nifti", "to_filename"]),
    ("invert", ["Invertd", "inverse ("]),
    ("network", ["conv2d", "_conv_forward", "scripts/networks", "FastInference", "ForegroundBoxNetwork"]),
    ("slice inferer", ["SliceInferer", "sliding_window_inference", "ArgmaxInferer"]),
    ("scale intensity", ["ScaleIntensityRangePercentiles", "percentile"]),
    ("load", ["LoadImage", "nibabel"]),
    ("orientation/crop", ["Orientation", "CropForeground"]),
    ("config parse", ["ConfigParser", "config_parser", "reference_resolver"]),
]
rate = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
phases, network = collections.Counter(), collections.Counter()
for line in open(sys.argv[1]):
    stack, _, count = line.rstrip().rpartition(" ")
    n, frames = int(count), stack.split(";")
    phase = next((name for name, keys in PHASES if any(k in f for f in frames for k in keys)), "other")
    phases[phase] += n
    if phase == "network":
        network[frames[-1].split(" (")[0]] += n
total, in_network = sum(phases.values()), sum(network.values())
print("phase                    s      %")
for name, n in phases.most_common():
    print(f"{name:20s} {n / rate:6.1f} {100 * n / total:6.1f}")
print(f"{'total':20s} {total / rate:6.1f}\n\nthe network's time by innermost Python function (top 10)")
for name, n in network.most_common(10):
    print(f"{name:45s} {n / rate:6.1f} s {100 * n / in_network:5.1f}%")
