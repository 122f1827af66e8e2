"""easyhard.glyphs: the handwriting-like public proxy (font glyphs, distorted, MNIST-normalised)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from easyhard.glyphs import FONTS, font_files, glyph_digits, normalise


def test_shape_range_labels_and_public_seed():
    x, y = glyph_digits(3, seed=0)
    assert x.shape == (30, 1, 28, 28) and x.dtype == np.float32
    assert x.min() >= 0.0 and np.allclose(x.max(axis=(1, 2, 3)), 1.0)
    assert y.tolist() == [k for k in range(10) for _ in range(3)]
    again, _ = glyph_digits(3, seed=0)
    other, _ = glyph_digits(3, seed=1)
    assert np.array_equal(x, again) and not np.allclose(x, other)
    with pytest.raises(ValueError, match="per_class"):
        glyph_digits(0)


def test_fonts_are_matplotlibs_and_draw_distinct_digits():
    files = font_files()
    assert [f.name for f in files] == list(FONTS) and all(f.is_file() for f in files)
    from easyhard.glyphs import render

    for f in files:  # no font maps two digits to one glyph (symbol fonts do)
        glyphs = [render(d, f, 0) for d in range(10)]
        assert all(g.sum() > 20 for g in glyphs), f.name
        assert min(np.abs(a - b).sum() for i, a in enumerate(glyphs) for b in glyphs[i + 1 :]) > 5


def test_mnist_normalisation_box_and_centre_of_mass():
    x, _ = glyph_digits(4, seed=2)
    for img in x[:, 0]:
        rows, cols = np.flatnonzero(img.max(1) > 0.05), np.flatnonzero(img.max(0) > 0.05)
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= 23  # 20-pixel box + blur
        cy, cx = ndimage.center_of_mass(img)
        assert abs(cy - 13.5) < 0.6 and abs(cx - 13.5) < 0.6
    # a wide blob is fitted by its longer side
    blob = np.zeros((64, 64), np.float32)
    blob[20:30, 5:60] = 1.0
    out = normalise(blob)
    assert (out.max(0) > 0.5).sum() in (19, 20, 21) and (out.max(1) > 0.5).sum() <= 6


def test_classes_are_separable_but_not_trivial():
    """Nearest class mean on held-out glyphs: well above chance (the classes carry the digit),
    below perfect (the distortions vary the strokes)."""
    x, y = glyph_digits(30, seed=3)
    flat = x.reshape(len(x), -1)
    train = np.arange(len(x)) % 3 != 0
    means = np.stack([flat[train & (y == k)].mean(0) for k in range(10)])
    pred = np.argmin(((flat[~train, None] - means[None]) ** 2).sum(-1), 1)
    acc = float((pred == y[~train]).mean())
    assert 0.5 < acc < 0.99, acc
