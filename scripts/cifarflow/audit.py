"""Dataset audit: exact and near-duplicate images within and across splits, class balance, anomalies.

Pure functions on uint8 NHWC images ([N, H, W, 3], RGB) and int labels; no file I/O.

How near-duplicates are found, in two stages whose cost grows close to linearly with the number of
images (no all-pairs comparison):

1. Candidates. Every image is reduced to its low spatial frequencies: per-channel mean removed, a
   Hann window (so that the image's borders do not wrap around), a 2-D DFT of which only the
   coefficients up to `descriptor_frequencies` cycles per image are kept. The candidate descriptor
   is the log magnitude of those coefficients. A translation changes only the phase of a Fourier coefficient,
   so a 1-2 pixel shift (another crop of the same shot) hardly moves the descriptor; JPEG
   re-encoding mostly changes the high frequencies, which are left out; a brightness or colour
   gain is a constant in log space, which the normalisation removes. Each image's `neighbours`
   nearest descriptors (projected on their first `dimensions` principal components) come from a
   faiss HNSW graph (O(N log N) to build and query); mirrored copies come from querying with the
   mirrored image's descriptor (computed from the same coefficients, no second DFT).
2. Verification. A candidate pair is compared as images: the normalised cross-correlation of the
   two windowed images at every shift of up to `max_shift` pixels, integer first, then in
   `shift_step` steps (sub-pixel) for the pairs that come close, evaluated from the same kind of
   Fourier coefficients for all pairs in one matrix product. The coefficients are weighted by a
   Gaussian blur (JPEG artefacts and sub-pixel offsets cost little) and by |f| (`whiten`: the
   correlation of the images' gradients rather than of their pixels), so that two different
   photographs with the same layout (a boat on the sea, a plane in the sky) do not correlate just
   because their large areas do. distance = 1 - the best correlation; a pair is a near-duplicate
   when it is at most `max_distance`. Correlation is blind to brightness and contrast, so +10%
   brightness costs nothing.

The verification's settings were chosen on planted pairs (tests/planted_pairs.py, seed 0: JPEG
quality 75 and 2-pixel crops reach a distance of about 0.2, look-alikes and unrelated scenes stay
above 0.24). max_distance was then chosen on 432 pairs of real CIFAR-10 training images judged by
eye (bench/data/judged_pairs.csv, bench/audit_judged.py): real photographs of one kind of scene
(a plane in an empty sky, a ship on a flat sea) come much closer than the planted look-alikes, and
0.09 is the largest threshold at which 95% or more of the flagged pairs are the same picture
(0.969); it finds 56% of the set's same-picture pairs, and misses about half of the planted JPEG
re-encodings and most 1.1x zooms (docs/audit.md).

Exact duplicates (identical pixels) are found by a content hash first; near-duplicate search runs
on one representative per group of identical images, and its pairs are expanded to every member.

Mirrors count: training flips images at random (train.flip) and the model averages over the
mirror at test time (train.tta), so a mirrored copy of a training image is as good as the image.

Near-constant images (pixel standard deviation below `flat_std`) have no structure to correlate:
they take part only in exact matching and are reported as anomalies.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

KINDS = ("exact", "near", "mirrored")
ANOMALY_CHECKS = ("near_constant", "almost_black", "almost_white", "single_channel", "repeated")
PAIR_COLUMNS = [
    "split_a",
    "index_a",
    "split_b",
    "index_b",
    "kind",
    "distance",
    "shift_y",
    "shift_x",
    "label_a",
    "label_b",
]


@dataclass(frozen=True)
class AuditSettings:
    """How the audit decides; the defaults are measured on planted pairs (tests/test_audit.py) and
    max_distance on real pairs judged by eye (bench/audit_judged.py)."""

    max_distance: float = 0.09  # 1 - normalised correlation: a near-duplicate is at most this far
    max_shift: float = 2.0  # pixels, in each direction
    shift_step: float = 0.5
    mirrors: bool = True
    neighbours: int = 5  # candidates per image (and as many for its mirror image)
    dimensions: int = 64  # of the candidate search (principal components of the descriptors)
    descriptor_frequencies: int = 6  # highest spatial frequency of the descriptor, cycles per image
    frequencies: int = 6  # highest spatial frequency the verification compares
    blur: float = 1.0  # Gaussian sigma in pixels applied before comparing (JPEG noise, sub-pixel shifts)
    taper: int = 4  # pixels of window taper at each edge in the verification
    whiten: float = 1.0  # weight |f|^(2 whiten): 1 compares gradients (detail), 0 plain pixels (layout)
    flat_std: float = 3.0  # grey levels: below it an image is near-constant
    repeat_limit: int = 3  # this many identical copies or more is an anomaly
    threads: int = 1


# ---------------------------------------------------------------------------------------------
# Exact duplicates


def content_hashes(images: np.ndarray) -> np.ndarray:
    """A BLAKE2b digest of each image's pixels (and shape), as an array of 16-byte strings."""
    images = np.ascontiguousarray(images)
    shape = repr(images.shape[1:]).encode()
    return np.array([hashlib.blake2b(shape + img.tobytes(), digest_size=16).digest() for img in images])


def exact_groups(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(representative, group) per image: the first image with the same hash, and a group number."""
    _, first, group = np.unique(hashes, return_index=True, return_inverse=True)
    return first[group], group


# ---------------------------------------------------------------------------------------------
# Fourier coefficients, descriptors, verification


def _window(size: int, taper: int) -> np.ndarray:
    """Flat in the middle, a cosine taper of `taper` pixels at each edge (a Tukey window), so that
    the image's borders do not wrap around in the DFT while most pixels count fully."""
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(taper) + 0.5) / taper)
    window = np.ones(size)
    window[:taper], window[size - taper :] = ramp, ramp[::-1]
    return window.astype(np.float32)


def _dft_rows(size: int, frequencies: int, taper: int, half: bool) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) [F', size] of the windowed DFT along one axis: frequencies 0..F (half) or
    0..F then -F..-1 (numpy's FFT order), the window folded in."""
    f = np.arange(frequencies + 1) if half else np.r_[0 : frequencies + 1, -frequencies:0]
    angle = 2 * np.pi * np.outer(f, np.arange(size)) / size
    window = _window(size, taper)
    return (np.cos(angle) * window).astype(np.float32), (np.sin(angle) * window).astype(np.float32)


def low_frequencies(images: np.ndarray, frequencies: int, taper: int, chunk: int = 2048) -> np.ndarray:
    """Complex DFT coefficients [N, 2F+1, F+1, 3] of the windowed, mean-free images (F = frequencies).

    Rows: vertical frequency 0..F, then -F..-1; columns: horizontal frequency 0..F (the other half
    plane is the complex conjugate, images being real). Two matrix products per chunk, as only a
    few of the 32x17 coefficients of a full FFT are needed.
    """
    n, h, w, _ = images.shape
    if not 0 < frequencies < min(h, w) // 2:
        raise ValueError(f"frequencies must be in 1..{min(h, w) // 2 - 1} for {h}x{w} images")
    cos_y, sin_y = _dft_rows(h, frequencies, taper, half=False)
    cos_x, sin_x = _dft_rows(w, frequencies, taper, half=True)
    along_x = np.concatenate([cos_x, -sin_x]).T  # [w, 2 fx]: exp(-i a) = cos a - i sin a
    rows, cols = len(cos_y), len(cos_x)
    out = np.empty((n, rows, cols, 3), dtype=np.complex64)
    for start in range(0, n, chunk):
        x = images[start : start + chunk].astype(np.float32)
        x -= x.mean(axis=(1, 2), keepdims=True)
        m = len(x)
        t = x.transpose(0, 3, 1, 2).reshape(-1, w) @ along_x  # [m*c*h, 2 fx]
        t = t.reshape(m * 3, h, 2 * cols).transpose(1, 0, 2).reshape(h, -1)  # [h, m*c*2fx]
        cy, sy = (cos_y @ t).reshape(rows, m, 3, 2, cols), (sin_y @ t).reshape(rows, m, 3, 2, cols)
        # along y: (cos - i sin)(re + i im)
        real = cy[:, :, :, 0] + sy[:, :, :, 1]
        imag = cy[:, :, :, 1] - sy[:, :, :, 0]
        out[start : start + m] = (real + 1j * imag).transpose(1, 0, 3, 2)
    return out


def mirror_coefficients(coefficients: np.ndarray, size: int) -> np.ndarray:
    """The coefficients of the horizontally mirrored images, from those of the images (no new DFT).

    Mirroring x -> size-1-x maps X(fy, fx) to exp(2 pi i fx/size) conj(X(-fy, fx)) (real images,
    a window symmetric about the centre).
    """
    rows = coefficients.shape[1]
    negative = (-np.arange(rows)) % rows  # row of -fy in the 0..F, -F..-1 order
    fx = np.arange(coefficients.shape[2])
    phase = np.exp(2j * np.pi * fx / size).astype(np.complex64)[None, None, :, None]
    return np.conj(coefficients[:, negative]) * phase


def descriptors(coefficients: np.ndarray) -> np.ndarray:
    """Shift-tolerant float32 descriptors [N, D] of unit length: log magnitudes of the coefficients.

    log(|c| + 0.3 mean|c|) per channel, then each channel's mean removed: a gain on a channel
    (brightness, colour balance) becomes a constant and drops out exactly; the offset keeps the
    weakest coefficients, which JPEG re-encoding changes most, from dominating.
    """
    n = len(coefficients)
    magnitude = np.abs(coefficients).reshape(n, -1, 3)
    log = np.log(magnitude + 0.3 * magnitude.mean(axis=1, keepdims=True) + 1e-6)
    log -= log.mean(axis=1, keepdims=True)
    flat = log.reshape(n, -1)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.ascontiguousarray(flat / np.maximum(norm, 1e-6), dtype=np.float32)


def _frequency_grid(frequencies: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertical and horizontal frequency, in cycles per pixel, of each coefficient low_frequencies keeps."""
    fy = np.r_[0 : frequencies + 1, -frequencies:0].astype(np.float64) / size
    fx = np.arange(frequencies + 1, dtype=np.float64) / size
    return np.broadcast_to(fy[:, None], (len(fy), len(fx))), np.broadcast_to(fx[None, :], (len(fy), len(fx)))


class Verifier:
    """Normalised cross-correlation of image pairs at sub-pixel shifts, from their low frequencies.

    corr(t) = sum_f w(f) Re[A(f) conj(B(f)) exp(2 pi i f.t)] / sqrt(E_A E_B): the correlation of
    the two blurred, windowed images with b's frame moved by t (Parseval). w(f) is the blur,
    squared as both images are blurred, times 2 where the conjugate coefficient, in the half
    plane not stored, counts too. All shifts of a batch of pairs are one matrix product.
    """

    def __init__(self, settings: AuditSettings, size: int) -> None:
        self.settings = settings
        self.size = size
        fy, fx = _frequency_grid(settings.frequencies, size)
        radius2 = fy**2 + fx**2
        blur = np.exp(-4 * np.pi**2 * settings.blur**2 * radius2)
        whitening = (radius2 * size**2) ** settings.whiten
        self.weight = (blur * whitening * np.where(fx > 0, 2.0, 1.0))[..., None]  # same per channel
        self.fy, self.fx = fy, fx

    def coefficients(self, images: np.ndarray) -> np.ndarray:
        return low_frequencies(images, self.settings.frequencies, self.settings.taper)

    def energies(self, coefficients: np.ndarray) -> np.ndarray:
        return np.einsum("nyxc,yxc->n", np.abs(coefficients) ** 2, self.weight, dtype=np.float64)

    def _matrix(self, ty: np.ndarray, tx: np.ndarray) -> np.ndarray:
        """[2K, T]: [Re; Im] of the cross-spectrum times it = corr at each shift (unnormalised)."""
        phase = 2 * np.pi * (self.fy.ravel()[:, None] * ty[None, :] + self.fx.ravel()[:, None] * tx[None, :])
        weight = self.weight[..., 0].ravel()[:, None]
        cos = np.repeat(weight * np.cos(phase), 3, axis=0)  # coefficients are [.., .., 3]: per channel
        sin = np.repeat(weight * np.sin(phase), 3, axis=0)
        return np.concatenate([cos, -sin]).astype(np.float32)

    def correlate(
        self,
        coefficients_a: np.ndarray,
        coefficients_b: np.ndarray,
        pairs: np.ndarray,
        ty: np.ndarray,
        tx: np.ndarray,
        chunk: int = 8192,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best correlation of each pair (row of a, row of b) over the shifts (ty, tx), and its index."""
        matrix = self._matrix(ty, tx)
        energy_a, energy_b = self.energies(coefficients_a), self.energies(coefficients_b)
        flat_a = coefficients_a.reshape(len(coefficients_a), -1)
        flat_b = coefficients_b.reshape(len(coefficients_b), -1)
        best = np.empty(len(pairs))
        arg = np.empty(len(pairs), dtype=np.int64)
        for start in range(0, len(pairs), chunk):
            a, b = pairs[start : start + chunk].T
            cross = flat_a[a] * np.conj(flat_b[b])
            corr = np.concatenate([cross.real, cross.imag], axis=1) @ matrix  # [P, T]
            top = np.argmax(corr, axis=1)
            arg[start : start + chunk] = top
            norm = np.sqrt(np.maximum(energy_a[a] * energy_b[b], 1e-12))
            best[start : start + chunk] = corr[np.arange(len(a)), top] / norm
        return best, arg

    def verify(
        self, coefficients_a: np.ndarray, coefficients_b: np.ndarray, pairs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(corr, shift_y, shift_x) of each pair at its best shift within max_shift.

        Integer shifts first; pairs that come within reach of max_distance are then refined on the
        shift_step grid (sub-pixel), which only they pay for. shift_y/x: where b's frame sits
        relative to a's (b shows a's content from shift_y rows lower, shift_x columns further right).
        """
        settings = self.settings
        reach = int(np.floor(settings.max_shift))
        grid = np.arange(-reach, reach + 1, dtype=np.float64)
        ty, tx = (t.ravel() for t in np.meshgrid(grid, grid, indexing="ij"))
        corr, arg = self.correlate(coefficients_a, coefficients_b, pairs, ty, tx)
        dy, dx = ty[arg], tx[arg]
        close = np.flatnonzero(1.0 - corr <= settings.max_distance + 0.1)
        if len(close) and settings.shift_step < 1:
            fine = np.arange(-settings.max_shift, settings.max_shift + 1e-9, settings.shift_step)
            fy, fx = (t.ravel() for t in np.meshgrid(fine, fine, indexing="ij"))
            fine_corr, fine_arg = self.correlate(coefficients_a, coefficients_b, pairs[close], fy, fx)
            better = fine_corr > corr[close]
            corr[close[better]] = fine_corr[better]
            dy[close[better]], dx[close[better]] = fy[fine_arg[better]], fx[fine_arg[better]]
        return corr, dy, dx


class NeighbourIndex:
    """Approximate nearest neighbours by cosine: a faiss HNSW graph (M=32) over the descriptors
    projected on their first `dimensions` principal components (fitted on a seeded sample of at
    most 20,000): the search is cheaper and more accurate in fewer dimensions, and near-duplicates
    stay nearest neighbours. Building and querying cost O(N log N) where a brute-force search costs
    O(N^2) (bench/audit_speed.py measures both). The graph is built on one thread, so that the
    same images always give the same graph and the same candidates; queries use `threads`."""

    def __init__(self, descriptors: np.ndarray, dimensions: int = 64, threads: int = 1) -> None:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU probing is no news
        import faiss  # here: only the candidate search needs it

        self.faiss, self.threads = faiss, max(1, threads)
        n, d = descriptors.shape
        self.pca = None
        if n >= 4 * dimensions and dimensions < d:
            sample = descriptors[np.sort(np.random.default_rng(0).permutation(n)[:20000])]
            self.pca = faiss.PCAMatrix(d, dimensions)
            self.pca.train(np.ascontiguousarray(sample))
        vectors = self._project(descriptors)
        faiss.omp_set_num_threads(1)
        self.index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = 64
        self.index.add(vectors)

    def _project(self, descriptors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(descriptors, dtype=np.float32)
        if self.pca is not None:
            vectors = self.pca.apply(vectors)
        norm = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.maximum(norm, 1e-6), dtype=np.float32)

    def search(self, descriptors: np.ndarray, k: int) -> np.ndarray:
        """Each query's k nearest indexed images, [Q, k]; -1 where there are fewer."""
        self.faiss.omp_set_num_threads(self.threads)
        self.index.hnsw.efSearch = max(64, 2 * k)
        return self.index.search(self._project(descriptors), k)[1]


# ---------------------------------------------------------------------------------------------
# The whole search


@dataclass
class _Pool:
    """All images of all splits in one array, with where each came from."""

    images: np.ndarray
    split: np.ndarray  # split number per image
    index: np.ndarray  # index within its split
    labels: np.ndarray
    names: list[str]


def _pool(splits: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray] | None) -> _Pool:
    names = list(splits)
    for name, images in splits.items():
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"split {name!r}: expected uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}"
            )
    shapes = {images.shape[1:] for images in splits.values() if len(images)}
    if len(shapes) > 1:
        raise ValueError(f"all splits must hold images of one size, got {sorted(shapes)}")
    sizes = [len(splits[name]) for name in names]
    label_parts = [
        np.asarray(labels[name], dtype=np.int64) if labels is not None else np.full(size, -1)
        for name, size in zip(names, sizes, strict=True)
    ]
    for name, part, size in zip(names, label_parts, sizes, strict=True):
        if len(part) != size:
            raise ValueError(f"split {name!r}: {size} images but {len(part)} labels")
    images = (
        np.concatenate([np.asarray(splits[name]) for name in names]) if names else np.zeros((0, 32, 32, 3))
    )
    return _Pool(
        images=images,
        split=np.repeat(np.arange(len(names)), sizes),
        index=np.concatenate([np.arange(size) for size in sizes]) if names else np.zeros(0, np.int64),
        labels=np.concatenate(label_parts) if names else np.zeros(0, np.int64),
        names=names,
    )


def pixel_std(images: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """[N, 3]: each image's standard deviation per channel, in grey levels."""
    out = np.empty((len(images), 3))
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].reshape(-1, images.shape[1] * images.shape[2], 3).astype(np.float32)
        out[start : start + chunk] = x.std(axis=1)
    return out


def _candidates(neighbour: np.ndarray) -> np.ndarray:
    """Unordered pairs (i < j) of each query i and its neighbours j, each pair once."""
    rows = np.repeat(np.arange(len(neighbour)), neighbour.shape[1])
    cols = neighbour.ravel()
    keep = (cols >= 0) & (cols != rows)
    pairs = np.sort(np.stack([rows[keep], cols[keep]], axis=1), axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def near_pairs(images: np.ndarray, settings: AuditSettings) -> pd.DataFrame:
    """Near-duplicate pairs among `images` (distinct images; see the module doc): columns i < j,
    distance, shift_y, shift_x, mirrored (i's mirror image matches j)."""
    n, size = len(images), images.shape[1]
    columns = {
        "i": np.int64,
        "j": np.int64,
        "distance": float,
        "shift_y": float,
        "shift_x": float,
        "mirrored": bool,
    }
    if n < 2:
        return pd.DataFrame({c: np.zeros(0, t) for c, t in columns.items()})
    hann = size // 2  # a taper of half the size is a Hann window
    described = low_frequencies(images, settings.descriptor_frequencies, hann)
    index = NeighbourIndex(descriptors(described), settings.dimensions, settings.threads)
    verifier = Verifier(settings, size)
    coefficients = verifier.coefficients(images)
    k = min(settings.neighbours + 1, n)  # + 1: an image finds itself
    found = []
    for mirrored in (False, True) if settings.mirrors else (False,):
        query = mirror_coefficients(described, size) if mirrored else described
        # (i, j) and (j, i) are one comparison; so are mirror(i) vs j and mirror(j) vs i
        pairs = _candidates(index.search(descriptors(query), k))
        query_coefficients = mirror_coefficients(coefficients, size) if mirrored else coefficients
        corr, dy, dx = verifier.verify(query_coefficients, coefficients, pairs)
        ok = 1.0 - corr <= settings.max_distance
        found.append(
            pd.DataFrame(
                {
                    "i": pairs[ok, 0],
                    "j": pairs[ok, 1],
                    "distance": np.maximum(1.0 - corr[ok], 0.0),
                    "shift_y": dy[ok],
                    "shift_x": dx[ok],
                    "mirrored": mirrored,
                }
            ).astype(columns)
        )
    # a pair found both ways (a symmetric image): keep the closer match
    pairs = pd.concat(found, ignore_index=True).sort_values(["i", "j", "distance"], kind="stable")
    return pairs.drop_duplicates(["i", "j"]).reset_index(drop=True)


def find_duplicates(
    splits: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray] | None = None,
    settings: AuditSettings | None = None,
) -> pd.DataFrame:
    """Every exact and near-duplicate pair, within and across splits: one row a pair (PAIR_COLUMNS).

    `splits` maps a split name to its images; its order orders each pair: split_a comes first in
    it (pass test, val, train to get test-vs-train rows with the test image as a), and within a
    split index_a < index_b. kind: exact (identical pixels), near, or mirrored (a near-duplicate
    of the mirror image). distance: 0 for exact, else 1 - the best normalised correlation.
    shift_y/x: how far b is moved against a at the best alignment (for mirrored: against a's mirror).
    """
    settings = settings or AuditSettings()
    pool = _pool(splits, labels)
    n = len(pool.images)
    representative, group = exact_groups(content_hashes(pool.images))
    reps = np.flatnonzero(representative == np.arange(n))
    members = _members(group, n)

    rows: list[tuple[np.ndarray, np.ndarray, str, np.ndarray, np.ndarray, np.ndarray]] = []
    # exact: every pair inside each group of identical images
    for g in members:
        if len(g) > 1:
            a, b = np.triu_indices(len(g), k=1)
            zeros = np.zeros(len(a))
            rows.append((g[a], g[b], "exact", zeros, zeros, zeros))
    # near: among representatives with structure, expanded to every member of both groups
    structured = reps[pixel_std(pool.images[reps]).max(axis=1) >= settings.flat_std]
    near = near_pairs(pool.images[structured], settings)
    for pair in near.itertuples(index=False):
        a_members, b_members = members[group[structured[pair.i]]], members[group[structured[pair.j]]]
        a = np.repeat(a_members, len(b_members))
        b = np.tile(b_members, len(a_members))
        kind = "mirrored" if pair.mirrored else "near"
        full = np.full(len(a), 1.0)
        rows.append((a, b, kind, full * pair.distance, full * pair.shift_y, full * pair.shift_x))
    return _pair_frame(pool, rows)


def _members(group: np.ndarray, n: int) -> list[np.ndarray]:
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    return np.split(order, bounds) if n else []


def _pair_frame(pool: _Pool, rows: list) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({column: pd.Series(dtype=_DTYPES[column]) for column in PAIR_COLUMNS})
    a = np.concatenate([r[0] for r in rows])
    b = np.concatenate([r[1] for r in rows])
    kind = np.concatenate([np.full(len(r[0]), r[2]) for r in rows])
    distance, dy, dx = (np.concatenate([r[k] for r in rows]) for k in (3, 4, 5))
    # order each pair: earlier split first, then lower index (the pool is in that order already)
    swap = a > b
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    dy, dx = np.where(swap, -dy, dy), np.where(swap, -dx, dx)
    frame = pd.DataFrame(
        {
            "split_a": pd.Categorical.from_codes(pool.split[a], pool.names),
            "index_a": pool.index[a],
            "split_b": pd.Categorical.from_codes(pool.split[b], pool.names),
            "index_b": pool.index[b],
            "kind": pd.Categorical(kind, categories=KINDS),
            "distance": distance.astype(np.float64),
            "shift_y": dy.astype(np.float64),
            "shift_x": dx.astype(np.float64),
            "label_a": pool.labels[a],
            "label_b": pool.labels[b],
        }
    )
    frame = frame.sort_values(["distance", "split_a", "index_a", "split_b", "index_b"], kind="stable")
    return frame.reset_index(drop=True)


_DTYPES = {
    "split_a": "category",
    "index_a": "int64",
    "split_b": "category",
    "index_b": "int64",
    "kind": "category",
    "distance": "float64",
    "shift_y": "float64",
    "shift_x": "float64",
    "label_a": "int64",
    "label_b": "int64",
}


# ---------------------------------------------------------------------------------------------
# Leakage, anomalies, class balance, the figures


def with_duplicate_in(pairs: pd.DataFrame, split: str, others: tuple[str, ...]) -> np.ndarray:
    """Sorted indices of the images of `split` that have a duplicate (any kind) in one of `others`."""
    a = pairs[(pairs["split_a"] == split) & pairs["split_b"].isin(others)]["index_a"]
    b = pairs[(pairs["split_b"] == split) & pairs["split_a"].isin(others)]["index_b"]
    return np.unique(np.concatenate([a.to_numpy(np.int64), b.to_numpy(np.int64)]))


def clean_mask(
    pairs: pd.DataFrame, size: int, split: str = "test", others: tuple[str, ...] = ("train", "val")
) -> np.ndarray:
    """Boolean [size]: True for the images of `split` without a duplicate in `others` (the clean set)."""
    mask = np.ones(size, dtype=bool)
    leaked = with_duplicate_in(pairs, split, others)
    if len(leaked) and leaked.max() >= size:
        raise ValueError(f"the duplicate pairs name {split} image {leaked.max()}, but the split has {size}")
    mask[leaked] = False
    return mask


def anomalies(
    splits: Mapping[str, np.ndarray], settings: AuditSettings | None = None, chunk: int = 8192
) -> pd.DataFrame:
    """Images that are probably broken, one row an image and check (split, index, check, value):

    near_constant   largest per-channel standard deviation below flat_std grey levels (value: it)
    almost_black    95% of the pixels or more darker than 16 in every channel (value: that share)
    almost_white    95% or more brighter than 239 in every channel
    single_channel  two channels empty (at most 8 everywhere) and the third not: a decoding or
                    channel-order fault (value: the channel, 0 = R)
    repeated        repeat_limit or more identical copies across the splits (value: copies)
    """
    settings = settings or AuditSettings()
    rows = []
    for name, images in splits.items():
        for start in range(0, len(images), chunk):
            x = np.asarray(images[start : start + chunk])
            index = np.arange(start, start + len(x))
            std = pixel_std(x).max(axis=1)
            dark = (x.max(axis=-1) < 16).mean(axis=(1, 2))
            light = (x.min(axis=-1) > 239).mean(axis=(1, 2))
            empty = x.max(axis=(1, 2)) <= 8  # [n, 3]
            single = (empty.sum(axis=1) == 2) & (std >= settings.flat_std)
            for check, hit, value in (
                ("near_constant", std < settings.flat_std, std),
                ("almost_black", dark >= 0.95, dark),
                ("almost_white", light >= 0.95, light),
                ("single_channel", single, np.argmin(empty, axis=1).astype(float)),
            ):
                rows += [(name, int(i), check, float(v)) for i, v in zip(index[hit], value[hit], strict=True)]
    pool = _pool(splits, None)
    _, group = exact_groups(content_hashes(pool.images))
    copies = np.bincount(group)[group] if len(group) else np.zeros(0, np.int64)
    for k in np.flatnonzero(copies >= settings.repeat_limit):
        rows.append((pool.names[pool.split[k]], int(pool.index[k]), "repeated", float(copies[k])))
    frame = pd.DataFrame(rows, columns=["split", "index", "check", "value"])
    frame["check"] = pd.Categorical(frame["check"], categories=ANOMALY_CHECKS)
    return frame.sort_values(["split", "index", "check"], kind="stable").reset_index(drop=True)


def class_balance(labels: Mapping[str, np.ndarray], class_names: list[str]) -> pd.DataFrame:
    """Images per class (rows, in class order) and split (columns)."""
    counts = {
        name: np.bincount(np.asarray(values, dtype=np.int64), minlength=len(class_names))[: len(class_names)]
        for name, values in labels.items()
    }
    return pd.DataFrame(counts, index=pd.Index(class_names, name="class"))


def summary(
    pairs: pd.DataFrame,
    found_anomalies: pd.DataFrame,
    balance: pd.DataFrame,
    sizes: Mapping[str, int],
) -> dict[str, float]:
    """The audit's figures (metrics.json): duplicate pair counts, leakage, anomalies, balance."""
    metrics: dict[str, float] = {}
    for kind in KINDS:
        metrics[f"{kind}_duplicate_pairs"] = int((pairs["kind"] == kind).sum())
    metrics["duplicate_pairs"] = len(pairs)
    names = list(sizes)
    for i, a in enumerate(names):
        for b in names[i:]:
            same = ((pairs["split_a"] == a) & (pairs["split_b"] == b)) | (
                (pairs["split_a"] == b) & (pairs["split_b"] == a)
            )
            key = f"{a}_internal_duplicate_pairs" if a == b else f"{a}_{b}_duplicate_pairs"
            metrics[key] = int(same.sum())
    metrics["duplicate_pairs_with_different_labels"] = int((pairs["label_a"] != pairs["label_b"]).sum())
    # leakage: images of an evaluation split with a near-duplicate in a split the model learns from
    for split, others in (("test", ("train", "val")), ("val", ("train",))):
        if split in sizes:
            leaked = len(with_duplicate_in(pairs, split, tuple(o for o in others if o in sizes)))
            metrics[f"{split}_with_train_duplicate_count"] = leaked
            metrics[f"{split}_with_train_duplicate_fraction"] = leaked / sizes[split] if sizes[split] else 0.0
    metrics["anomalies"] = int(found_anomalies[["split", "index"]].drop_duplicates().shape[0])
    for check in ANOMALY_CHECKS:
        metrics[f"anomalies_{check}"] = int((found_anomalies["check"] == check).sum())
    for split in balance.columns:
        counts = balance[split].to_numpy()
        if counts.sum():
            metrics[f"class_imbalance_{split}"] = float(counts.max() / max(counts.min(), 1))
    return metrics


@dataclass
class AuditResult:
    pairs: pd.DataFrame  # PAIR_COLUMNS
    anomalies: pd.DataFrame  # split, index, check, value
    balance: pd.DataFrame  # class x split counts
    metrics: dict[str, float]
    settings: dict


def audit(
    splits: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    class_names: list[str],
    settings: AuditSettings | None = None,
) -> AuditResult:
    """The whole audit of a dataset's splits (pass them in the order test, val, train)."""
    settings = settings or AuditSettings()
    pairs = find_duplicates(splits, labels, settings)
    found = anomalies(splits, settings)
    balance = class_balance(labels, class_names)
    metrics = summary(pairs, found, balance, {name: len(images) for name, images in splits.items()})
    return AuditResult(pairs, found, balance, metrics, asdict(settings))


def leakage_report(metrics: Mapping[str, float], max_test_leakage: float | None) -> tuple[str, bool]:
    """(message, gate failed): the test leakage figures, and whether they exceed the gate."""
    count, fraction = (
        metrics["test_with_train_duplicate_count"],
        metrics["test_with_train_duplicate_fraction"],
    )
    text = (
        f"test leakage: {count:,} test images ({fraction:.2%}) have a near-duplicate or copy in train or val"
        f" (test-train pairs {metrics.get('test_train_duplicate_pairs', 0):,},"
        f" test-val {metrics.get('test_val_duplicate_pairs', 0):,}; within train"
        f" {metrics.get('train_internal_duplicate_pairs', 0):,} pairs)"
    )
    if max_test_leakage is None:
        return text + "; no gate (audit.max_test_leakage: null)", False
    if fraction > max_test_leakage:
        return (
            text + f", above audit.max_test_leakage {max_test_leakage:.2%}: the run stops before training."
            " Remove the duplicates from the test split (duplicates.parquet lists them once the gate"
            " passes), or raise audit.max_test_leakage deliberately",
            True,
        )
    return text + f", within audit.max_test_leakage {max_test_leakage:.2%}", False


def clean_accuracy(labels: np.ndarray, predicted: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """Accuracy on the clean test images (no near-duplicate in train or val) next to the count."""
    labels, predicted, clean = np.asarray(labels), np.asarray(predicted), np.asarray(clean, dtype=bool)
    correct = labels == predicted
    return {
        "clean_accuracy": round(float(correct[clean].mean()), 6) if clean.any() else 0.0,
        "clean_images": int(clean.sum()),
        "leaked_images": int((~clean).sum()),
        "leaked_accuracy": round(float(correct[~clean].mean()), 6) if (~clean).any() else 0.0,
    }
