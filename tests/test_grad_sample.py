"""Layer-wise per-example gradients equal a torch.func vmap(grad) reference, on the real networks."""

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from easyhard.config import NetworkConfig, defaults, load_params
from easyhard.dpsgd import per_example_grads, per_example_norms
from easyhard.edm import Denoiser, draw_noise
from easyhard.grad_sample import UnsupportedLayerError, layerwise_grads
from easyhard.multiplicity import PerExampleLoss
from easyhard.networks import build_unet

DEFAULTS = defaults()  # params.yaml: the only place defaults live

SD = 0.5


def default_network() -> NetworkConfig:
    """The network params.yaml ships (28x28, attention at half resolution)."""
    return load_params("params.yaml").network


def loss_module(net: NetworkConfig, size: int, dtype=torch.float64) -> PerExampleLoss:
    torch.manual_seed(0)
    den = Denoiser(build_unet(net, (1, size, size), 10), SD, 10).to(dtype)
    # perturb the zero-initialised output layers so every parameter has a non-trivial gradient
    with torch.no_grad():
        for p in den.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return PerExampleLoss(den)


def batch(b: int, k: int, size: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(b, 1, size, size, generator=g, dtype=dtype) * 2 - 1
    y = torch.randint(0, 10, (b,), generator=g)
    d = draw_noise(
        b, (1, size, size), replace(DEFAULTS.edm, noise_multiplicity=k, label_dropout=0.3), g
    )
    return x, y, d.sigma.to(dtype), d.noise.to(dtype), d.drop


def assert_close(ours: dict, ref: dict, rel: float = 1e-5) -> None:
    assert ours.keys() == ref.keys()
    for name in ref:
        assert ours[name].shape == ref[name].shape, name
        scale = ref[name].flatten(1).norm(dim=1).clamp_min(1e-12)
        err = (ours[name] - ref[name]).flatten(1).norm(dim=1) / scale
        small = ref[name].flatten(1).norm(dim=1) < 1e-10  # exactly-zero gradients stay zero
        assert bool((err[~small] < rel).all()), (name, float(err.max()))
        assert bool((ours[name].flatten(1).norm(dim=1)[small] < 1e-10).all()), name


def whole_gradient_error(ours: dict, ref: dict) -> float:
    """max over examples of ||g - g_ref|| / ||g_ref|| over all parameters together."""
    a = torch.cat([ours[k].flatten(1) for k in ref], 1)
    b = torch.cat([ref[k].flatten(1) for k in ref], 1)
    return float(((a - b).norm(dim=1) / b.norm(dim=1)).max())


NETWORKS = {
    "default": lambda: (default_network(), 28),
    "attention-everywhere": lambda: (
        replace(DEFAULTS.network, channels=(8, 16), attention=(True, True), norm_groups=4),
        8,
    ),
    "no-attention": lambda: (
        replace(DEFAULTS.network, channels=(8, 16), attention=(False, False), norm_groups=4),
        8,
    ),
}


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("network", list(NETWORKS))
def test_layerwise_equals_vmap_reference(network, k):
    net, size = NETWORKS[network]()
    module = loss_module(net, size)
    data = batch(3, k, size)
    ours, loss_ours = per_example_grads(module, *data, grad_sampler="layerwise")
    ref, loss_ref = per_example_grads(module, *data, grad_sampler="vmap")
    assert torch.allclose(loss_ours, loss_ref, rtol=1e-10)
    assert_close(ours, ref)
    norms, norms_ref = per_example_norms(ours), per_example_norms(ref)
    assert torch.allclose(norms, norms_ref, rtol=1e-5)
    # parameters are trainable again and no batch gradient was accumulated
    assert all(p.requires_grad and p.grad is None for p in module.parameters())


def test_sum_over_examples_equals_ordinary_gradient():
    net, size = NETWORKS["attention-everywhere"]()
    module = loss_module(net, size)
    data = batch(4, 3, size)
    ours, _ = layerwise_grads(module, *data)
    module(*data).sum().backward()
    for name, p in module.named_parameters():
        assert torch.allclose(ours[name].sum(0), p.grad, rtol=1e-8, atol=1e-12), name


def test_float32_default_network_close_to_float64():
    net = default_network()
    m64 = loss_module(net, 28)
    m32 = copy.deepcopy(m64).float()
    data = batch(2, 2, 28)
    g64, _ = layerwise_grads(m64, *data)
    g32, _ = layerwise_grads(m32, *(t.float() if t.is_floating_point() else t for t in data))
    n64, n32 = per_example_norms(g64), per_example_norms(g32).double()
    assert torch.allclose(n32, n64, rtol=1e-4)


class WithLayerNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.norm = nn.LayerNorm(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.lin(x)).pow(2).sum(1)


def test_unsupported_layer_is_named_not_skipped():
    with pytest.raises(UnsupportedLayerError, match="'norm' \\(LayerNorm\\)"):
        layerwise_grads(WithLayerNorm(), torch.randn(2, 3))
    # frozen unsupported layers are fine: they have nothing to clip
    m = WithLayerNorm()
    m.norm.requires_grad_(False)
    grads, _ = layerwise_grads(m, torch.randn(2, 3))
    assert set(grads) == {"lin.weight", "lin.bias"}
    assert not m.norm.weight.requires_grad and m.lin.weight.requires_grad


def test_rows_must_group_into_examples():
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(torch.cat([x, x[:1]])).sum() * torch.ones(len(x))

    with pytest.raises(ValueError, match="rows do not split"):
        layerwise_grads(Bad(), torch.randn(2, 2))


def test_channels_last_and_bf16_autocast_keep_per_example_gradients():
    """The GPU options: channels-last is exact; bf16 autocast stays close, gradients in float32."""
    from easyhard.compute import Compute, prepare_model

    net, size = NETWORKS["attention-everywhere"]()
    m = loss_module(net, size, torch.float32)
    data = tuple(t.float() if t.is_floating_point() else t for t in batch(3, 2, size))
    ref, _ = layerwise_grads(m, *data)
    cl = copy.deepcopy(m)
    cl.compute = Compute("cpu", None, channels_last=True)
    prepare_model(cl, cl.compute)
    x_cl = data[0].contiguous(memory_format=torch.channels_last)
    got, _ = layerwise_grads(cl, x_cl, *data[1:])
    assert whole_gradient_error(got, ref) < 1e-5  # float32 (a few entries are exactly 0 in theory)
    bf = copy.deepcopy(m)
    bf.compute = Compute("cpu", torch.bfloat16)
    got_bf, loss_bf = layerwise_grads(bf, *data)
    assert loss_bf.dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in got_bf.values())
    n_ref, n_bf = per_example_norms(ref), per_example_norms(got_bf)
    assert torch.allclose(n_bf, n_ref, rtol=0.1)
