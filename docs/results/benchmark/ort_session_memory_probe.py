"""Peak memory and time of ONNX Runtime's CPU session on batches of 16 slices of 176 x 208 (fsaverage's head box at
1 mm), per session setting; one process per setting, as the peak is the process's.

    python -m monai.bundle onnx_export --args_file configs/onnx_export.yaml --ckpt_file model.pt --filepath model.onnx
    for s in default nopattern noarena noarena_nopattern; do
        OMP_NUM_THREADS=2 python docs/results/benchmark/ort_session_memory_probe.py model.onnx $s; done
"""

import resource
import sys
import time

import numpy as np
import onnxruntime as ort

path, setting = sys.argv[1], sys.argv[2]
options = ort.SessionOptions()
options.intra_op_num_threads = 2
options.enable_cpu_mem_arena = "noarena" not in setting
options.enable_mem_pattern = "nopattern" not in setting
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).random((16, 1, 176, 208), dtype=np.float32)
start = time.perf_counter()
for n in (16, 16, 16, 16, 8):  # the last batch smaller, as a volume's
    session.run(None, {session.get_inputs()[0].name: x[:n]})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(f"{setting}: {time.perf_counter() - start:.1f} s, peak {peak:.2f} GiB")
