"""A public proxy of handwritten digits: digit glyphs of the fonts matplotlib ships, distorted.

scikit-learn's digits (:func:`easyhard.proxy.augmented_digits`) are 8x8 images upsampled: smooth
blobs, where handwritten 28x28 digits have sharp strokes of varied width and slant. These images
are rendered instead: each is one digit of one of matplotlib's bundled TrueType fonts (DejaVu,
STIX, Computer Modern; public files, no download), at a random stroke width, through a random
rotation, shear and aspect change and a smooth elastic distortion, then fitted into a 20x20 box
and centred by its centre of mass in 28x28 (MNIST's own normalisation). Everything comes from a
public seed. Not imported by any stage: benchmarks only (``benchmarks/proxy_pipeline.py --proxy
glyphs``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

#: Canvas the glyph is drawn and distorted on before it is fitted into the box.
CANVAS = 64
#: Font size on the canvas (pixels) and the bounding box the digit is fitted into (MNIST: 20).
FONT_PX, BOX = 44, 20


#: matplotlib's bundled TrueType fonts used, by file name (a fixed public list: its symbol and
#: math-extension fonts, e.g. cmex10 or cmsy10, map the digits to other shapes).
FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf", "cmr10.ttf", "cmb10.ttf", "cmss10.ttf",
    "cmti10.ttf", "cmtt10.ttf",
)  # fmt: skip


@functools.cache
def font_files() -> tuple[Path, ...]:
    """The :data:`FONTS` files in this matplotlib installation (no download)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    missing = [f for f in FONTS if not (folder / f).is_file()]
    if missing:
        raise RuntimeError(f"matplotlib's fonts folder {folder} lacks {', '.join(missing)}")
    return tuple(folder / f for f in FONTS)


def render(digit: int, font: Path, stroke: int) -> np.ndarray:
    """``digit`` in ``font`` centred on a ``CANVAS``-square black canvas, white, with a stroke
    widened by ``stroke`` pixels; float32 in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("L", (CANVAS, CANVAS), 0)
    f = ImageFont.truetype(str(font), FONT_PX)
    draw = ImageDraw.Draw(img)
    draw.text(
        (CANVAS / 2, CANVAS / 2),
        str(digit),
        fill=255,
        font=f,
        anchor="mm",
        stroke_width=stroke,
        stroke_fill=255,
    )
    return np.asarray(img, dtype=np.float32) / 255.0


def distort(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random affine (rotation within 15 degrees, shear within 0.3, aspect 0.75-1.25) and a
    smooth elastic displacement (Gaussian-filtered noise, about 2 canvas pixels), bilinear."""
    from scipy import ndimage

    n = img.shape[0]
    a = np.deg2rad(rng.uniform(-15.0, 15.0))
    shear, aspect = rng.uniform(-0.3, 0.3), rng.uniform(0.75, 1.25)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([aspect, 1.0])
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) - (n - 1) / 2
    src = np.linalg.inv(m) @ np.stack([yy.ravel(), xx.ravel()])  # output -> input coordinates
    disp = [ndimage.gaussian_filter(rng.uniform(-1, 1, (n, n)), 5.0) for _ in range(2)]
    scale = 2.0 / max(float(np.abs(np.stack(disp)).max()), 1e-8)
    coords = src.reshape(2, n, n) + (n - 1) / 2 + scale * np.stack(disp)
    return ndimage.map_coordinates(img, coords, order=1, mode="constant", cval=0.0)


def normalise(img: np.ndarray, size: int = 28, box: int = BOX) -> np.ndarray:
    """MNIST's normalisation: crop to the ink, fit the longer side into ``box`` pixels
    (anti-aliased, aspect kept), centre the centre of mass in a ``size`` square; [0, 1]."""
    from PIL import Image
    from scipy import ndimage

    rows, cols = np.flatnonzero(img.max(1) > 0.05), np.flatnonzero(img.max(0) > 0.05)
    crop = img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    f = box / max(h, w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    small = Image.fromarray(np.round(crop * 255).astype(np.uint8)).resize((nw, nh), Image.LANCZOS)
    out = np.zeros((size, size), np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = np.asarray(small, np.float32) / 255.0
    cy, cx = ndimage.center_of_mass(out)
    out = ndimage.shift(out, ((size - 1) / 2 - cy, (size - 1) / 2 - cx), order=1, cval=0.0)
    return np.clip(out / max(float(out.max()), 1e-8), 0.0, 1.0).astype(np.float32)


def glyph_digits(per_class: int, size: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` rendered, distorted digits per class (public ``seed``): ``[10 * per_class, 1,
    size, size]`` in [0, 1] and labels 0-9 in class order."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    fonts = font_files()
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in range(10):
        for _ in range(per_class):
            font = fonts[rng.integers(len(fonts))]
            stroke = int(rng.integers(0, 3))  # 0-2 canvas pixels: thin to bold, like pens
            xs.append(normalise(distort(render(k, font, stroke), rng), size))
            ys.append(k)
    return np.stack(xs)[:, None], np.asarray(ys, dtype=np.int64)
