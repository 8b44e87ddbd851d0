"""Training images synthesised a batch at a time on the trainer's device (scripts/data/batch_synthesis.py): its
filters against scipy and the loader's path, its spatial augmentation, the label remapping, and the config switch."""

from __future__ import annotations

import os
from unittest import mock

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from scipy import ndimage

from scripts.data.batch_synthesis import SynthesizeBatch, _gaussian_matrices, _resolution_matrices
from scripts.threads import available_cores
from scripts.transforms import RandSynthesizeImaged, _lower_resolution, synthesize_image

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
MEANS = {0: [0.0, 0.0], 2: [100.0, 100.0], 41: [100.0, 100.0], 3: [60.0, 60.0], 42: [60.0, 60.0], 24: [20.0, 20.0]}
# FreeSurfer values -> classes, as the brain protocol's MapLabelValued (24, CSF, is background)
REMAP = {"orig_labels": [0, 24, 2, 3, 41, 42], "target_labels": [0, 0, 1, 2, 16, 17]}
OFF = {"std_range": (0.0, 0.0), "noise_std_range": (0.0, 0.0)}


def label_slices(batch: int = 4, size: int = 32) -> torch.Tensor:
    """``(B, 1, H, W)`` float label values: left white matter / cortex in the top half of axis 0, their right twins
    below, CSF in a band across, background around."""
    label = torch.zeros(batch, 1, size, size)
    label[:, :, 4 : size // 2, 4:-4] = 2
    label[:, :, 6 : size // 2 - 2, 8:-8] = 3
    label[:, :, size // 2 : -4, 4:-4] = 41
    label[:, :, size // 2 + 2 : -6, 8:-8] = 42
    label[:, :, :, size // 2 - 1 : size // 2 + 1] = 24
    return label


@pytest.mark.parametrize("sigma", [0.0, 0.3, 0.8, 1.7])
def test_gaussian_matrices_are_scipys_filter_with_nearest_borders(sigma):
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((3, 40)).astype(np.float32)
    matrices = _gaussian_matrices(torch.full((3,), sigma), 40, radius=8)
    out = (matrices @ torch.from_numpy(signal)[..., None])[..., 0].numpy()
    expected = signal if sigma == 0 else ndimage.gaussian_filter1d(signal, sigma, axis=1, mode="nearest")
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("thickness", [1.5, 2.5, 4.0])
def test_resolution_matrices_are_the_loaders_thick_slices(thickness):
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 100, (36, 28)).astype(np.float32)
    expected = _lower_resolution(image, 0, thickness)
    profile = _gaussian_matrices(torch.tensor([thickness / 2.355]), 36, radius=8)
    matrix = _resolution_matrices(torch.tensor([thickness]), profile, 36)
    np.testing.assert_allclose((matrix[0] @ torch.from_numpy(image)).numpy(), expected, atol=1e-3)


def test_without_randomness_the_image_is_the_loaders_and_labels_are_classes():
    label = label_slices()
    synth = SynthesizeBatch({"tissue_means": MEANS, **OFF}, **REMAP)
    image, classes = synth({"label": label}, device="cpu")
    expected = synthesize_image(label[0, 0].numpy(), np.random.default_rng(0), MEANS, **OFF)
    lo, hi = np.percentile(expected, [0.5, 99.5])
    expected = np.clip((expected - lo) / (hi - lo), 0, 1)
    assert image.shape == classes.shape == label.shape and image.dtype == torch.float32
    np.testing.assert_allclose(image[0, 0].numpy(), expected, atol=1e-5)
    assert torch.equal(image[0], image[3])
    assert set(classes.unique().tolist()) == {0.0, 1.0, 2.0, 16.0, 17.0}
    assert torch.equal(classes[:, :, 10, 10], torch.full((4, 1), 2.0))  # cortex, 3 -> class 2


def test_the_flip_mirrors_and_swaps_left_and_right():
    label = label_slices(batch=2)
    pairs = [[2, 41], [3, 42]]
    flipped = SynthesizeBatch({"tissue_means": MEANS, **OFF}, **REMAP, flip_axis=0, flip_pairs=pairs, flip_prob=1.0)
    out = flipped.augment(label)
    swap = {0: 0, 24: 24, 2: 41, 41: 2, 3: 42, 42: 3}
    expected = torch.flip(label, dims=(2,)).apply_(lambda v: swap[int(v)])
    assert torch.equal(out, expected)
    assert torch.equal(SynthesizeBatch({}, **REMAP).augment(label), label)  # no augmentation: the labels as given


def test_random_augmentation_moves_slices_differently_and_keeps_label_values():
    torch.manual_seed(0)
    label = label_slices(batch=8, size=48)
    synth = SynthesizeBatch(
        {"tissue_means": MEANS, **OFF}, **REMAP, flip_axis=0, flip_pairs=[[2, 41], [3, 42]], flip_prob=0.5,
        rotate_range=0.3, scale_range=0.15, translate_range=4, elastic_prob=1.0, elastic_spacing=16,
    )  # fmt: skip
    out = synth.augment(label)
    assert set(out.unique().tolist()) <= {0.0, 2.0, 3.0, 24.0, 41.0, 42.0}  # nearest: no new values
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8
    # a rotation of at most 17 degrees, 15% scaling and 4 voxels keep most of the brain in place
    overlap = ((out > 0) & (label > 0)).flatten(1).sum(1) / (label > 0).flatten(1).sum(1)
    assert bool((overlap > 0.6).all())


def test_domain_randomisation_varies_every_slice_and_is_seeded():
    label = label_slices(batch=64)
    synth = SynthesizeBatch(
        {"tissue_means": MEANS, "std_range": (1, 15), "bias_std": 0.4, "blur_sigma_range": (0.3, 0.8),
         "noise_std_range": (1, 5), "tissue_means_prob": 0.5, "random_mean_range": (0, 255), "gamma_std": 0.4,
         "strip_labels": [24], "strip_prob": 0.5, "resolution_prob": 0.5, "thickness_range": (1, 4)},
        **REMAP,
    )  # fmt: skip
    torch.manual_seed(3)
    image, _ = synth({"label": label})
    torch.manual_seed(3)
    again, _ = synth({"label": label})
    assert torch.equal(image, again)
    assert image.min() >= 0 and image.max() <= 1 and torch.isfinite(image).all()
    # random contrast: the white matter is darker than the cortex in some slices and brighter in others
    wm, gm = (image[:, 0][label[:, 0] == v].reshape(64, -1).mean(1) for v in (2, 3))
    assert 32 < int((wm > gm).sum()) < 64  # about 3 in 4: half the slices have the T1 prior


def test_bad_arguments_are_refused_in_one_line():
    with pytest.raises(ValueError, match="flip_axis"):
        SynthesizeBatch({}, **REMAP, flip_axis=2)
    with pytest.raises(ValueError, match="orig_labels and target_labels"):
        SynthesizeBatch({}, orig_labels=[0, 1], target_labels=[0])
    with pytest.raises(ValueError, match="strip_prob"):
        SynthesizeBatch({"strip_prob": 2.0}, **REMAP)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        SynthesizeBatch({}, **REMAP)({"label": torch.zeros(2, 8, 8)})


@pytest.mark.parametrize("where", ["loader", "device", "gpu"])
def test_the_brain_protocol_switches_where_images_are_synthesised(where):
    parser = ConfigParser()
    parser.read_config([os.path.join(CONFIGS, "train.yaml"), os.path.join(CONFIGS, "data", "brain27.yaml")])
    parser.update({"source": "label_maps", "synthesis_on": where})
    if where == "gpu":
        with pytest.raises(RuntimeError) as error:  # MONAI's instantiation wraps the bundle's one-line reason
            parser.get_parsed_content("slice_augmentation")
        assert "--synthesis_on 'gpu' is not one of loader, device" in str(error.value.__cause__)
        return
    prepare = parser.get_parsed_content("train_prepare_batch")
    augmentation = parser.get_parsed_content("slice_augmentation")
    if where == "loader":
        assert not isinstance(prepare, SynthesizeBatch) and len(augmentation) > 3
    else:
        assert isinstance(prepare, SynthesizeBatch) and augmentation == []
        loader = [t for t in parser.get_parsed_content("synthesis_augmentation") if isinstance(t, RandSynthesizeImaged)]
        assert prepare.args is loader[0].synthesize.kwargs  # one declaration of the synthesis for both paths
        assert prepare.scale_range == 0.15 and prepare.elastic_prob == 0.5 and prepare.elastic_magnitude == (1.0, 3.0)
        # the same numbers as the loader's transforms
        assert prepare.flip_axis == 0 and prepare.translate_range == 16 and prepare.args["strip_prob"] == 0.5
        assert prepare.remap[1035].item() == 2 and prepare.remap[2000].item() == 17 and prepare.remap[24].item() == 0


def test_the_gpu_profile_synthesises_on_the_device_in_batches_of_64():
    parser = ConfigParser()
    profiles = os.path.join(CONFIGS, "profiles")
    parser.read_config(
        [os.path.join(CONFIGS, "train.yaml"), os.path.join(CONFIGS, "data", "brain27.yaml")]
        + [os.path.join(profiles, name) for name in ("brain_synth.yaml", "brain_synth_gpu.yaml")]
    )
    assert isinstance(parser.get_parsed_content("train_prepare_batch"), SynthesizeBatch)
    assert parser["batch_size"] * parser["train#slice_sampling#2#num_samples"] == 64
    assert parser["train#dataloader#persistent_workers"] is True and parser["epochs"] == 200  # brain_synth's
    with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": ""}):  # the cores it may use, less the trainer's two
        assert parser.get_parsed_content("num_workers") == max(2, available_cores() - 2)
