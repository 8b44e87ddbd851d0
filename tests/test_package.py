"""The packaged bundle (python -m scripts.package): the model zoo's checks offline, download and use from elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ckpt_export, create_workflow, verify_metadata, verify_net_in_out
from test_bundle import CONFIGS, ROOT, _env

from scripts.package import main as package_main

SCHEMA = os.path.join(ROOT, "tests", "data", "bundle_metadata_schema.json")
NAME = "scse_brain27"
# what the zoo's verify_bundle.py and MONAI Label need in a bundle folder
NECESSARY = ["configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md", "LICENSE"]
MAX_FILE_MB = 25  # larger files belong in large_files.yml


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    assert package_main(["--out", str(out)]) == 0
    version = json.load(open(os.path.join(CONFIGS, "metadata.json")))["version"]
    return {"bundle": str(out / NAME), "zip": str(out / f"{NAME}_v{version}.zip")}


def test_the_repository_metadata_validates_against_the_schema():
    verify_metadata(meta_file=os.path.join(CONFIGS, "metadata.json"), filepath=SCHEMA)


def test_the_packaged_bundle_passes_the_model_zoo_checks(packaged, tmp_path, monkeypatch):
    """verify_bundle.py's steps (files, version in changelog, metadata schema, network in/out shapes, TorchScript
    export of models/model.pt) and verify_properties.py's inference properties, offline."""
    bundle = packaged["bundle"]
    for relative in NECESSARY:
        assert os.path.isfile(os.path.join(bundle, relative)), relative
    for folder, _, files in os.walk(bundle):
        for file in files:
            assert os.path.getsize(os.path.join(folder, file)) <= MAX_FILE_MB * 2**20, file
    meta_file = os.path.join(bundle, "configs", "metadata.json")
    metadata = json.load(open(meta_file))
    assert metadata["version"] in metadata["changelog"] and "monai-label" in metadata["supported_apps"]
    verify_metadata(meta_file=meta_file, filepath=SCHEMA)
    config_file = os.path.join(bundle, "configs", "inference.json")
    monkeypatch.syspath_prepend(bundle)  # as the zoo's checks do: the bundle's own scripts package
    verify_net_in_out(net_id="network_def", meta_file=meta_file, config_file=config_file, bundle_root=bundle)
    ts = str(tmp_path / "verify_model.ts")
    ckpt_export(net_id="network_def", filepath=ts, ckpt_file=os.path.join(bundle, "models", "model.pt"),
                meta_file=meta_file, config_file=config_file, bundle_root=bundle)  # fmt: skip
    assert torch.jit.load(ts)(torch.zeros(1, 1, 64, 64)).shape == (1, 28, 64, 64)
    logging_file = os.path.join(bundle, "configs", "logging.conf")
    workflow = create_workflow(workflow_type="infer", config_file=config_file, meta_file=meta_file,
                               logging_file=logging_file, bundle_root=bundle)  # fmt: skip
    assert workflow.check_properties() == []
    # one inference config for MONAI Label, pointing at the bundle's own models/ and the brain protocol
    config = json.load(open(config_file))
    assert config["ckpt_dir"] == "$@bundle_root + '/models'" and config["features"] == 32
    assert config["volume_keys"] == ["image"]


def test_a_downloaded_zip_segments_from_another_folder(packaged, tmp_path):
    """`monai.bundle download` of the shared zip, then inference of the bundled example and monai.bundle.load."""
    run = {"cwd": str(tmp_path), "env": _env(), "capture_output": True, "text": True, "timeout": 600}
    url = "file://" + os.path.abspath(packaged["zip"])
    subprocess.run([sys.executable, "-m", "monai.bundle", "download", "--name", NAME, "--url", url,
                    "--bundle_dir", "b"], check=True, **run)  # fmt: skip
    bundle = tmp_path / "b" / NAME
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inference", "--bundle_root", str(bundle),
                             "--config_file", str(bundle / "configs" / "inference.json"), "--output_dir", "out"],
                            **run)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    example = nib.load(str(bundle / "data" / "example" / "example_head.nii.gz"))
    seg = nib.load(str(tmp_path / "out" / "example_head_seg.nii.gz"))
    assert seg.shape == example.shape and np.allclose(seg.affine, example.affine)
    assert len(np.unique(np.asarray(seg.dataobj))) > 5  # a head, not one class
    code = (
        "from monai.bundle import load; import torch; "
        f"net = load(name='{NAME}', bundle_dir='b', workflow_type='inference', device='cpu'); "
        "print(tuple(net(torch.zeros(1, 1, 32, 32)).shape))"
    )
    result = subprocess.run([sys.executable, "-c", code], **{**run, "env": _env(PYTHONPATH=str(bundle))})
    assert result.returncode == 0 and "(1, 28, 32, 32)" in result.stdout, result.stderr[-3000:]


def test_packaging_refuses_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    assert package_main(["--out", str(tmp_path), "--checkpoint", "models/none/model.pt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR: checkpoint") and "models/none/model.pt" in err[0]


def test_packaging_refuses_weights_or_a_protocol_the_bundle_would_not_fit(tmp_path, capsys):
    """Checked before anything is written: weights of another network, a protocol of other classes than the metadata."""
    import torch

    from scripts.networks import get_network

    wrong = tmp_path / "wrong.pt"
    torch.save(get_network("unet", "scse", 2, 1, 5, features=8).state_dict(), wrong)
    assert package_main(["--out", str(tmp_path / "a"), "--checkpoint", str(wrong)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit the configured network" in err[0]  # with what differs
    assert "; the bundle's configs and metadata describe arch unet, se scse, features 32" in err[0]
    assert package_main(["--out", str(tmp_path / "b"), "--protocol", "configs/data/abdomen_ct.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "but configs/metadata.json describes 28" in err[0]
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_packaging_again_replaces_the_bundle_whole_and_refuses_an_unwritable_out(packaged, tmp_path, capsys):
    out = os.path.dirname(packaged["bundle"])
    stale = os.path.join(packaged["bundle"], "stale.txt")
    open(stale, "w").close()
    assert package_main(["--out", out]) == 0
    assert not os.path.exists(stale) and os.path.isfile(os.path.join(packaged["bundle"], "models", "model.pt"))
    assert sorted(os.listdir(out)) == sorted([NAME, os.path.basename(packaged["zip"])])  # no .partial, .old, temp zip
    capsys.readouterr()
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    assert package_main(["--out", str(blocked)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR: --out") and str(blocked) in err[0]


def test_a_training_checkpoint_ships_as_its_networks_weights(tmp_path, capsys):
    # checkpoint_latest.pt was copied whole (optimizer, trainer, ...): MONAI's load() then updated 0 of its variables
    # and returned an untrained network with rc 0, and ckpt_export failed on the unexpected keys
    latest = os.path.join(ROOT, "models", "brain27", "checkpoint_latest.pt")
    assert package_main(["--out", str(tmp_path), "--checkpoint", latest, "--no_zip"]) == 0
    shipped = torch.load(tmp_path / NAME / "models" / "model.pt", weights_only=True)
    expected = torch.load(latest, weights_only=True)["model"]
    assert list(shipped) == list(expected) and all(torch.equal(shipped[k], expected[k]) for k in expected)
    # and a name is a folder name, not a path out of --out
    assert package_main(["--out", str(tmp_path), "--name", "../escaped", "--no_zip"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ERROR: --name '../escaped' must be a plain folder name")
    assert not os.path.exists(tmp_path.parent / "escaped")
