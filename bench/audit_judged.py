"""Benchmark: the audit's near-duplicate distance against pairs of real CIFAR-10 images judged by eye.

    python bench/audit_judged.py --archive cifar10-train-jpeg.tar.gz        # or $CIFARFLOW_JPEG_ARCHIVE
    python bench/audit_judged.py --archive ... --propose OUT.csv --sheets DIR   # how the set was drawn

bench/data/judged_pairs.csv names pairs of the real CIFAR-10 training JPEGs (paths inside the
archive; the images are not in the repository) with a verdict given by eye: 1 = the same picture
(possibly cropped, mirrored, recoloured, re-encoded), 0 = another photograph. The file's header
says how it was drawn and judged.

Default: every pair's distance is recomputed with the current detector (the verification stage:
1 - the best gradient correlation over shifts of up to max_shift pixels, and over the mirror
image), then per distance band it prints the pairs, how many were judged the same, and precision
and recall at the default `max_distance` and at a ladder of thresholds. Recall is within the set:
the judged-same pairs at or below a threshold over all judged-same pairs of the set (the set is a
sample of the candidates, stratified by band, so neither figure is the whole dataset's). The
candidate search (faiss) is not part of this measurement: it is measured on planted pairs
(tests/test_audit.py).

--propose: run the whole pair search on the 50,000 images with a generous max_distance, draw
--per-band pairs of each band with --seed, write them (without verdicts) and contact sheets: each
pair numbered, shuffled across bands, 4x nearest-neighbour, distances not shown, the second image
mirrored where its mirror image matched.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "bench")]

from cifarflow.audit import AuditSettings, Verifier, find_duplicates, mirror_coefficients  # noqa: E402
from prepare_speed import ARCHIVE_ENV, jpeg_archive  # noqa: E402

JUDGED = ROOT / "bench" / "data" / "judged_pairs.csv"
BANDS = (0.0, 0.05, 0.10, 0.15, 0.22, 0.30, 0.45)
OLD_DEFAULT = 0.22  # max_distance before this set was judged
THRESHOLDS = (0.05, 0.08, 0.10, 0.12, 0.14, 0.15, 0.16, 0.18, 0.20, 0.22, 0.25, 0.30)


def load_jpegs(archive: Path, names: set[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(names, images [N, 32, 32, 3] uint8) of the archive's .jpg files (or only `names`), sorted."""
    found: dict[str, np.ndarray] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg") and (names is None or member.name in names):
                data = tar.extractfile(member).read()
                found[member.name] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    if names is not None and set(found) != names:
        sys.exit(
            f"{archive}: {len(names - set(found))} judged images are missing,"
            f" e.g. {sorted(names - set(found))[:3]}"
        )
    ordered = sorted(found)
    return ordered, np.stack([found[n] for n in ordered])


def pair_distances(
    images_a: np.ndarray, images_b: np.ndarray, settings: AuditSettings
) -> tuple[np.ndarray, np.ndarray]:
    """(distance, mirrored) of each (a, b): the verification stage of the audit, mirrors included,
    refined sub-pixel for every pair (max_distance does not limit what is measured)."""
    verifier = Verifier(replace(settings, max_distance=1.0), images_a.shape[1])
    a, b = verifier.coefficients(images_a), verifier.coefficients(images_b)
    index = np.repeat(np.arange(len(a))[:, None], 2, axis=1)
    corr, _, _ = verifier.verify(a, b, index)
    flipped, _, _ = verifier.verify(mirror_coefficients(a, images_a.shape[1]), b, index)
    identical = (images_a == images_b).all(axis=(1, 2, 3))
    distance = np.where(identical, 0.0, np.maximum(1.0 - np.maximum(corr, flipped), 0.0))
    return distance, (flipped > corr) & ~identical


def band_of(distance: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(BANDS, distance, side="right") - 1, 0, len(BANDS) - 2)


def band_name(k: int) -> str:
    return f"{BANDS[k]:.2f}-{BANDS[k + 1]:.2f}" if k < len(BANDS) - 2 else f"{BANDS[k]:.2f}+"


def read_judged(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#")


def _ratio(num: float, den: float) -> str:
    return f"{num / den:.3f}" if den else "-"


def evaluate(judged: pd.DataFrame, distance: np.ndarray, default: float, before: float = OLD_DEFAULT) -> str:
    """The tables: per band (of the distance now), then precision and recall per threshold."""
    same = judged["same"].to_numpy() == 1
    weight = judged["weight"].to_numpy(float)
    lines = [f"{len(judged)} judged pairs: {same.sum()} the same picture, {(~same).sum()} not", ""]
    lines.append(
        f"| band (distance now) | pairs | judged same | flagged at {before:.2f} (precision, recall)"
        f" | flagged at {default:.2f} (precision, recall) |"
    )
    lines.append("|---|---|---|---|---|")
    bands = band_of(distance)
    for k in range(len(BANDS) - 1):
        sel = bands == k
        if not sel.any():
            continue
        cells = []
        for t in (before, default):
            flagged = sel & (distance <= t)
            hits = (flagged & same).sum()
            cells.append(
                f"{flagged.sum()} ({_ratio(hits, flagged.sum())}, {_ratio(hits, (sel & same).sum())})"
            )
        lines.append(f"| {band_name(k)} | {sel.sum()} | {(sel & same).sum()} | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        "| max_distance | flagged | judged same | precision | recall within the set"
        " | weighted precision | weighted recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in sorted(set(THRESHOLDS) | {default, before}):
        flagged = distance <= t
        hits = (flagged & same).sum()
        mark = " (default)" if t == default else " (before)" if t == before else ""
        lines.append(
            f"| {t:.3f}{mark} | {flagged.sum()} | {hits} | {_ratio(hits, flagged.sum())}"
            f" | {_ratio(hits, same.sum())} | {_ratio(weight[flagged & same].sum(), weight[flagged].sum())}"
            f" | {_ratio(weight[flagged & same].sum(), weight[same].sum())} |"
        )
    grid = np.round(np.arange(0.005, 0.4001, 0.005), 3)
    ok = [t for t in grid if (distance <= t).any() and same[distance <= t].mean() >= 0.95]
    lines.append("")
    if ok:
        t = max(ok)
        flagged = distance <= t
        lines.append(
            f"largest max_distance (0.005 steps) with precision >= 0.95 on this set: {t:.3f}"
            f" (precision {same[flagged].mean():.3f},"
            f" recall within the set {_ratio((flagged & same).sum(), same.sum())})"
        )
    lines.append(
        "weighted: each pair counts for the pairs found in its band when drawn (an estimate over all"
        f" {weight.sum():,.0f} pairs the search found up to {BANDS[-1]})"
    )
    return "\n".join(lines)


def propose(archive: Path, out: Path, sheets: Path, per_band: int, seed: int, threads: int) -> None:
    names, images = load_jpegs(archive)
    print(f"{len(names)} images; searching pairs up to {BANDS[-1]}", flush=True)
    settings = AuditSettings(max_distance=BANDS[-1], threads=threads)
    pairs = find_duplicates({"train": images}, None, settings)
    pairs = pairs[pairs["distance"] <= BANDS[-1]]
    print(f"{len(pairs)} candidate pairs", flush=True)
    rng = np.random.default_rng(seed)
    bands = band_of(pairs["distance"].to_numpy())
    chosen = []
    for k in range(len(BANDS) - 1):
        rows = np.flatnonzero(bands == k)
        print(f"band {band_name(k)}: {len(rows)} pairs", flush=True)
        chosen.extend(rng.choice(rows, size=min(per_band, len(rows)), replace=False))
    sample = pairs.iloc[rng.permutation(chosen)].reset_index(drop=True)
    frame = pd.DataFrame(
        {
            "pair": np.arange(len(sample)),
            "file_a": [names[i] for i in sample["index_a"]],
            "file_b": [names[i] for i in sample["index_b"]],
            "distance": sample["distance"].round(4),
            "mirrored": (sample["kind"] == "mirrored").astype(int),
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    contact_sheets(frame, images[sample["index_a"]], images[sample["index_b"]], sheets)


def contact_sheets(
    frame: pd.DataFrame, a: np.ndarray, b: np.ndarray, folder: Path, per_sheet: int = 30
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    scale, cols = 4, 5
    cell_w, cell_h = 2 * 32 * scale + 8 + 16, 32 * scale + 20
    for start in range(0, len(frame), per_sheet):
        rows = range(start, min(start + per_sheet, len(frame)))
        sheet = Image.new("RGB", (cols * cell_w, -(-len(rows) // cols) * cell_h), "white")
        draw = ImageDraw.Draw(sheet)
        for slot, r in enumerate(rows):
            x, y = (slot % cols) * cell_w, (slot // cols) * cell_h
            second = b[r][:, ::-1] if frame["mirrored"][r] else b[r]
            for k, img in enumerate((a[r], second)):
                big = Image.fromarray(img).resize((32 * scale, 32 * scale), Image.NEAREST)
                sheet.paste(big, (x + k * (32 * scale + 8), y + 16))
            draw.text(
                (x + 2, y + 2), f"#{frame['pair'][r]}" + (" m" if frame["mirrored"][r] else ""), fill="black"
            )
        sheet.save(folder / f"sheet_{start // per_sheet:02d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--archive",
        type=Path,
        default=os.environ.get(ARCHIVE_ENV) or None,
        help=f"the CIFAR-10 training JPEGs, train/<class>/<nnnn>.jpg (default: ${ARCHIVE_ENV})",
    )
    parser.add_argument("--judged", type=Path, default=JUDGED)
    parser.add_argument("--max-distance", type=float, default=AuditSettings().max_distance)
    parser.add_argument("--propose", type=Path, help="draw a new set of pairs to judge into this CSV")
    parser.add_argument("--sheets", type=Path, help="with --propose: where the contact sheets go")
    parser.add_argument("--per-band", type=int, default=70)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    archive = jpeg_archive(args.archive, "--archive")
    if args.propose:
        propose(
            archive,
            args.propose,
            args.sheets or args.propose.with_suffix(""),
            args.per_band,
            args.seed,
            args.threads,
        )
        return
    judged = read_judged(args.judged)
    names, images = load_jpegs(archive, set(judged["file_a"]) | set(judged["file_b"]))
    where = {n: i for i, n in enumerate(names)}
    a = images[[where[n] for n in judged["file_a"]]]
    b = images[[where[n] for n in judged["file_b"]]]
    distance, _ = pair_distances(a, b, AuditSettings())
    print(evaluate(judged, distance, args.max_distance))


if __name__ == "__main__":
    main()
