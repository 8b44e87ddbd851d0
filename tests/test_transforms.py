"""Images synthesised from label maps: shapes, contrast order, determinism, randomness, meta, MONAI pipelines."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, MetaTensor
from monai.transforms import Compose

from scripts.transforms import RandFlipLeftRightd, RandSynthesizeImaged, SynthesizeImaged, synthesize_image

MAPS_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "brain_label_maps")
AFFINE = torch.tensor([[-1.0, 0, 0, 10], [0, 0, 1, -20], [0, -1, 0, 30], [0, 0, 0, 1]])
# three tissues whose mean ranges do not overlap, and a value (7) left to default_mean_range
MEANS = {1: [10.0, 20.0], 2: [50.0, 60.0], 3: [100.0, 110.0]}
CLEAN = {"std_range": (0.0, 2.0), "bias_std": 0.0, "blur_sigma_range": (0.0, 0.0), "noise_std_range": (0.0, 0.0)}
FULL = {
    "tissue_means": MEANS,
    "std_range": (1.0, 5.0),
    "bias_std": 0.3,
    "bias_points": 4,
    "blur_sigma_range": (0.3, 1.0),
    "noise_std_range": (1.0, 5.0),
    "default_mean_range": (30.0, 40.0),
}


def make_label(shape: tuple[int, ...]) -> np.ndarray:
    """Integer map with bands of 0, 1, 2, 3 and 7 along the first spatial axis (the channel, if any, is size 1)."""
    label = np.zeros(shape, dtype=np.int32)
    spatial = label[0] if shape[0] == 1 else label
    n = spatial.shape[0]
    for i, value in enumerate((1, 2, 3, 7)):
        spatial[(i + 1) * n // 6 : (i + 2) * n // 6] = value
    return label


def meta_label(shape: tuple[int, ...], filename: str = "/data/sub01_seg.nii.gz") -> MetaTensor:
    """Channel-first MetaTensor label with an affine and a file name, as LoadImaged + EnsureChannelFirstd give."""
    return MetaTensor(torch.as_tensor(make_label(shape)), affine=AFFINE.clone(), meta={"filename_or_obj": filename})


@pytest.mark.parametrize("shape", [(64, 64), (1, 64, 64), (32, 32, 32), (1, 32, 32, 32)])
def test_shape_dtype(shape):
    image = synthesize_image(make_label(shape), np.random.default_rng(0), **FULL)
    assert image.shape == shape and image.dtype == np.float32
    assert np.all(np.isfinite(image)) and image.min() >= 0 and image.std() > 0
    # MONAI's legacy RandomState (self.R) and torch labels work too
    image = synthesize_image(torch.as_tensor(make_label(shape)), np.random.RandomState(0), **FULL)
    assert image.shape == shape and image.dtype == np.float32


@pytest.mark.parametrize("shape", [(64, 64), (1, 32, 32, 32)])
def test_tissue_order_and_default_mean(shape):
    label = make_label(shape)
    for seed in range(3):
        image = synthesize_image(label, np.random.default_rng(seed), MEANS, default_mean_range=(200.0, 210.0), **CLEAN)
        means = [image[label == v].mean() for v in (1, 2, 3)]
        assert means[0] < means[1] < means[2]
        for value, mean in zip((1, 2, 3), means):
            assert MEANS[value][0] - 1 <= mean <= MEANS[value][1] + 1
        assert 199 <= image[label == 7].mean() <= 211  # absent from tissue_means: default range
        assert 0 <= image[label == 0].mean() <= 255  # default default_mean_range


def test_string_keys_and_fixed_means():
    label = make_label((64, 64))
    as_int = synthesize_image(label, np.random.default_rng(1), MEANS, **CLEAN)
    as_str = synthesize_image(label, np.random.default_rng(1), {str(k): v for k, v in MEANS.items()}, **CLEAN)
    np.testing.assert_array_equal(as_int, as_str)
    fixed = synthesize_image(label, np.random.default_rng(1), {"0": 0, 1: 5, 2: 50, 3: 90, 7: [9, 9]})
    np.testing.assert_allclose([fixed[label == v].mean() for v in (0, 1, 2, 3, 7)], [0, 5, 50, 90, 9])


def test_float_labels_are_rounded():
    label = make_label((32, 32, 32))
    ints = synthesize_image(label, np.random.default_rng(2), **FULL)
    floats = synthesize_image(label.astype(np.float32) + 0.2, np.random.default_rng(2), **FULL)
    np.testing.assert_array_equal(ints, floats)


def test_large_and_negative_label_values():
    label = make_label((64, 64)) * 10**7 - 5  # the np.unique path
    image = synthesize_image(label, np.random.default_rng(0), {-5: [1, 1], 10**7 - 5: [9, 9]})
    assert image[label == -5].mean() == pytest.approx(1) and image[label == 10**7 - 5].mean() == pytest.approx(9)


def test_tied_labels_share_draws():
    label = make_label((64, 64))
    means = {1: [10.0, 90.0], 2: [10.0, 90.0], 3: [110.0, 190.0]}
    tied = synthesize_image(label, np.random.default_rng(0), means, tied_labels=[[1, "2", 3]])
    m1, m2, m3 = (tied[label == v].mean() for v in (1, 2, 3))
    assert m1 == pytest.approx(m2) and m3 == pytest.approx(m1 + 100)  # one quantile of each member's own range
    free = [synthesize_image(label, np.random.default_rng(s), means) for s in range(3)]
    assert any(abs(img[label == 1].mean() - img[label == 2].mean()) > 1 for img in free)


def test_bias_field_is_smooth_and_multiplicative():
    label = np.ones((64, 64), dtype=np.int32)
    image = synthesize_image(label, np.random.default_rng(0), {1: 100.0}, bias_std=0.3, bias_points=4)
    log_field = np.log(image / 100.0)
    assert log_field.std() > 0.05  # it varies, slowly (a coarse grid of 4 x 4 points) and smoothly (cubic splines)
    for axis in (0, 1):
        assert np.abs(np.diff(log_field, axis=axis)).max() < 0.2
        assert np.abs(np.diff(log_field, n=2, axis=axis)).max() < 0.03


def test_blur_and_noise():
    label = make_label((64, 64))
    sharp = synthesize_image(label, np.random.default_rng(0), MEANS)
    blurred = synthesize_image(label, np.random.default_rng(0), MEANS, blur_sigma_range=(2.0, 2.0))
    assert np.abs(np.diff(blurred, axis=0)).max() < 0.5 * np.abs(np.diff(sharp, axis=0)).max()
    noisy = synthesize_image(label, np.random.default_rng(0), MEANS, noise_std_range=(3.0, 3.0))
    assert 2.5 < (noisy - sharp)[label == 3].std() < 3.5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"std_range": (2.0, 1.0)},
        {"noise_std_range": (-1.0, 1.0)},
        {"bias_points": 0},
        {"bias_std": -0.1},
        {"tissue_means": {"wm": [1, 2]}},
        {"tissue_means": {1: [1, 2, 3]}},
        {"tied_labels": [[1, 2], [2, 3]]},
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        SynthesizeImaged(**kwargs)
    with pytest.raises(ValueError):
        synthesize_image(make_label((8, 8)), np.random.default_rng(0), **kwargs)


def test_deterministic_per_file_name():
    first, second = SynthesizeImaged(seed=3, **FULL), SynthesizeImaged(seed=3, **FULL)
    a = first({"label": meta_label((1, 32, 32, 32), "/x/sub01_seg.nii.gz")})["image"]
    second({"label": meta_label((1, 32, 32, 32), "/y/sub02_seg.nii.gz")})  # another file first: order is irrelevant
    b = second({"label": meta_label((1, 32, 32, 32), "/elsewhere/sub01_seg.nii.gz")})["image"]
    assert torch.equal(a, b)
    c = first({"label": meta_label((1, 32, 32, 32), "/x/sub02_seg.nii.gz")})["image"]
    assert not torch.equal(a, c)
    d = SynthesizeImaged(seed=4, **FULL)({"label": meta_label((1, 32, 32, 32), "/x/sub01_seg.nii.gz")})["image"]
    assert not torch.equal(a, d)
    # without a file name, the label values identify it
    plain = SynthesizeImaged(seed=3, **FULL)
    assert np.array_equal(
        plain({"label": make_label((32, 32))})["image"], plain({"label": make_label((32, 32))})["image"]
    )


def test_random_varies_and_is_reproducible():
    data = {"label": meta_label((1, 64, 64))}
    transform = RandSynthesizeImaged(**FULL)
    assert not torch.equal(transform(data)["image"], transform(data)["image"])
    runs = []
    for _ in range(2):
        transform = RandSynthesizeImaged(**FULL).set_random_state(seed=7)
        runs.append([transform(data)["image"] for _ in range(3)])
    assert all(torch.equal(x, y) for x, y in zip(*runs))


@pytest.mark.parametrize("cls", [RandSynthesizeImaged, SynthesizeImaged])
@pytest.mark.parametrize("shape", [(1, 64, 64), (1, 32, 32, 32)])
def test_output_keeps_label_meta(cls, shape):
    label = meta_label(shape)
    out = cls(label_key="seg", image_key="img", **FULL)({"seg": label, "other": 1})
    image = out["img"]
    assert isinstance(image, MetaTensor) and image.shape == label.shape and image.dtype == torch.float32
    assert torch.equal(image.affine, AFFINE.to(image.affine.dtype))
    assert image.meta["filename_or_obj"] == label.meta["filename_or_obj"]
    assert out["seg"] is label and out["other"] == 1 and label.dtype == torch.int32
    image.meta["filename_or_obj"] = "changed"
    assert label.meta["filename_or_obj"] == "/data/sub01_seg.nii.gz"  # a copy, not shared


def test_missing_key_and_prob():
    with pytest.raises(KeyError):
        SynthesizeImaged()({"image": 1})
    assert SynthesizeImaged(allow_missing_keys=True)({"image": 1}) == {"image": 1}
    label = meta_label((1, 16, 16))
    kept = torch.zeros(1, 16, 16)
    assert RandSynthesizeImaged(prob=0.0)({"label": label, "image": kept})["image"] is kept
    with pytest.raises(KeyError):
        RandSynthesizeImaged(prob=0.0)({"label": label})


def test_compose_and_cache_dataset():
    data = [{"label": meta_label((1, 32, 32, 32), f"/data/sub{i:02d}_seg.nii.gz")} for i in range(3)]
    transform = Compose([SynthesizeImaged(seed=0, **FULL), RandSynthesizeImaged(image_key="rand", **FULL)])
    transform.set_random_state(seed=1)
    dataset = CacheDataset(data, transform, cache_rate=1.0, num_workers=1, progress=False)
    first, again = dataset[1], dataset[1]
    reference = SynthesizeImaged(seed=0, **FULL)({"label": meta_label((1, 32, 32, 32), "/data/sub01_seg.nii.gz")})
    assert torch.equal(first["image"], reference["image"]) and torch.equal(again["image"], reference["image"])
    assert not torch.equal(first["rand"], again["rand"])  # the random part runs at every read
    assert not torch.equal(dataset[0]["image"], dataset[2]["image"])


@pytest.mark.skipif(not os.path.isdir(MAPS_DIR), reason="the shared brain label maps are absent")
def test_shared_map_coronal_slice():
    nib = pytest.importorskip("nibabel")
    image = nib.load(os.path.join(MAPS_DIR, "training_seg_01.nii.gz"))
    assert nib.aff2axcodes(image.affine) == ("L", "I", "A")  # coronal slices are the third array axis
    label = np.asarray(image.dataobj[:, :, 128])
    out = synthesize_image(label, np.random.default_rng(0), {2: [100, 130], 3: [60, 90], 24: [10, 40]}, **CLEAN)
    wm, gm, csf = (out[label == v].mean() for v in (2, 3, 24))
    assert out.shape == (256, 256) and csf < gm < wm


# --- domain randomisation (SynthSeg) ---------------------------------------------------------------------------------


def test_options_off_draw_nothing_so_earlier_images_are_unchanged():
    label = make_label((1, 48, 40))
    base = synthesize_image(label, np.random.default_rng(3), **FULL)
    off = {"tissue_means_prob": 1.0, "strip_prob": 0.0, "strip_labels": [7], "resolution_prob": 0.0, "gamma_std": 0.0}
    assert np.array_equal(base, synthesize_image(label, np.random.default_rng(3), **FULL, **off))


def test_random_contrast_ignores_the_prior():
    label = make_label((64, 64))
    means = {**MEANS, 0: [0.0, 1.0], 7: [200.0, 201.0]}
    # tissue 3 is brighter than tissue 1 under the prior; with random contrast every order happens
    brighter = []
    for seed in range(40):
        image = synthesize_image(
            label, np.random.default_rng(seed), means, tissue_means_prob=0.0, random_mean_range=(0, 255)
        )
        brighter.append(image[label == 3].mean() > image[label == 1].mean())
        assert image[label == 3].mean() <= 255 + 5
    assert 5 < sum(brighter) < 35


def test_skull_stripping_gives_the_stripped_labels_the_background_intensity():
    label = make_label((64, 64))
    means = {0: [0.0, 0.0], 1: [50.0, 50.0], 7: [200.0, 200.0], 2: [80, 80], 3: [90, 90]}
    stripped = synthesize_image(label, np.random.default_rng(0), means, strip_labels=[7], strip_prob=1.0)
    assert np.all(stripped[label == 7] == 0) and np.all(stripped[label == 1] == 50)


def test_thick_slices_blur_one_axis_only():
    stripes = np.zeros((64, 64), dtype=np.int32)
    stripes[::2, :] = 1  # horizontal lines along axis 0, constant along axis 1
    grid = stripes | np.tile(np.arange(64) % 2, (64, 1))[:, :]  # and vertical lines
    means = {0: [0.0, 0.0], 1: [100.0, 100.0]}
    sharp = synthesize_image(grid, np.random.default_rng(0), means)
    thick = [synthesize_image(grid, np.random.default_rng(s), means, resolution_prob=1.0, thickness_range=(4, 4))
             for s in range(8)]  # fmt: skip
    for image in thick:
        assert image.shape == grid.shape and np.isfinite(image).all()
        # one axis keeps the sharp alternation, the other loses it
        along = [np.abs(np.diff(image, axis=a)).mean() for a in (0, 1)]
        sharp_along = [np.abs(np.diff(sharp, axis=a)).mean() for a in (0, 1)]
        assert (
            min(r / s for r, s in zip(along, sharp_along)) < 0.3
            and max(r / s for r, s in zip(along, sharp_along)) > 0.9
        )
    with pytest.raises(ValueError, match="thickness_range"):
        synthesize_image(grid, np.random.default_rng(0), means, thickness_range=(0.5, 2))


def test_gamma_keeps_the_range_and_changes_contrast():
    label = make_label((64, 64))
    plain = synthesize_image(label, np.random.default_rng(1), MEANS)
    gammas = [synthesize_image(label, np.random.default_rng(1), MEANS, gamma_std=0.5) for _ in range(1)]
    assert np.isclose(gammas[0].max(), plain.max(), rtol=1e-4) and not np.allclose(gammas[0], plain)


@pytest.mark.parametrize("prob", [-0.1, 1.5])
def test_probabilities_are_checked(prob):
    with pytest.raises(ValueError, match="strip_prob"):
        RandSynthesizeImaged(strip_prob=prob)


def test_left_right_flip_mirrors_and_swaps_the_labels():
    label = torch.zeros((1, 8, 4), dtype=torch.int32)
    label[0, 1, :] = 2  # a left structure near x = 1
    label[0, 5, :] = 41  # its right twin at x = 5
    label[0, 3, :] = 16  # a midline one
    image = torch.arange(32, dtype=torch.float32).reshape(1, 8, 4)
    flip = RandFlipLeftRightd(keys=["label", "image"], spatial_axis=0, pairs=[[2, 41]], prob=1.0)
    out = flip({"label": MetaTensor(label), "image": image})
    assert out["label"][0, 6, 0] == 41 and out["label"][0, 2, 0] == 2 and out["label"][0, 4, 0] == 16
    assert torch.equal(out["image"], torch.flip(image, dims=(1,)))  # the image is mirrored, values unchanged
    assert isinstance(out["label"], MetaTensor) and out["label"].dtype == torch.int32
    assert (
        RandFlipLeftRightd(keys="label", spatial_axis=None, pairs=[[2, 41]], prob=1.0)({"label": label})["label"]
        is label
    )  # no left-right axis: nothing flipped
    with pytest.raises(ValueError, match="pairs"):
        RandFlipLeftRightd(keys="label", spatial_axis=0, pairs=[[2, 41], [41, 3]])


def test_spacingd_keeps_entries_that_share_the_key_prefix_and_matches_monai(tmp_path):
    """MONAI Label hands in {'image': ..., 'image_path': str}: MONAI's Spacingd calls .update on the string."""
    import nibabel as nib
    from monai.transforms import EnsureChannelFirstd, Invertd, LoadImaged
    from monai.transforms import Spacingd as MonaiSpacingd

    from scripts.transforms import Spacingd

    path = str(tmp_path / "head.nii.gz")
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((12, 10, 8)).astype(np.float32), np.diag([1.5, 1, 3, 1])),
             path)  # fmt: skip
    load = Compose([LoadImaged(keys="image", image_only=True), EnsureChannelFirstd(keys="image")])
    ours = Compose([*load.transforms, Spacingd(keys="image", pixdim=(2.0, 2.0, 2.0))])
    data = ours({"image": path, "image_path": path})
    assert data["image_path"] == path
    reference = Compose([*load.transforms, MonaiSpacingd(keys="image", pixdim=(2.0, 2.0, 2.0))])({"image": path})
    assert torch.equal(data["image"], reference["image"]) and np.allclose(
        data["image"].affine, reference["image"].affine
    )
    data["pred"] = data["image"].clone()
    back = Invertd(keys="pred", transform=ours, orig_keys="image")(data)["pred"]
    assert back.shape[1:] == (12, 10, 8)  # inverted by MONAI's own inverse
