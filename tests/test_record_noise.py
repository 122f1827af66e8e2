"""Per-record diffusion randomness (:func:`easyhard.edm.record_ids`,
:func:`easyhard.edm.draw_noise_per_record`): a record's draws at a step depend on that record, the
step and the public seed only; their distribution is the one :func:`easyhard.edm.draw_noise` draws.
"""

from dataclasses import replace

import numpy as np
import torch

from easyhard.config import defaults
from easyhard.edm import draw_noise_per_record, record_generator, record_ids

DEFAULTS = defaults()  # params.yaml: the only place defaults live
EDM = replace(DEFAULTS.edm, noise_multiplicity=3, label_dropout=0.25)
SHAPE = (1, 4, 4)


def _records(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *SHAPE), generator=g).float() / 255
    return x, torch.randint(0, 10, (n,), generator=g)


def _same(a, b) -> bool:
    pairs = zip((a.sigma, a.noise, a.drop), (b.sigma, b.noise, b.drop), strict=True)
    return all(torch.equal(u, v) for u, v in pairs)


def _rows(d, rows):
    return type(d)(d.sigma[rows], d.noise[rows], d.drop[rows])


def test_ids_are_a_function_of_the_record_alone():
    x, y = _records(20)
    ids = record_ids(x, y, seed=0)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    assert record_ids(x[perm], y[perm], seed=0) == [ids[i] for i in perm.tolist()]  # position-free
    assert record_ids(x[:5], y[:5], seed=0) == ids[:5]  # other records do not matter
    assert len(set(ids)) == 20 and all(0 <= i < 2**128 for i in ids)
    one = x.clone()
    one[3, 0, 2, 1] = (one[3, 0, 2, 1] * 255 + 1) % 256 / 255  # one pixel, one grey level
    changed = record_ids(one, y, seed=0)
    assert changed[3] != ids[3] and changed[:3] + changed[4:] == ids[:3] + ids[4:]
    relabel = y.clone()
    relabel[7] = (relabel[7] + 1) % 10
    assert record_ids(x, relabel, seed=0)[7] != ids[7]
    assert all(
        a != b for a, b in zip(record_ids(x, y, seed=1), ids, strict=True)
    )  # the public seed keys it
    dup = torch.cat([x[:1], x[:1]]), torch.cat([y[:1], y[:1]])
    assert record_ids(*dup, seed=0) == [ids[0], ids[0]]  # equal records, equal draws (a multiset)


def test_a_records_draws_do_not_depend_on_the_batch():
    x, y = _records(6)
    ids = record_ids(x, y, seed=0)
    full = draw_noise_per_record(ids, 5, SHAPE, EDM)
    assert full.sigma.shape == (6, 3) and full.noise.shape == (6, 3, *SHAPE)
    assert full.drop.shape == (6, 3) and full.drop.dtype == torch.bool
    assert full.sigma.dtype == torch.float32 and full.noise.dtype == torch.float32
    alone = draw_noise_per_record([ids[4]], 5, SHAPE, EDM)
    assert _same(_rows(full, [4]), alone)
    reordered = draw_noise_per_record([ids[4], ids[0], ids[2]], 5, SHAPE, EDM)
    assert _same(_rows(full, [4, 0, 2]), reordered)
    again = draw_noise_per_record(ids, 5, SHAPE, EDM)
    assert _same(full, again)  # bit-identical replays
    other_step = draw_noise_per_record(ids, 6, SHAPE, EDM)
    assert not torch.equal(full.noise, other_step.noise)
    assert not torch.equal(full.sigma, other_step.sigma)


def test_steps_use_disjoint_streams_and_the_draws_have_the_stated_law():
    n = 3000
    ids = record_ids(*_records(n, seed=2), seed=0)
    a = draw_noise_per_record(ids, 0, SHAPE, EDM)
    b = draw_noise_per_record(ids, 1, SHAPE, EDM)
    ln_sigma = a.sigma.double().log()
    m = ln_sigma.numel()
    assert abs(float(ln_sigma.mean()) - EDM.p_mean) < 4 * EDM.p_std / m**0.5
    assert abs(float(ln_sigma.std()) / EDM.p_std - 1) < 4 / (2 * m) ** 0.5
    drop = a.drop.double().mean()
    se = (EDM.label_dropout * (1 - EDM.label_dropout) / m) ** 0.5
    assert abs(float(drop) - EDM.label_dropout) < 4 * se
    z = a.noise.double()
    assert abs(float(z.mean())) < 4 / z.numel() ** 0.5
    assert abs(float(z.std()) - 1) < 4 / (2 * z.numel()) ** 0.5
    # the K draws of one record are independent, and so are consecutive steps (no overlap of
    # Philox counters: step t + 1 is not step t shifted by a few values)
    flat = z.reshape(n, 3, -1)
    corr_k = np.corrcoef(flat[:, 0].ravel(), flat[:, 1].ravel())[0, 1]
    corr_t = np.corrcoef(z.ravel(), b.noise.double().ravel())[0, 1]
    lim = 4 / flat[:, 0].numel() ** 0.5
    assert abs(corr_k) < lim and abs(corr_t) < lim
    # float64 streams of steps 0 and 1 of 50 records share no value (a shift would share many)
    t0 = np.concatenate([record_generator(i, 0).random(2000) for i in ids[:50]])
    t1 = np.concatenate([record_generator(i, 1).random(2000) for i in ids[:50]])
    assert len(np.intersect1d(t0, t1)) == 0 and len(np.unique(t0)) == len(t0)
