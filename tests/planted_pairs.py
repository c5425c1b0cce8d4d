"""Generated images with planted duplicate pairs, for the audit's tests and benchmark.

The images are natural-ish: coloured 1/f^a noise (the spectrum of photographs) in a class-typical
palette, with a soft elliptical "object" on top, drawn on a 40x40 canvas of which a 32x32 crop is
the image. So a shifted duplicate is another crop of the same scene (new content comes in at the
border), as near-duplicates in CIFAR are, and not a rolled copy.

Planted pairs: exact copy, JPEG re-encoded at quality 75, shifted by 1 and by 2 pixels, brightness
+10%, mirrored (KINDS); and a colour balance (each channel's own gain, 0.8-1.2), a 1.1x zoom (the
scene enlarged, its centre kept) and a 1-pixel crop re-encoded at quality 75 (MORE_KINDS).
Planted look-alikes (not duplicates): a second scene of the same class that shares the first's
coarse layout (its lowest spatial frequencies) and has the same kind of object 3-6
pixels away, in another pose and size: the two look alike at a glance but are different pictures.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

CANVAS = 40
MARGIN = (CANVAS - 32) // 2
KINDS = ("exact", "jpeg75", "shift1", "shift2", "brightness", "mirrored")
# kinds added with the judged real pairs (bench/data/judged_pairs.csv); not in KINDS, so that the
# benchmarks' generated data stay what they measured
MORE_KINDS = ("colour_gain", "zoom", "crop_jpeg")
# where a pair's two images go (first, second): within a split and across splits
ZOOM = 1.1
PLACEMENTS = (("test", "train"), ("val", "train"), ("test", "val"), ("train", "train"), ("test", "test"))


@dataclass
class Scenes:
    """Canvases with what is needed to draw look-alikes of them."""

    canvas: np.ndarray  # float [n, 40, 40, 3], 0..255 before clipping
    labels: np.ndarray
    spectrum: np.ndarray  # complex [n, 3, 40, 40], the background noise
    objects: np.ndarray  # [n, 6]: centre y, x, radii, angle, shade


def class_styles(num_classes: int = 10, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "slope": rng.uniform(1.0, 1.6),
            "palette": rng.normal(0, 26, (3, 3)),
            "mean": rng.uniform(70, 180, 3),
            "object": rng.uniform(30, 225, 3),
        }
        for _ in range(num_classes)
    ]


def _noise(rng: np.random.Generator, n: int, slope: float, low_from: np.ndarray | None) -> np.ndarray:
    f = np.hypot(
        *np.meshgrid(np.fft.fftfreq(CANVAS) * CANVAS, np.fft.fftfreq(CANVAS) * CANVAS, indexing="ij")
    )
    amplitude = np.where(f > 0, 1.0 / np.maximum(f, 1) ** slope, 0.0)
    spectrum = (
        rng.normal(size=(n, 3, CANVAS, CANVAS)) + 1j * rng.normal(size=(n, 3, CANVAS, CANVAS))
    ) * amplitude
    if low_from is not None:  # a look-alike: the same coarse layout
        coarse = f <= 1.5
        spectrum[:, :, coarse] = low_from[:, :, coarse]
    return spectrum


def _draw(spectrum: np.ndarray, objects: np.ndarray, style: dict) -> np.ndarray:
    field = np.fft.ifft2(spectrum).real
    field /= field.std(axis=(2, 3), keepdims=True) + 1e-8
    rgb = np.einsum("ij,njhw->nhwi", style["palette"], field) + style["mean"]
    y, x = np.mgrid[0:CANVAS, 0:CANVAS] + 0.5
    cy, cx, ry, rx, angle, shade = (objects[:, k, None, None] for k in range(6))
    dy, dx = y - cy, x - cx
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
    inside = np.clip((1 - np.hypot(u, v)) * np.minimum(rx, ry), 0, 1)[..., None]  # anti-aliased edge
    colour = style["object"] * shade[..., None] + field.transpose(0, 2, 3, 1)[..., :1] * 12
    return rgb * (1 - inside) + colour * inside


def scenes(
    rng: np.random.Generator, labels: np.ndarray, styles: list[dict], like: Scenes | None = None
) -> Scenes:
    """One scene per label; with `like`, look-alikes of those scenes (same labels, same order)."""
    n = len(labels)
    canvas = np.empty((n, CANVAS, CANVAS, 3))
    spectrum = np.empty((n, 3, CANVAS, CANVAS), complex)
    objects = np.empty((n, 6))
    if like is None:
        objects[:] = np.column_stack(
            [
                rng.uniform(14, 26, (n, 2)),
                rng.uniform(4, 9, (n, 2)),
                rng.uniform(0, np.pi, n),
                rng.uniform(0.7, 1.2, n),
            ]
        )
    else:
        # the same kind of object in the same part of the picture, another pose
        objects[:] = like.objects
        objects[:, :2] += rng.uniform(3, 6, (n, 2)) * rng.choice([-1, 1], (n, 2))
        objects[:, 2:4] *= rng.uniform(0.75, 1.3, (n, 2))
        objects[:, 4] = rng.uniform(0, np.pi, n)
        objects[:, 5] *= rng.uniform(0.8, 1.2, n)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        low = None if like is None else like.spectrum[members]
        spectrum[members] = _noise(rng, len(members), styles[label]["slope"], low)
        canvas[members] = _draw(spectrum[members], objects[members], styles[label])
    return Scenes(canvas, np.asarray(labels), spectrum, objects)


def crop(canvas: np.ndarray, dy: int = 0, dx: int = 0) -> np.ndarray:
    """The 32x32 image of a scene; dy, dx move the crop window (the content moves by -dy, -dx)."""
    y, x = MARGIN + dy, MARGIN + dx
    return np.clip(np.rint(canvas[..., y : y + 32, x : x + 32, :]), 0, 255).astype(np.uint8)


def jpeg(images: np.ndarray, quality: int = 75) -> np.ndarray:
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def _shift(rng: np.random.Generator, n: int, pixels: int) -> np.ndarray:
    """n crop offsets with a largest component of exactly `pixels` (straight or diagonal)."""
    main = rng.choice([-pixels, pixels], size=n)
    other = rng.integers(-pixels, pixels + 1, size=n)
    vertical = rng.random(n) < 0.5
    return np.column_stack([np.where(vertical, main, other), np.where(vertical, other, main)])


def duplicate(kind: str, scene: Scenes, rng: np.random.Generator) -> np.ndarray:
    """The planted copy of each scene's image (the original is crop(scene.canvas))."""
    original = crop(scene.canvas)
    if kind == "exact":
        return original.copy()
    if kind == "jpeg75":
        return jpeg(original, 75)
    if kind in ("shift1", "shift2"):
        offsets = _shift(rng, len(original), int(kind[-1]))
        return np.stack([crop(c, dy, dx) for c, (dy, dx) in zip(scene.canvas, offsets, strict=True)])
    if kind == "brightness":
        return np.clip(np.rint(original.astype(np.float64) * 1.1), 0, 255).astype(np.uint8)
    if kind == "mirrored":
        return original[:, :, ::-1].copy()
    if kind == "colour_gain":  # a colour balance: each channel's own gain, 0.8-1.2
        gain = rng.uniform(0.8, 1.2, (len(original), 1, 1, 3))
        return np.clip(np.rint(original.astype(np.float64) * gain), 0, 255).astype(np.uint8)
    if kind == "zoom":  # the scene enlarged ZOOM times (bicubic), the centre 32x32 kept
        return np.stack([_zoom(c, ZOOM) for c in scene.canvas])
    if kind == "crop_jpeg":  # another crop, 1 pixel off, re-encoded at quality 75
        offsets = _shift(rng, len(original), 1)
        shifted = [crop(c, dy, dx) for c, (dy, dx) in zip(scene.canvas, offsets, strict=True)]
        return jpeg(np.stack(shifted), 75)
    raise ValueError(kind)


def _zoom(canvas: np.ndarray, factor: float) -> np.ndarray:
    """The 32x32 centre of the canvas enlarged `factor` times (as a crop of a larger print)."""
    size = int(round(CANVAS * factor))
    image = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
    image = image.resize((size, size), Image.BICUBIC)
    start = (size - 32) // 2
    return np.asarray(image)[start : start + 32, start : start + 32].copy()


@dataclass
class Planted:
    images: dict[str, np.ndarray]  # test, val, train
    labels: dict[str, np.ndarray]
    pairs: dict[str, set] = field(default_factory=dict)  # kind -> {((split, i), (split, j))}
    lookalikes: set = field(default_factory=set)

    def truth(self, pair: tuple) -> str | None:
        """The planted kind of a found pair (either order), 'lookalike', or None (unplanted)."""
        for kind, pairs in self.pairs.items():
            if pair in pairs or pair[::-1] in pairs:
                return kind
        if pair in self.lookalikes or pair[::-1] in self.lookalikes:
            return "lookalike"
        return None


def planted_dataset(
    kinds: tuple[str, ...] = KINDS,
    pairs_per_kind: int = 40,
    lookalike_pairs: int = 80,
    background: tuple[int, int, int] = (400, 150, 1500),
    seed: int = 0,
    num_classes: int = 10,
) -> Planted:
    """test/val/train splits of independent scenes (`background` images each) plus planted pairs
    of each kind and look-alike pairs, both images of a pair of the same class, spread over
    PLACEMENTS; the splits are then shuffled.
    """
    rng = np.random.default_rng(seed)
    styles = class_styles(num_classes, seed)
    parts = {name: [] for name in ("test", "val", "train")}  # lists of (images, labels, tags)

    def place(first: np.ndarray, second: np.ndarray, labels: np.ndarray, tag: str) -> None:
        where = rng.integers(len(PLACEMENTS), size=len(labels))
        for k, (a, b) in enumerate(PLACEMENTS):
            sel = where == k
            parts[a].append((first[sel], labels[sel], [(tag, i, 0) for i in np.flatnonzero(sel)]))
            parts[b].append((second[sel], labels[sel], [(tag, i, 1) for i in np.flatnonzero(sel)]))

    for name, count in zip(("test", "val", "train"), background, strict=True):
        labels = rng.integers(num_classes, size=count)
        parts[name].append((crop(scenes(rng, labels, styles).canvas), labels, [None] * count))
    for kind in kinds:
        labels = rng.integers(num_classes, size=pairs_per_kind)
        scene = scenes(rng, labels, styles)
        place(crop(scene.canvas), duplicate(kind, scene, rng), labels, kind)
    if lookalike_pairs:
        labels = rng.integers(num_classes, size=lookalike_pairs)
        scene = scenes(rng, labels, styles)
        similar = scenes(rng, labels, styles, like=scene)
        place(crop(scene.canvas), crop(similar.canvas), labels, "lookalike")

    planted = Planted(images={}, labels={})
    where: dict[tuple, list] = {}
    for name, chunks in parts.items():
        images = np.concatenate([c[0] for c in chunks])
        labels = np.concatenate([c[1] for c in chunks]).astype(np.int64)
        tags = [t for c in chunks for t in c[2]]
        order = rng.permutation(len(images))
        planted.images[name], planted.labels[name] = images[order], labels[order]
        for position, original in enumerate(order):
            if tags[original] is not None:
                tag, pair, member = tags[original]
                where.setdefault((tag, pair), [None, None])[member] = (name, position)
    for (tag, _), (a, b) in where.items():
        if tag == "lookalike":
            planted.lookalikes.add((a, b))
        else:
            planted.pairs.setdefault(tag, set()).add((a, b))
    return planted
