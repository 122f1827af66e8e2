"""Data-parallel DP-SGD: 2 gloo processes give the single-process update, noise added once."""

import os
import socket
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from easyhard.config import defaults
from easyhard.dpsgd import DPSGD
from easyhard.edm import Denoiser, draw_noise
from easyhard.multiplicity import PerExampleLoss
from easyhard.networks import build_unet
from easyhard.privacy.randomness import NoiseSource, SecureSource, SeededSource
from easyhard.world import World

DEFAULTS = defaults()  # params.yaml: the only place defaults live

SIGMA, CLIP, EXPECTED, SEED = 1.1, 0.05, 6.0, 11


def model() -> PerExampleLoss:
    torch.manual_seed(0)
    net = replace(DEFAULTS.network, channels=(8, 16), attention=(False, True), norm_groups=4)
    return PerExampleLoss(Denoiser(build_unet(net, (1, 8, 8), 3), 0.5, 3).double())


def data(b: int = 7):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(b, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.randint(0, 3, (b,), generator=g)
    d = draw_noise(b, (1, 8, 8), replace(DEFAULTS.edm, noise_multiplicity=2, label_dropout=0.2), g)
    return x, y, d.sigma.double(), d.noise.double(), d.drop


def private_step(world: World, sigma: float = SIGMA, noise: NoiseSource | None = None):
    dp = DPSGD(
        model(),
        noise_multiplier=sigma,
        clip=CLIP,
        expected_batch=EXPECTED,
        physical_batch=2,
        noise=noise or SeededSource(SEED, "dp_sgd"),
        world=world,
    )
    return dp.private_gradient(*data())


def _worker(rank: int, size: int, port: int, out: str, sigma: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        world = World(rank, size)
        grads, stats = private_step(world, sigma)
        # secure mode: rank 0's secret key reaches every rank in memory, so all add the same noise
        key = world.broadcast_bytes(SecureSource.shared_key() if world.is_main else None)
        secure, _ = private_step(world, sigma, SecureSource(key))
        torch.save({"grads": grads, "stats": stats, "secure": secure}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    """Same logical batch and noise seed: every rank's update equals the single-process one."""
    sigma = SIGMA
    out = str(tmp_path / "rank")
    mp.spawn(_worker, args=(2, free_port(), out, sigma), nprocs=2, join=True)
    single, single_stats = private_step(World(), sigma)
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]
    for name, g in ranks[0]["secure"].items():
        assert torch.equal(ranks[1]["secure"][name], g), name  # one shared secret noise draw
        assert not torch.allclose(g, single[name])  # and not the seeded (public) one
    for name, g in single.items():
        for r in ranks:
            assert torch.allclose(r["grads"][name], g, rtol=1e-10, atol=1e-14), name
    for r in ranks:
        assert r["stats"].batch_size == single_stats.batch_size
        assert r["stats"].loss == pytest.approx(single_stats.loss, rel=1e-10)
        assert r["stats"].grad_norm_mean == pytest.approx(single_stats.grad_norm_mean, rel=1e-10)
        assert r["stats"].clipped_fraction == single_stats.clipped_fraction


def test_shards_partition_the_batch():
    for size in (1, 2, 3, 5):
        shards = [World(r, size).shard(11) for r in range(size)]
        assert sorted(torch.cat(shards).tolist()) == list(range(11))
