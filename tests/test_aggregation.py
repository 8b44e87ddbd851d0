"""Probabilities combined across views and carried to the input's grid: weights, sagittal pairs, chunked inversion."""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import AsDiscreted, Compose, CropForegroundd, Invertd, Orientationd, Spacingd

from scripts.aggregation import (
    InvertProbabilitiesd,
    MultiViewInferer,
    axis_aligned_argmax,
    axis_aligned_map,
    axis_aligned_resample,
)
from scripts.errors import InputError
from scripts.networks import get_network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ball_labels(shape: tuple[int, ...]) -> np.ndarray:
    """Nested balls of classes 1..3 inside a background of 0."""
    grid = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    return np.select([r < 4, r < 7, r < 10], [3, 2, 1], 0).astype(np.int64)


@pytest.fixture
def case():
    shape = (30, 28, 26)
    labels = _ball_labels(shape)
    affine = torch.tensor([[-1.0, 0, 0, 5], [0, 0, 1.0, -3], [0, -1.0, 0, 7], [0, 0, 0, 1]])  # LIA-like
    # the meta LoadImaged gives: the file's affine and shape, which the separable inversion maps back to
    meta = {"original_affine": affine.double(), "spatial_shape": np.array(shape)}
    image = MetaTensor(torch.as_tensor(labels[None] * 0.3 + 0.1, dtype=torch.float32), affine=affine, meta=meta)
    preprocessing = Compose(
        [
            Orientationd(keys="image", axcodes="RAS", labels=None),
            Spacingd(keys="image", pixdim=(2.0, 2.0, 2.0), mode="bilinear"),
            CropForegroundd(keys="image", source_key="image", select_fn=lambda x: x > 0.2, margin=1),
        ]
    )
    data = preprocessing({"image": image})
    # "network" probabilities on the preprocessed grid: a soft one-hot of the classes the coarse image shows, each
    # class a little apart, so that no interpolated voxel is an exact tie (whose winner the order of the sums decides)
    coarse = torch.round((data["image"].as_tensor() - 0.1) / 0.3).clamp(0, 3).long()[0]
    probs = torch.nn.functional.one_hot(coarse, 4).permute(3, 0, 1, 2).float() * 0.7 + 0.075
    probs += torch.tensor([0.003, 0.002, 0.001, 0.0]).view(4, 1, 1, 1)
    return labels, image, preprocessing, data, probs


def test_chunks_give_the_argmax_of_the_whole_inversion(case):
    labels, image, preprocessing, data, probs = case
    whole = Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False)(
        {**data, "pred": MetaTensor(probs.clone())}
    )["pred"]
    expected = torch.as_tensor(whole).argmax(0, keepdim=True)
    for chunk in (1, 3, 4):
        out = InvertProbabilitiesd(keys="pred", transform=preprocessing, chunk_size=chunk)({**data, "pred": probs})
        assert out["pred"].shape == (1, *labels.shape)
        assert torch.equal(out["pred"].as_tensor(), expected)
        assert np.allclose(out["pred"].affine, image.affine)


def test_interpolated_probabilities_fit_the_fine_labels_better_than_nearest_labels(case):
    labels, _, preprocessing, data, probs = case
    soft = InvertProbabilitiesd(keys="pred", transform=preprocessing)({**data, "pred": probs})["pred"][0].numpy()
    hard = Compose(
        [
            AsDiscreted(keys="pred", argmax=True),
            Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=True),
        ]
    )({**data, "pred": MetaTensor(probs.clone())})["pred"][0].numpy()
    assert (soft == labels).mean() > 0.9
    assert (soft == labels).mean() >= (hard == labels).mean()
    # outside the crop every class had probability 0: background
    assert soft[0, 0, 0] == 0


def _invertd_probabilities(preprocessing, data, probs):
    return Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False)(
        {**data, "pred": MetaTensor(probs.clone())}
    )["pred"]


@pytest.mark.parametrize("pixdim", [(2.0, 2.0, 2.0), (0.7, 1.3, 1.0)])
def test_separable_inversion_gives_invertds_probabilities(pixdim):
    shape = (30, 28, 26)
    affine = torch.tensor([[0, 0, -1.2, 5], [1.1, 0, 0, -3], [0, -0.9, 0, 7], [0, 0, 0, 1]], dtype=torch.float64)
    meta = {"original_affine": affine, "spatial_shape": np.array(shape)}
    image = MetaTensor(torch.as_tensor(_ball_labels(shape)[None] * 0.3 + 0.1, dtype=torch.float32), affine=affine,
                       meta=meta)  # fmt: skip
    preprocessing = Compose(
        [
            Orientationd(keys="image", axcodes="RAS", labels=None),
            Spacingd(keys="image", pixdim=pixdim, mode="bilinear"),
            CropForegroundd(keys="image", source_key="image", select_fn=lambda x: x > 0.2, margin=1),
        ]
    )
    data = preprocessing({"image": image})
    probs = torch.softmax(torch.randn(5, *data["image"].shape[1:], generator=torch.Generator().manual_seed(0)), 0)
    axes, scales, shifts = axis_aligned_map(data["image"].affine, affine)
    separable = axis_aligned_resample(probs, axes, scales, shifts, shape)
    expected = _invertd_probabilities(preprocessing, data, probs)
    assert separable.shape == expected.shape == (5, *shape)
    assert torch.allclose(separable, torch.as_tensor(expected), atol=1e-5)
    out = InvertProbabilitiesd(keys="pred", transform=preprocessing, chunk_size=2)({**data, "pred": probs})["pred"]
    assert torch.equal(out.as_tensor(), torch.as_tensor(expected).argmax(0, keepdim=True))
    assert np.allclose(out.affine, affine) and np.allclose(out.meta["original_affine"], affine)


@pytest.mark.parametrize("classes", [5, 300])
def test_argmax_of_the_interpolation_is_interpolated_only_at_boundaries(classes):
    # up- and downsampled axes, permuted, partly outside the source; a few blobs of labels, so most voxels have
    # neighbours of one label and the rest (boundaries, chunks of 7 voxels) are interpolated
    generator = torch.Generator().manual_seed(1)
    coarse = torch.nn.functional.interpolate(torch.rand(1, classes, 3, 4, 3, generator=generator), size=(9, 11, 7))[0]
    probs = torch.softmax(coarse * 20 + torch.rand(coarse.shape, generator=generator), 0)
    axes, scales, shifts, shape = [1, 2, 0], [0.5, 1.5, 0.7], [-1.75, 0.5, 0.2], [26, 6, 13]
    expected = axis_aligned_resample(probs, axes, scales, shifts, shape).argmax(0, keepdim=True)
    for chunk in (7, 2**20):
        labels = axis_aligned_argmax(probs, axes, scales, shifts, shape, chunk_voxels=chunk)
        assert labels.dtype == torch.int64 and labels.shape == (1, *shape)
        assert torch.equal(labels, expected)
    # the first two voxels (index -1.75 and -1.25 on the source's axis 1) have no neighbour there: background
    assert (labels[0, :2] == 0).all() and (labels[0, 2:] != 0).any()
    assert (axis_aligned_argmax(probs[:1], axes, scales, shifts, shape) == 0).all()  # one class


def test_separable_inversion_runs_where_the_values_are():
    # the meta device checks every tensor's device without computing: a CUDA run needs no CPU tensor in the mix
    values = torch.empty(2, 5, 6, 7, device="meta")
    out = axis_aligned_resample(values, [2, 0, 1], [0.5, 1.0, 2.0], [-1.0, 0.0, 0.5], [9, 8, 3])
    assert out.device.type == "meta" and out.shape == (2, 9, 8, 3)


def test_oblique_grids_go_through_invertd(case):
    _, image, preprocessing, data, probs = case
    rotation = torch.eye(4, dtype=torch.float64)
    rotation[:2, :2] = torch.tensor([[0.8, -0.6], [0.6, 0.8]])
    with pytest.raises(ValueError, match="not axis-aligned"):
        axis_aligned_map(data["image"].affine, rotation @ image.affine.double())
    oblique = {**data, "image": data["image"].clone()}
    oblique["image"].meta["original_affine"] = rotation @ image.affine.double()
    out = InvertProbabilitiesd(keys="pred", transform=preprocessing)({**oblique, "pred": probs})["pred"]
    expected = _invertd_probabilities(preprocessing, data, probs).argmax(0, keepdim=True)
    assert torch.equal(out.as_tensor(), torch.as_tensor(expected))


def test_chunk_size_is_checked(case):
    _, _, preprocessing, _, _ = case
    with pytest.raises(ValueError, match="chunk_size"):
        InvertProbabilitiesd(keys="pred", transform=preprocessing, chunk_size=0)


# --- several views ----------------------------------------------------------------------------------------------------


def _saved_net(path, seed: int, classes: int = 5):
    torch.manual_seed(seed)
    net = get_network("unet", "scse", 2, 1, classes, features=4).eval()
    torch.save(net.state_dict(), path)
    return net


def _single_view(net, x, axis):
    with torch.no_grad():
        return torch.softmax(SliceInferer(spatial_dim=axis, roi_size=(-1, -1), progress=False)(x, net), dim=1)


def test_views_are_averaged_with_their_weights(tmp_path):
    main, other = _saved_net(tmp_path / "a.pt", 0), _saved_net(tmp_path / "b.pt", 1)
    x = torch.rand(1, 1, 16, 20, 24)
    template = get_network("unet", "scse", 2, 1, 5, features=4)
    with torch.no_grad():
        only_main = MultiViewInferer(1, {2: str(tmp_path / "b.pt")}, template, weights={1: 1, 2: 0})(x, main)
        equal = MultiViewInferer(1, {2: str(tmp_path / "b.pt")}, template)(x, main)
    assert torch.allclose(only_main.exp(), _single_view(main, x, 1), atol=1e-5)
    expected = (_single_view(main, x, 1) + _single_view(other, x, 2)) / 2
    assert equal.shape == (1, 5, 16, 20, 24) and torch.allclose(equal.exp(), expected, atol=1e-5)


def test_a_sagittal_view_leaves_the_side_to_the_other_views(tmp_path):
    net = _saved_net(tmp_path / "a.pt", 0)
    x = torch.rand(1, 1, 16, 20, 24)
    with torch.no_grad():
        out = MultiViewInferer(0, {}, net, left_right_pairs=[[1, 3]])(x, net).exp()
    assert torch.allclose(out[:, 1], out[:, 3]) and not torch.allclose(out[:, 1], out[:, 2])
    assert torch.allclose(out.sum(1), torch.ones(1, 16, 20, 24), atol=1e-5)


def _mirrored(x: torch.Tensor, pairs: list[list[int]]) -> torch.Tensor:
    """x mirrored along the left-right axis (spatial axis 0), and for probabilities, each pair's classes swapped."""
    x = torch.flip(x, dims=(2,))
    order = list(range(x.shape[1]))
    for left, right in pairs:
        order[left], order[right] = right, left
    return x[:, order] if x.shape[1] > 1 else x


def test_mirroring_averages_the_mirrored_scan_back_with_sides_swapped(tmp_path):
    net, pairs = _saved_net(tmp_path / "a.pt", 0), [[1, 3]]
    x = torch.rand(1, 1, 16, 20, 24)
    with torch.no_grad():
        out = MultiViewInferer(1, {}, net, left_right_pairs=pairs, mirror=True)(x, net).exp()
        of_mirrored = MultiViewInferer(1, {}, net, left_right_pairs=pairs, mirror=True)(_mirrored(x, []), net).exp()
        plain_of_mirrored = MultiViewInferer(1, {}, net, left_right_pairs=pairs)(_mirrored(x, []), net).exp()
    expected = (_single_view(net, x, 1) + _mirrored(_single_view(net, _mirrored(x, []), 1), pairs)) / 2
    assert torch.allclose(out, expected, atol=1e-5)
    # mirroring the scan mirrors the segmentation, left and right swapped: exactly, unlike one pass of the network
    assert torch.allclose(of_mirrored, _mirrored(out, pairs), atol=1e-5)
    assert not torch.allclose(plain_of_mirrored, _mirrored(_single_view(net, x, 1), pairs), atol=1e-3)
    # a sagittal view sees the same slices mirrored: the same probabilities, one pass
    with torch.no_grad():
        sagittal = MultiViewInferer(0, {}, net, left_right_pairs=pairs, mirror=True)(x, net)
        assert torch.allclose(sagittal, MultiViewInferer(0, {}, net, left_right_pairs=pairs)(x, net))


def test_views_are_checked(tmp_path):
    net = _saved_net(tmp_path / "a.pt", 0)
    with pytest.raises(ValueError, match="view axis"):
        MultiViewInferer(1, {1: str(tmp_path / "a.pt")}, net)
    with pytest.raises(ValueError, match="view_weights"):
        MultiViewInferer(1, {2: str(tmp_path / "a.pt")}, net, weights={1: 1.0})
    with pytest.raises(InputError, match=r"^--views 2: checkpoint .* does not exist"):
        MultiViewInferer(1, {2: str(tmp_path / "missing.pt")}, net)
    other = get_network("unet", "scse", 2, 1, 7, features=4)  # another number of classes
    with pytest.raises(InputError, match="does not fit"):
        MultiViewInferer(1, {2: str(tmp_path / "a.pt")}, other)


@pytest.mark.parametrize("options", [["--views", "sagittal"], ["--mirror", "true"]], ids=["views", "mirror"])
def test_the_inference_config_runs_several_views_or_mirroring(tmp_path, options):
    image = (
        np.random.default_rng(0).random((24, 20, 16)).astype(np.float32)
        + np.pad(np.ones((12, 10, 8)), 6)[:24, :20, :16]
    )
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    scans = tmp_path / "scans"
    scans.mkdir()
    nib.save(nib.Nifti1Image(image, affine), str(scans / "head.nii.gz"))
    _saved_net(tmp_path / "axial.pt", 0, classes=28)
    _saved_net(tmp_path / "sagittal.pt", 1, classes=28)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml",
           "--dataset_dir", str(scans), "--checkpoint", str(tmp_path / "axial.pt"), "--features", "4",
           "--output_dir", str(tmp_path / "out"), "--interpolate_probabilities", "true"]  # fmt: skip
    cmd += [f"{{0: '{tmp_path / 'sagittal.pt'}'}}" if o == "sagittal" else o for o in options]
    result = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    out = nib.load(str(tmp_path / "out" / "head_seg.nii.gz"))
    assert out.shape == image.shape and np.allclose(out.affine, affine)
    if options[0] == "--views":  # a missing view is refused before the scans are read (a bad one would be skipped)
        nib.save(nib.Nifti1Image(np.zeros_like(image), affine), str(scans / "constant.nii.gz"))
        cmd[-1] = f"{{0: '{tmp_path / 'none.pt'}'}}"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        assert result.returncode != 0 and "ERROR: --views 0: checkpoint" in result.stderr
        assert "constant.nii.gz" not in result.stderr
        # one axial slice: the axial model could segment it, the sagittal view could not (20x1 slices)
        os.remove(scans / "constant.nii.gz")
        nib.save(nib.Nifti1Image(image[:, :, 8:9], affine), str(scans / "one_slice.nii.gz"))
        cmd[-1] = f"{{0: '{tmp_path / 'sagittal.pt'}'}}"
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        assert result.returncode != 0 and "one_slice.nii.gz' gives slices of 20x1 voxels along the view axis 0" in (
            result.stderr.splitlines()[-1]
        )
        assert sorted(os.listdir(tmp_path / "out")) == ["head_seg.nii.gz"]


def test_the_left_right_axis_follows_the_axcodes():
    from scripts.aggregation import left_right_axis

    assert [left_right_axis(c) for c in ("RAS", "LPS", "SAR", "ali")] == [0, 0, 2, 1]
    with pytest.raises(InputError, match="--axcodes 'SAP' has no L or R axis"):
        left_right_axis("SAP")
