"""Is the int8 graph (export.quantize: int8) faster than fp32 on this CPU? Batch 1 and 256.

    python bench/int8_speed.py [--model results/export/default/model.onnx --data results/data/<id>]

Without --model it exports the default recipe's network after one epoch on synthetic data (speed
does not depend on the weights) and quantises it the way the quantize_onnx rule does
(cifarflow.export.quantize: QDQ, per-channel int8 weights, uint8 activations, calibrated on
training images). Printed per graph, thread count and batch: milliseconds per batch (p10 and p50
of wall time) and CPU milliseconds per batch (robust to other load on the machine).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "bench")]

from cifarflow.export import quantize  # noqa: E402
from cifarflow.serving.inference import INPUT, load_session  # noqa: E402
from serve_speed import default_model  # noqa: E402


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timing(path: Path, batch: np.ndarray, threads: int, calls: int) -> dict:
    session = load_session(path, threads)
    for _ in range(5):
        session.run(None, {INPUT: batch})
    walls, cpu = [], _cpu()
    for _ in range(calls):
        start = time.perf_counter()
        session.run(None, {INPUT: batch})
        walls.append(time.perf_counter() - start)
    return {
        "ms_p10": round(float(np.percentile(walls, 10)) * 1e3, 3),
        "ms_p50": round(float(np.percentile(walls, 50)) * 1e3, 3),
        "cpu_ms": round((_cpu() - cpu) / calls * 1e3, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="an exported fp32 model.onnx")
    parser.add_argument("--data", type=Path, help="its prepared dataset (calibration images)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, data = (args.model, args.data) if args.model else (default_model(tmp), tmp / "data")
        int8 = tmp / "model.int8.onnx"
        report = quantize(model, data, int8, 1024, threads=2)
        images = np.random.default_rng(0).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
        figures = {"quantize_report": report}
        for threads in (1, 2):
            for size, calls in ((1, 500), (256, 20)):
                for name, path in (("fp32", model), ("int8", int8)):
                    figures[f"{name}_threads{threads}_batch{size}"] = timing(
                        path, images[:size], threads, calls
                    )
        for key in [k for k in figures if k.startswith("int8_")]:
            fp32 = figures["fp32" + key[4:]]
            figures[key]["cpu_speedup"] = round(fp32["cpu_ms"] / figures[key]["cpu_ms"], 2)
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
