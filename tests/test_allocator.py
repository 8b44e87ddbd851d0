"""The allocator helpers: which malloc a process runs with, and tcmalloc giving the same network output."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scripts.allocator import find_tcmalloc, loaded_allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# one forward pass of a small U-Net + scSE, its logits' sum printed with the allocator the process ran with
_FORWARD = """
import torch
from scripts.allocator import loaded_allocator
from scripts.networks import get_network
torch.manual_seed(0)
net = get_network("unet", "scse", 2, 1, 4, features=8).eval()
with torch.inference_mode():
    out = net(torch.randn(3, 1, 64, 48))
print(loaded_allocator(), repr(out.double().sum().item()))
"""


def test_loaded_allocator_reads_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert loaded_allocator(str(maps)) == "the C library's malloc"
    maps.write_text(maps.read_text() + "7f02-7f03 r-xp 0 08:01 2 /usr/lib/libtcmalloc_minimal.so.4.5.10\n")
    assert loaded_allocator(str(maps)) == "tcmalloc"
    assert loaded_allocator(str(tmp_path / "absent")) == "the C library's malloc"


def test_allocator_command_prints_a_library_or_says_how_to_get_one():
    result = subprocess.run([sys.executable, "-m", "scripts.allocator"], cwd=ROOT, capture_output=True, text=True)
    if find_tcmalloc() is None:
        assert result.returncode != 0 and "apt install libtcmalloc-minimal4" in result.stderr
    else:
        assert result.returncode == 0 and os.path.isfile(result.stdout.strip())


@pytest.mark.skipif(find_tcmalloc() is None, reason="tcmalloc is not installed (apt install libtcmalloc-minimal4)")
def test_tcmalloc_preloaded_gives_the_same_output():
    outputs = {}
    for preload in ("", find_tcmalloc()):
        env = {**os.environ, "LD_PRELOAD": preload}
        result = subprocess.run([sys.executable, "-c", _FORWARD], cwd=ROOT, capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        outputs[preload] = result.stdout.split()[-1]
        if preload:
            assert result.stdout.startswith("tcmalloc")
    assert outputs[""] == outputs[find_tcmalloc()]


def test_volume_benchmark_refuses_a_missing_tcmalloc_before_work(tmp_path):
    for name in ("scan.nii.gz", "model.pt"):  # present: only the allocator is wrong
        (tmp_path / name).write_bytes(b"")
    cmd = [sys.executable, "-m", "scripts.benchmark", "volume", "--image", str(tmp_path / "scan.nii.gz"),
           "--checkpoint", str(tmp_path / "model.pt"), "--tcmalloc", str(tmp_path / "libtcmalloc.so")]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "--tcmalloc" in result.stderr and "not found" in result.stderr and "matmul" not in result.stdout
