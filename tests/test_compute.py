"""bf16 autocast and channels-last: resolved off on CPU, refused where impossible, same results."""

from dataclasses import replace

import pytest
import torch

from easyhard.compute import FP32, Compute, autocast, prepare_input, prepare_model, resolve
from easyhard.config import (
    ConfigError,
    defaults,
)
from easyhard.modelfile import build_denoiser
from easyhard.train import pretrain

DEFAULTS = defaults()  # params.yaml: the only place defaults live


def test_auto_is_fp32_contiguous_on_cpu_and_bf16_is_refused():
    c = resolve("cpu", DEFAULTS.compute)
    assert c.dtype is None and not c.channels_last and c.precision == "fp32"
    assert resolve(
        "cpu", replace(DEFAULTS.compute, channels_last=True)
    ).channels_last  # explicit: allowed
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve("cpu", replace(DEFAULTS.compute, precision="bf16"))
    with pytest.raises(ConfigError, match="needs device=cuda"):
        replace(DEFAULTS, compute=replace(DEFAULTS.compute, precision="bf16"))
    with pytest.raises(ConfigError, match="compute.precision must be one of"):
        replace(DEFAULTS.compute, precision="fp16")


def _denoiser():
    torch.manual_seed(0)
    net = replace(DEFAULTS.network, channels=(8, 16), attention=(False, True), norm_groups=4)
    return build_denoiser(net, (1, 8, 8), 3, 0.5)


def test_channels_last_gives_the_same_denoiser_output():
    den = _denoiser().eval()
    x = torch.randn(5, 1, 8, 8)
    sigma, labels = torch.rand(5) + 0.1, torch.tensor([0, 1, 2, 3, 0])
    ref = den(x, sigma, labels)
    cl = Compute(channels_last=True)
    prepare_model(den, cl)
    assert den.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    out = den(prepare_input(x, cl), sigma, labels)
    assert torch.allclose(out, ref, atol=1e-5)


def test_bf16_autocast_runs_matmuls_in_bf16():
    # CPU autocast supports bf16, so the context itself is testable here (configs refuse it on CPU)
    den = _denoiser().eval()
    x = torch.randn(2, 1, 8, 8)
    with autocast(Compute(dtype=torch.bfloat16)):
        h = den.unet.conv_in(x)
        out = den(x, torch.ones(2), torch.tensor([0, 1]))
    assert h.dtype == torch.bfloat16 and torch.isfinite(out).all()
    with autocast(FP32):
        assert den.unet.conv_in(x).dtype == torch.float32


def test_pretraining_with_channels_last_matches_and_bf16_runs():
    x, y = torch.rand(12, 1, 8, 8), torch.arange(12) % 3
    cfg, edm = replace(DEFAULTS.pretrain, steps=3, batch_size=4, log_every=1), DEFAULTS.edm
    _, ref = pretrain(_denoiser(), x, y, cfg, edm, seed=0, progress=False)
    _, cl = pretrain(
        _denoiser(), x, y, cfg, edm, seed=0, progress=False, compute=Compute(channels_last=True)
    )
    assert [r["loss"] for r in cl.rows] == pytest.approx([r["loss"] for r in ref.rows], rel=1e-4)
    bf = Compute(dtype=torch.bfloat16)
    _, low = pretrain(_denoiser(), x, y, cfg, edm, seed=0, progress=False, compute=bf)
    assert [r["loss"] for r in low.rows] == pytest.approx([r["loss"] for r in ref.rows], rel=0.1)
