"""A live MONAI Label server with the packaged brain bundle: /info/, /infer/ on a generated head, a 1-epoch /train/.

MONAI Label needs its own virtual environment (requirements-monailabel.txt); ``.ci/run`` builds it and sets
``MONAILABEL_PYTHON`` to its interpreter. Without that variable the test is skipped; in CI a missing interpreter fails.
The server listens on 127.0.0.1 only and is stopped by the test, whatever happens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import nibabel as nib
import numpy as np
import pytest
import torch
from test_bundle import _env

from scripts.data.synthetic import centred_affine, generate_subject
from scripts.package import main as package_main

PYTHON = os.environ.get("MONAILABEL_PYTHON")
NAME = "scse_brain27"
START_TIMEOUT_S = 240

pytestmark = pytest.mark.skipif(
    not PYTHON and os.environ.get("CI") != "true",
    reason="MONAILABEL_PYTHON (a virtual environment with requirements-monailabel.txt) is not set",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: bytes | None = None, timeout: float = 600) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    assert PYTHON and os.path.isfile(PYTHON), f"MONAILABEL_PYTHON={PYTHON!r} is not an interpreter (see .ci/run)"
    root = tmp_path_factory.mktemp("monailabel")
    sample_apps = subprocess.run(
        [PYTHON, "-c", "import os, sys; print(os.path.join(sys.prefix, 'monailabel', 'sample-apps'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    app = root / "app"
    shutil.copytree(os.path.join(sample_apps, "monaibundle"), app)  # MONAI Label's own app for zoo bundles
    assert package_main(["--out", str(app / "model"), "--no_zip"]) == 0
    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for i in range(3):  # labels in label_names' indices, as MONAI Label saves an annotator's work
        image, label = generate_subject(i, shape=(48, 48, 48), seed=5)
        affine = centred_affine(image.shape, 4.0)
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(studies / f"head{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(studies / "labels" / "final" / f"head{i}.nii.gz"))
    port = _free_port()
    log = open(root / "server.log", "w")
    # offline: a local bundle (zoo_source github looks in app/model before any download), no SAM2 models
    cmd = [PYTHON, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
           "--conf", "models", NAME, "--conf", "zoo_source", "github", "--conf", "sam2", "false",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = {**_env(PATH=os.path.dirname(PYTHON) + os.pathsep + os.environ.get("PATH", "")), "OMP_NUM_THREADS": "2"}
    process = subprocess.Popen(
        cmd, cwd=str(root), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                status, body = _request(url + "/info/", timeout=10)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"MONAI Label did not start:\n{open(root / 'server.log').read()[-6000:]}")
            time.sleep(2)
        yield {"url": url, "info": json.loads(body), "studies": studies, "bundle": app / "model" / NAME, "root": root}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_info_lists_the_bundle_with_the_27_structures(server):
    model = server["info"]["models"][NAME]
    assert model["type"] == "segmentation" and len(model["labels"]) == 27
    assert model["labels"]["left cerebral cortex"] == 2 and model["labels"]["right ventral dc"] == 27


def test_infer_returns_labels_on_the_input_grid(server, tmp_path):
    status, body = _request(f"{server['url']}/infer/{NAME}?image=head0&output=image", data=b"{}")
    assert status == 200, body[-3000:]
    (tmp_path / "seg.nii.gz").write_bytes(body)
    seg, image = nib.load(str(tmp_path / "seg.nii.gz")), nib.load(str(server["studies"] / "head0.nii.gz"))
    assert seg.shape == image.shape and np.allclose(seg.affine, image.affine, atol=1e-4)
    values = np.unique(np.asarray(seg.dataobj))
    assert set(values) <= set(range(28)) and len(values) > 5


def test_a_one_epoch_train_fine_tunes_and_keeps_the_shipped_weights(server):
    models = server["bundle"] / "models"
    shipped = _sha(str(models / "model.pt"))
    body = json.dumps({"max_epochs": 1, "val_split": 0.34, "device": "cpu"}).encode()
    status, answer = _request(f"{server['url']}/train/{NAME}?run_sync=true", data=body)
    assert status == 200, answer[-3000:]
    latest = torch.load(str(models / "checkpoint_latest.pt"), map_location="cpu", weights_only=True)
    trainer = latest["trainer"]
    assert trainer["max_epochs"] == 1 and trainer["iteration"] == trainer["epoch_length"] > 0  # one whole epoch
    model = torch.load(str(models / "model.pt"), map_location="cpu", weights_only=True)
    assert any(k.endswith("weight") for k in model)
    # the weights it started from (MONAI Label's pretrained model.pt) are kept, byte for byte, under previous/
    kept = [os.path.join(d, f) for d, _, files in os.walk(models / "previous") for f in files if f == "model.pt"]
    assert shipped in {_sha(p) for p in kept}
    log = open(server["root"] / "server.log").read()
    assert "Restored all variables from" in log  # it fine-tuned the shipped model rather than starting afresh
