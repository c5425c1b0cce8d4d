"""Where a batch-1 request's time goes: the model, its TTA views, ONNX Runtime's threads, the server
(KServe, gRPC, Python), and the container around it.

    python bench/serve_breakdown.py [--model model.onnx] [--engines process podman podman-host]
        [--requests 2000]
        [--base-image localhost/cifarflow-base:bookworm
         --build-option=-v --build-option=/etc/ssl/certs:/etc/ssl/certs:ro]

Without --model it exports the default recipe's network after one epoch on synthetic data (speed
does not depend on the weights). Printed, one JSON object:

- model: ONNX Runtime in this process at batch 1, p50 and p10 ms, for 1 and 2 intra-op threads,
  and with the TTA views in the graph vs one view (the same weights exported without TTA);
- per engine: the served batch-1 latency over v2 gRPC (p10, p50, p90 of --requests sequential
  requests from one client), and the CPU milliseconds per request that each process spent: the
  server, and for a container the processes around it (conmon, the `podman run` client), read from
  /proc before and after. CPU time is robust to other load on the machine; latency is not.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "bench")]

from cifarflow.engines import ServerSpec, build, container_name, running  # noqa: E402
from cifarflow.evaluation import Client  # noqa: E402
from cifarflow.serving.inference import INPUT, load_session  # noqa: E402
from serve_speed import default_model  # noqa: E402


def _ms(samples: list[float]) -> dict[str, float]:
    return {f"p{q}": round(float(np.percentile(samples, q)) * 1e3, 3) for q in (10, 50, 90)}


def model_alone(path: Path, image: np.ndarray, calls: int = 1000) -> dict:
    out = {}
    for threads in (1, 2):
        session = load_session(path, threads)
        for _ in range(50):
            session.run(None, {INPUT: image})
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            session.run(None, {INPUT: image})
            samples.append(time.perf_counter() - start)
        out[f"threads_{threads}"] = _ms(samples)
    return out


def without_tta(path: Path, out: Path) -> Path | None:
    """The same weights with one view: re-exported from the checkpoint beside `path` when there is one."""
    checkpoint = path.with_name("model.pt")
    if not checkpoint.exists():
        return None
    from cifarflow.checkpoint import load_checkpoint
    from cifarflow.export import to_onnx

    model, saved = load_checkpoint(checkpoint)
    model.tta = model.tta_translate = False
    to_onnx(model, saved, out, onnx.load(str(path)).opset_import[0].version)
    return out


def _cpu(processes: list[psutil.Process]) -> list[float]:
    return [sum(p.cpu_times()[:2]) for p in processes]


def served(engine: str, image_ref: str, image: np.ndarray, requests: int, threads: int, tmp: Path) -> dict:
    """Latency and CPU per request. `engine` ENGINE-host: that engine's image in the host's network
    namespace (serving.network: host); plain ENGINE: in its own namespace, ports published on
    loopback (serving.network: private, the default)."""
    base, _, mode = engine.partition("-")
    spec = ServerSpec(
        engine=base,
        image=image_ref,
        name=container_name(f"breakdown-{engine}", tmp),
        model_name="cifar10",
        threads=threads,
        max_request_mb=64,
        network=mode or "private",
    )
    with running(spec, log_file=tmp / f"{engine}.log", ready_timeout_s=300) as server:
        main = psutil.Process(server.pid)
        watched = {"server": [main, *main.children(recursive=True)]}
        if engine != "process":
            watched["conmon"] = [main.parent()]
            watched[f"{base} run"] = [
                p for p in psutil.Process().children(recursive=True) if p.name() == base
            ]
        client = Client(server.grpc_url, "cifar10", 64 << 20)
        for _ in range(100):
            client.infer(image)
        before = {k: _cpu(v) for k, v in watched.items()}
        samples = []
        for _ in range(requests):
            start = time.perf_counter()
            client.infer(image)
            samples.append(time.perf_counter() - start)
        after = {k: _cpu(v) for k, v in watched.items()}
        client.close()
    cpu = {
        k: round(sum(a - b for a, b in zip(after[k], before[k], strict=True)) / requests * 1e3, 3)
        for k in watched
    }
    return {"latency_ms": _ms(samples), "cpu_ms_per_request": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path)
    parser.add_argument(
        "--engines",
        nargs="+",
        default=["process", "podman", "podman-host"],
        choices=["process", "podman", "docker", "podman-host", "docker-host"],
        help="ENGINE: the image in its own network namespace (ports published on loopback, the "
        "default serving.network); ENGINE-host: in the host's",
    )
    parser.add_argument("--base-image", default="docker.io/library/python:3.11-slim-bookworm")
    parser.add_argument("--build-option", action="append", default=[])
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads of the server")
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or default_model(tmp)
        image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
        figures = {
            "load_average": [round(x, 1) for x in psutil.getloadavg()],
            "model": model_alone(model, image),
        }
        one_view = without_tta(model, tmp / "one_view.onnx")
        if one_view is not None:
            figures["model_one_view"] = model_alone(one_view, image)
        refs = {"process": str(model)}
        for engine in args.engines:
            base = engine.split("-")[0]
            if base not in refs:
                refs[base] = build(
                    engine=base,
                    model=model,
                    reference="cifarflow-serving:breakdown",
                    build_args={"BASE_IMAGE": args.base_image},
                    labels={},
                    extra=args.build_option,
                    sif=tmp / "serving.sif",
                ).image
            figures[engine] = served(engine, refs[base], image, args.requests, args.threads, tmp)
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
