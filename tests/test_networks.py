"""SE blocks against the paper's equations, the three networks' shapes, parameter counts and TorchScript export."""

from __future__ import annotations

import io

import pytest
import torch
from monai.networks.blocks import ChannelSELayer
from torch import nn

from scripts.complexity import complexity_table, count_parameters
from scripts.networks import (
    ARCHS,
    SE_TYPES,
    ChannelSpatialSELayer,
    SpatialSELayer,
    get_network,
    get_se_block,
    max_unpool,
)

COMBOS = [(arch, se) for arch in ARCHS for se in SE_TYPES]


def _cse_reference(block: ChannelSELayer, u: torch.Tensor) -> torch.Tensor:
    """Eq. 1-2 from the block's own weights: z = mean(U); z' = W1 relu(W2 z); U * sigmoid(z') per channel."""
    lin2, lin1 = [m for m in block.modules() if isinstance(m, nn.Linear)]
    z = u.flatten(2).mean(-1)  # (N, C)
    assert lin2.weight.shape == (u.shape[1] // 2, u.shape[1]) and lin1.weight.shape == (u.shape[1], u.shape[1] // 2)
    z_hat = torch.relu(z @ lin2.weight.T + lin2.bias) @ lin1.weight.T + lin1.bias
    return u * torch.sigmoid(z_hat).view(*z_hat.shape, *([1] * (u.ndim - 2)))


def _sse_reference(block: SpatialSELayer, u: torch.Tensor) -> torch.Tensor:
    """Eq. 3 from the block's own weights: q = sum_c w_c u_c + b; U * sigmoid(q) per location."""
    w = block.squeeze.weight.flatten()  # (C,)
    q = torch.einsum("nc...,c->n...", u, w) + block.squeeze.bias
    return u * torch.sigmoid(q).unsqueeze(1)


def _randomise(module: nn.Module) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_se_blocks_match_paper_equations(spatial_dims):
    c = 8
    u = torch.randn(2, c, *([6] * spatial_dims))
    cse = get_se_block("cse", spatial_dims, c)
    sse = get_se_block("sse", spatial_dims, c)
    scse = get_se_block("scse", spatial_dims, c)
    scse_max = get_se_block("scse", spatial_dims, c, mode="max")
    assert isinstance(cse, ChannelSELayer) and isinstance(sse, SpatialSELayer)
    for block in (cse, sse, scse, scse_max):
        _randomise(block)
    assert torch.allclose(cse(u), _cse_reference(cse, u), atol=1e-5)
    assert torch.allclose(sse(u), _sse_reference(sse, u), atol=1e-5)
    expected_sum = _cse_reference(scse.cse, u) + _sse_reference(scse.sse, u)
    assert torch.allclose(scse(u), expected_sum, atol=1e-5)
    u_before = u.clone()
    with torch.inference_mode():  # the path that writes into the gate's buffer
        assert torch.allclose(scse(u), expected_sum, atol=1e-5)
    assert torch.equal(u, u_before)
    # gradients of the input and of every parameter, through the fused sum of CPU training (its own backward pass),
    # match the equations' own
    u_grad = u.clone().requires_grad_()
    inputs = (u_grad, *scse.parameters())
    assert len(inputs) == 7  # the input, cSE's two linear layers, sSE's squeeze: weights and biases
    got = torch.autograd.grad(scse(u_grad).square().sum(), inputs)
    assert scse(u_grad).grad_fn.next_functions[0][0].name() == "_ScSESumBackward"  # then a view
    want = torch.autograd.grad(
        (_cse_reference(scse.cse, u_grad) + _sse_reference(scse.sse, u_grad)).square().sum(), inputs
    )
    assert all(torch.allclose(a, b, atol=1e-4, rtol=1e-4) for a, b in zip(got, want))
    expected_max = torch.maximum(_cse_reference(scse_max.cse, u), _sse_reference(scse_max.sse, u))
    assert torch.allclose(scse_max(u), expected_max, atol=1e-5)
    assert isinstance(get_se_block("none", spatial_dims, c), nn.Identity)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_scse_training_gives_the_plain_graphs_gradients(precision, monkeypatch):
    # a whole network's training step with the fused scSE sum (CPU training) and with autograd's plain graph of the
    # same sum: the same loss and the same gradient for every parameter, in fp32 and under bf16 autocast
    torch.manual_seed(0)
    net = get_network("sdnet", "scse", 2, 1, 4, features=8)
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 4, (2, 32, 32))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def step() -> tuple[torch.Tensor, list[torch.Tensor]]:
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = net(x)
        assert logits.dtype == dtype
        loss = nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()]

    fused_loss, fused = step()
    monkeypatch.setattr(ChannelSpatialSELayer, "_use_fused", lambda self, x: False)
    plain_loss, plain = step()
    tol = 1e-5 if precision == "fp32" else 2e-2
    assert torch.allclose(fused_loss, plain_loss, atol=tol, rtol=tol)
    # on the scale of the network's gradients: a convolution's bias before batch norm has a gradient of rounding noise
    scale = max(b.abs().max().item() for b in plain)
    for a, b in zip(fused, plain):
        assert torch.allclose(a, b, atol=tol * scale, rtol=tol)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_sse_squeeze_same_on_every_device_path(spatial_dims):
    # a CPU computes sSE's squeeze as a matrix-vector product, other devices (CUDA) with the 1x1 convolution itself:
    # both must give Eq. 3's q; the meta device takes the non-CPU branch without a GPU
    block = SpatialSELayer(spatial_dims, 8)
    _randomise(block)
    u = torch.randn(3, 8, *([5] * spatial_dims))
    assert torch.allclose(block.project(u), block.squeeze(u), atol=1e-5)
    on_meta = block.to("meta").project(u.to("meta"))
    assert on_meta.device.type == "meta" and on_meta.shape == (3, 1, *([5] * spatial_dims))


@pytest.mark.parametrize("grad", [False, True])
def test_se_blocks_keep_the_input_layout_and_autocast_dtype(grad):
    # inference runs channels-last and, with --precision bf16, under autocast: an SE block whose output came back
    # contiguous (the broadcast gates' layout) or float32 (a float32 bias promoting the squeeze) made every later
    # operation convert it, which cost scSE 1.3x (fp32) and 2.7x (bf16) of a whole U-Net's time on 2 cores
    c = 8
    u = torch.randn(2, c, 6, 7).contiguous(memory_format=torch.channels_last)
    for name in ("cse", "sse", "scse"):
        block = get_se_block(name, 2, c)
        _randomise(block)
        with torch.set_grad_enabled(grad):
            want = block(u.contiguous())
            got = block(u)
            assert got.is_contiguous(memory_format=torch.channels_last), name
            assert torch.allclose(got, want, atol=1e-5), name
            with torch.autocast("cpu", dtype=torch.bfloat16):  # a block's input is then a convolution's bf16 output
                low = block(u.bfloat16())
        assert low.dtype == torch.bfloat16, name
        assert torch.allclose(low.float(), want, atol=0.05, rtol=0.02), name


def test_se_block_parameter_counts_follow_the_paper():
    # cSE: C^2 weights (two C x C/2 layers) plus biases; sSE: C weights plus a bias.
    c = 64
    assert count_parameters(get_se_block("cse", 2, c)) == c * c + c // 2 + c
    assert count_parameters(get_se_block("sse", 2, c)) == c + 1
    assert count_parameters(ChannelSpatialSELayer(2, c)) == 4257


def test_bad_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="unet, sdnet, densenet"):
        get_network("resnet", "scse")
    with pytest.raises(ValueError, match="none, cse, sse, scse"):
        get_network("unet", "se")
    with pytest.raises(ValueError, match="'sum' or 'max'"):
        ChannelSpatialSELayer(2, 8, mode="mean")


@pytest.mark.parametrize("arch,se", COMBOS)
def test_2d_output_shapes_odd_sizes(arch, se):
    net = get_network(arch, se, spatial_dims=2, in_channels=1, out_channels=5, features=8).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 37, 50)).shape == (2, 5, 37, 50)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_3d_networks_and_blocks(arch):
    net = get_network(arch, "scse", spatial_dims=3, in_channels=2, out_channels=3, features=4).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, 16, 19, 17)).shape == (1, 3, 16, 19, 17)
    for se in SE_TYPES:
        x = torch.randn(2, 6, 5, 4, 3)
        assert get_se_block(se, 3, 6)(x).shape == x.shape


def test_too_small_input_is_refused_clearly():
    net = get_network("unet", "none", 2, 1, 2, features=4)
    with pytest.raises(ValueError, match="at least 16"):
        net(torch.randn(1, 1, 15, 64))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_one_distinct_se_module_per_block(arch):
    net = get_network(arch, "scse", 2, 1, 4, features=8)
    blocks = [m for m in net.modules() if isinstance(m, ChannelSpatialSELayer)]
    assert len(blocks) == 8  # 4 encoder + 4 decoder blocks
    assert len({id(b) for b in blocks}) == 8
    pointers = [p.data_ptr() for b in blocks for p in b.parameters()]
    assert len(pointers) == len(set(pointers))
    assert all(isinstance(stage.se, ChannelSpatialSELayer) for stage in [*net.encoders, *net.decoders])
    assert not any(isinstance(m, (SpatialSELayer, ChannelSELayer)) for m in net.bottleneck.modules())


def test_parameter_counts_match_the_paper():
    rows = {(r["arch"], r["se"]): r for r in complexity_table(out_channels=28)}
    plain = rows[("unet", "none")]["params"]
    scse = rows[("unet", "scse")]["se_params"]
    assert plain == 2_157_276 and abs(plain - 2.1e6) / 2.1e6 < 0.15
    assert scse == 8 * 4257 and abs(scse - 3.3e4) / 3.3e4 < 0.15
    assert abs(rows[("unet", "scse")]["se_percent"] - 1.5) / 1.5 < 0.15
    for arch in ARCHS:  # the overhead is the SE blocks' and nothing else, for every network
        assert rows[(arch, "cse")]["se_params"] == 8 * 4192
        assert rows[(arch, "sse")]["se_params"] == 8 * 65
        assert rows[(arch, "scse")]["se_params"] == 8 * 4257


def test_unpool_restores_maxima_positions():
    x = torch.randn(2, 3, 9, 7)
    pooled, idx = torch.nn.functional.max_pool2d_with_indices(x, 2, 2)
    out = max_unpool(pooled, idx, [9, 7])
    reference = torch.nn.functional.max_unpool2d(pooled, idx, 2, 2, output_size=[9, 7])
    assert torch.equal(out, reference)


@pytest.mark.parametrize("arch,se", COMBOS)
def test_torchscript_export_is_equivalent(arch, se):
    torch.manual_seed(0)
    net = get_network(arch, se, 2, 1, 4, features=8).eval()
    scripted = torch.jit.script(net)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = torch.randn(2, 1, 33, 48)
    with torch.no_grad():
        expected = net(x)
        assert torch.allclose(scripted(x), expected, atol=1e-5)
        assert torch.allclose(loaded(x), expected, atol=1e-5)


def test_torchscript_export_3d_and_gradients_through_unpool():
    net = get_network("sdnet", "scse", 3, 1, 2, features=4)
    x = torch.randn(2, 1, 16, 16, 16)  # batch norm needs 2 values per channel at the 1x1x1 bottleneck
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(net)(x), net(x), atol=1e-5)


def test_complexity_command_prints_the_table_with_times(capsys):
    from scripts.complexity import main

    main(["--features", "4", "--time", "--size", "16", "--batch", "1", "--repeats", "1"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("| unet") or line.startswith("| sdnet") or "densenet" in line]
    assert len(rows) == 12
    assert all(line.count("|") == 8 for line in rows)  # parameters, overhead, %, time, ratio
    assert rows[0].endswith("| 1.000 |")  # each network's plain variant is the time reference
