"""Benchmark: the dataset audit (cifarflow.audit.audit) on 15,000, 30,000 and 60,000 CIFAR-sized images.

    python bench/audit_speed.py [--sizes 15000 30000 60000] [--threads 2] [--images X.npy]

Images: generated natural-ish scenes (tests/planted_pairs.py), exactly N of them, with N / 600
planted duplicate pairs of each of the six kinds and as many look-alike pairs (recall and precision
are reported against the planted duplicate pairs), or the first N of an [N, 32, 32, 3] uint8
array (--images; e.g. real CIFAR-10, tiled with mirrored copies when it holds fewer). For each size
it times the whole audit in this process (hashes, anomalies, descriptors, candidate search,
verification, figures excluded) and, to show how the candidate search grows, faiss's HNSW graph
against an exact brute-force search of the same vectors. The load average is printed before and
after: on a shared machine the timings are only as good as its quietness (recall and precision do
not depend on it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "scripts")]

from cifarflow.audit import (  # noqa: E402
    AuditSettings,
    NeighbourIndex,
    audit,
    descriptors,
    low_frequencies,
)
from planted_pairs import KINDS, Planted, planted_dataset  # noqa: E402


def generated(size: int, seed: int = 0) -> tuple[dict, dict, Planted]:
    """test/val/train splits of `size` images in all (the test split about 1/6, val about 1/12, the
    rest train), with size // 600 planted duplicate pairs of each of the six kinds (1% as many
    pairs as images) and as many look-alike pairs, which are not duplicates."""
    pairs = max(1, size // 600)
    test, val = size // 6, size // 12
    # each pair's two images land in splits at random (PLACEMENTS): the background makes up the rest
    planted_images = 2 * pairs * (len(KINDS) + 1)
    background = (test - pairs, val - pairs, size - test - val - planted_images + 2 * pairs)
    planted = planted_dataset(pairs_per_kind=pairs, lookalike_pairs=pairs, background=background, seed=seed)
    return planted.images, planted.labels, planted


def planted_scores(planted: Planted, pairs) -> str:
    """Recall and precision of the reported pairs against the planted duplicate pairs: a reported
    pair is a true positive when it is a planted one (either order); look-alikes and chance pairs
    count against precision."""
    kinds = {((r.split_a, r.index_a), (r.split_b, r.index_b)): r.kind for r in pairs.itertuples()}
    found = set(kinds)
    truth = set().union(*planted.pairs.values())
    hits = {pair for pair in found if pair in truth or pair[::-1] in truth}
    lookalikes = sum(planted.truth(pair) == "lookalike" for pair in found)
    unplanted = Counter(kinds[pair] for pair in found - hits)
    members = {image for pair in truth | planted.lookalikes for image in pair}
    touching = sum(a in members or b in members for a, b in found - hits)
    missed = {
        kind: sum(p not in found and p[::-1] not in found for p in kind_pairs)
        for kind, kind_pairs in planted.pairs.items()
    }
    missed_text = ", ".join(f"{kind} {n}" for kind, n in missed.items() if n) or "none"
    return (
        f"planted pairs {len(truth):,}, reported {len(found):,}: recall {len(hits) / len(truth):.4f}"
        f" ({len(hits):,} found; missed: {missed_text}), precision {len(hits) / max(len(found), 1):.4f}"
        f" ({len(found) - len(hits):,} not planted: {dict(unplanted)}; {lookalikes:,} of them look-alikes,"
        f" {touching:,} with an image of a planted pair)"
    )


def from_array(path: Path, size: int) -> tuple[dict, dict]:
    images = np.load(path, mmap_mode="r")
    reps = -(-size // len(images))
    tiled = np.concatenate([images if k % 2 == 0 else images[:, :, ::-1] for k in range(reps)])[:size]
    test = size // 6
    labels = np.zeros(size, np.int64)
    return {"test": tiled[:test], "train": tiled[test:]}, {"test": labels[:test], "train": labels[test:]}


def search_scaling(images: dict, threads: int) -> tuple[float, float]:
    """(HNSW build + both queries, brute force) seconds for this set's candidate search."""
    import faiss

    pool = np.concatenate(list(images.values()))
    described = descriptors(low_frequencies(pool, 6, 16))
    start = time.perf_counter()
    index = NeighbourIndex(described, 64, threads)
    index.search(described, 6)
    index.search(described, 6)
    hnsw = time.perf_counter() - start
    vectors = index._project(described)
    faiss.omp_set_num_threads(threads)
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    flat.search(vectors, 6)
    flat.search(vectors, 6)
    return hnsw, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[15000, 30000, 60000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--images", type=Path, help="an [N, 32, 32, 3] uint8 .npy instead of generated scenes"
    )
    parser.add_argument("--no-brute-force", action="store_true", help="skip the brute-force comparison")
    args = parser.parse_args()
    print(f"cores {os.cpu_count()}, load average before {os.getloadavg()}", flush=True)
    settings = AuditSettings(threads=args.threads)
    for size in args.sizes:
        start = time.perf_counter()
        planted = None
        if args.images:
            images, labels = from_array(args.images, size)
        else:
            images, labels, planted = generated(size)
        made = time.perf_counter() - start
        count = sum(len(split) for split in images.values())
        start = time.perf_counter()
        result = audit(images, labels, [str(c) for c in range(10)], settings)
        seconds = time.perf_counter() - start
        m = result.metrics
        line = (
            f"{count:>6,} images: audit {seconds:6.1f} s ({count / seconds:,.0f} images/s); "
            f"pairs reported {m['duplicate_pairs']:,} (exact {m['exact_duplicate_pairs']:,},"
            f" near {m['near_duplicate_pairs']:,}, mirrored {m['mirrored_duplicate_pairs']:,});"
            f" data made in {made:.0f} s"
        )
        if planted is not None:
            line += f"; {planted_scores(planted, result.pairs)}"
        if not args.no_brute_force:
            hnsw, brute = search_scaling(images, args.threads)
            line += f"; candidate search: HNSW {hnsw:.1f} s, brute force {brute:.1f} s"
        print(line, flush=True)
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
