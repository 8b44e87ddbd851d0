"""Package one trained model as a self-contained MONAI bundle in the model zoo's layout, and zip it for sharing.

The repository is the development bundle: several protocols (``configs/data/*.yaml``) merge over the workflow configs
at run time, and the shipped brain model lives in ``models/brain27/``. MONAI Label, the model zoo's checks and
``monai.bundle.load`` expect one model per bundle instead: ``configs/inference.json`` (one file, no merging),
``configs/metadata.json`` and ``models/model.pt``. This command writes that bundle::

    python -m scripts.package --out dist
    # dist/scse_brain27/ and dist/scse_brain27_v<version>.zip (the zoo's name_version.zip), from
    # configs/data/brain27.yaml and models/brain27/model.pt

    python -m monai.bundle download --name scse_brain27 --url file://$PWD/dist/scse_brain27_v0.4.14.zip --bundle_dir b
    python -m monai.bundle run inference --bundle_root b/scse_brain27 \
        --config_file b/scse_brain27/configs/inference.json --dataset_dir my_scans/ --output_dir out

The workflow configs are merged with MONAI's own ``ConfigParser`` (later files win, as with ``--config_file "[...]"``)
and written as JSON with the protocol's checkpoint folder replaced by the bundle's ``models/``; ``evaluate.json``
merges over ``train.json`` as ``evaluate.yaml`` does over ``train.yaml``. The Python code the configs name
(``scripts/``), the model card, the licence and the requirements travel with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import zipfile

import nibabel as nib
import numpy as np
from monai.bundle import ConfigParser

from .checkpoint import atomic_torch_save, check_checkpoint, load_checkpoint, model_weights
from .data.synthetic import centred_affine, generate_subject
from .errors import InputError
from .outputs import atomic_write, prepare_output_dir, publish

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS_DIR = "$@bundle_root + '/models'"
# (file in the package, configs merged into it); the protocol's config is appended to the workflow configs
WORKFLOWS = {
    "inference.json": ["configs/inference.yaml"],
    "train.json": ["configs/train.yaml"],
    "evaluate.json": ["configs/evaluate.yaml"],
}
COPIED = ["configs/logging.conf", "LICENSE", "requirements.txt"]
# a generated head (3 mm, 64^3) that inference.json segments when no --dataset_dir is given: a first run needs no
# data, and the model zoo's property check (which instantiates the dataset with the defaults) finds a volume
EXAMPLE = "data/example/example_head.nii.gz"
EXAMPLE_DIR = "$@bundle_root + '/data/example'"


def check_package(root: str, protocol_path: str, checkpoint_path: str) -> None:
    """Refuse, before anything is written, a bundle that could not work or whose metadata would describe another
    model: weights that do not fit the protocol's network, or a protocol of other classes than
    ``configs/metadata.json`` describes (its ``network_data_format``, modality and figures are the brain model's).

    Raises:
        InputError: naming the file and what was expected.
    """
    parser = ConfigParser()
    parser.read_config([os.path.join(root, "configs", "inference.yaml"), protocol_path])
    names = list(parser.get_parsed_content("label_names"))
    pred = json.load(open(os.path.join(root, "configs", "metadata.json")))["network_data_format"]["outputs"]["pred"]
    described = [pred["channel_def"][str(i)] for i in range(len(pred["channel_def"]))]
    if names != described:
        raise InputError(
            f"'{protocol_path}' segments {len(names)} classes ({', '.join(names[:3])}, ...) but configs/metadata.json "
            f"describes {len(described)} ({', '.join(described[:3])}, ...); expected the protocol the metadata "
            "describes"
        )
    described = ", ".join(f"{k} {parser[k]}" for k in ("arch", "se", "features", "kernel_size"))
    hint = (
        f"the bundle's configs and metadata describe {described}, {len(names)} classes: package a model trained with "
        "those settings (scripts.package has no network options; the metadata's figures are that model's)"
    )
    check_checkpoint(checkpoint_path, parser.get_parsed_content("network_def"), hint=hint)


def write_bundle(out_dir: str, name: str, protocol: str, checkpoint: str, root: str = ROOT) -> str:
    """Write the bundle folder ``out_dir/name`` and return its path.

    It is built in ``out_dir/name.partial`` and then takes the place of an earlier ``out_dir/name``, so a kill or a
    full disk leaves the earlier bundle or the new one, complete (:func:`scripts.outputs.publish`).

    Args:
        out_dir: folder that receives the bundle folder (created if missing).
        name: the bundle's name (its folder and the zip's stem).
        protocol: data/protocol config merged over the workflow configs (a path relative to ``root``).
        checkpoint: the ``model.pt`` to ship (relative to ``root`` or absolute); of a training checkpoint
            (``checkpoint_latest.pt``) only the network's weights are shipped.
        root: the development bundle's root.
    """
    if name in ("", ".", "..") or os.path.basename(name) != name:
        raise InputError(
            f"--name '{name}' must be a plain folder name (no path): the bundle is written to --out/<name>"
        )
    protocol_path = os.path.join(root, protocol)
    checkpoint_path = os.path.join(root, checkpoint)
    for what, path in (("protocol config", protocol_path), ("checkpoint", checkpoint_path)):
        if not os.path.isfile(path):
            raise InputError(f"{what} '{path}' does not exist")
    check_package(root, protocol_path, checkpoint_path)
    final = os.path.join(out_dir, name)
    bundle = prepare_output_dir(final + ".partial", option="out", fresh=True)
    os.makedirs(os.path.join(bundle, "configs"))
    os.makedirs(os.path.join(bundle, "models"))
    for target, files in WORKFLOWS.items():
        paths = [os.path.join(root, f) for f in files]
        # evaluate.json stays an overlay (merged over train.json at run time), so only the others take the protocol
        if target != "evaluate.json":
            paths.append(protocol_path)
        # merged as `run --config_file "[...]"` merges; an overlay's keys (validate#...) only exist once merged, so it
        # is converted as it is
        config = (
            ConfigParser.load_config_files(paths)
            if target != "evaluate.json"
            else ConfigParser.load_config_file(paths[0])
        )
        if "ckpt_dir" in config:
            config["ckpt_dir"] = MODELS_DIR
        if target == "inference.json":
            config["dataset_dir"] = EXAMPLE_DIR
        if target == "train.json" and "label_values" in config:
            config["label_values"] = "indices"  # labels as MONAI Label saves them (and as this bundle segments)
        with open(os.path.join(bundle, "configs", target), "w") as f:
            json.dump(config, f, indent=2)
    for relative in COPIED:
        target = os.path.join(bundle, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(root, relative), target)
    for folder in ("scripts", "docs"):  # the code the configs name; the model card with its figures and licences
        shutil.copytree(
            os.path.join(root, folder), os.path.join(bundle, folder), ignore=shutil.ignore_patterns("__pycache__")
        )
    state = load_checkpoint(checkpoint_path)
    weights = model_weights(state)
    if weights is state:
        shutil.copy2(checkpoint_path, os.path.join(bundle, "models", "model.pt"))
    else:  # a training checkpoint (checkpoint_latest.pt): the network's weights only, as a model.pt holds them
        atomic_torch_save(dict(weights), os.path.join(bundle, "models", "model.pt"))
    metadata = json.load(open(os.path.join(root, "configs", "metadata.json")))
    metadata["description"] += (
        f" This bundle was packaged by python -m scripts.package from {protocol} and {checkpoint}: its inference "
        "config is configs/inference.json and its weights models/model.pt."
    )
    with open(os.path.join(bundle, "configs", "metadata.json"), "w") as f:
        json.dump(metadata, f, indent=4, ensure_ascii=False)
    image, _ = generate_subject(0, shape=(64, 64, 64), seed=0)
    image = np.round(255 * image / image.max()).astype(np.uint8)  # 8 bits, as many scanners' exports (a smaller zip)
    os.makedirs(os.path.dirname(os.path.join(bundle, EXAMPLE)))
    nib.save(nib.Nifti1Image(image, centred_affine(image.shape, 3.0)), os.path.join(bundle, EXAMPLE))
    return publish(bundle, final)


def zip_bundle(bundle: str) -> str:
    """Zip ``bundle`` as ``<name>_v<version>.zip`` beside it (files under ``<name>/``, as the zoo's releases)."""
    version = json.load(open(os.path.join(bundle, "configs", "metadata.json")))["version"]
    name = os.path.basename(os.path.normpath(bundle))
    archive = os.path.join(os.path.dirname(os.path.normpath(bundle)), f"{name}_v{version}.zip")

    def write(path: str) -> None:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for folder, _, files in os.walk(bundle):
                for file in sorted(files):
                    z.write(
                        os.path.join(folder, file),
                        os.path.join(name, os.path.relpath(os.path.join(folder, file), bundle)),
                    )

    atomic_write(archive, write)  # a zip that is shared is complete or absent
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="dist", help="folder for the bundle folder and its zip")
    parser.add_argument("--name", default="scse_brain27", help="bundle name")
    parser.add_argument("--protocol", default="configs/data/brain27.yaml", help="protocol config, from the root")
    parser.add_argument(
        "--checkpoint",
        default="models/brain27/model.pt",
        help="weights to ship, from the root (a model.pt, or a checkpoint_latest.pt: its network's weights)",
    )
    parser.add_argument("--no_zip", action="store_true", help="write the folder only")
    args = parser.parse_args(argv)
    try:
        bundle = write_bundle(args.out, args.name, args.protocol, args.checkpoint)
    except InputError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    print(f"wrote {bundle}")
    if not args.no_zip:
        print(f"wrote {zip_bundle(bundle)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
