"""Serving benchmark: the model as served vs in-process ONNX Runtime, batch-1 latency, and load.

    python bench/serve_speed.py [--model model.onnx] [--engine process|podman|docker [--base-image ...]
                                [--network private|host]]

Without --model it exports the default recipe's network (fast, widths 32/96/192) after one epoch on
small synthetic data: speed does not depend on the weights. Targets (docs/benchmarks.md): served
throughput at batch 256 over v2 gRPC >= 90% of in-process ONNX Runtime; batch-1 p50 <= 3 ms on
loopback; 32 concurrent clients for 20 s with zero errors and bounded server memory.
"""

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from cifarflow.engines import ServerSpec, build, container_name, running  # noqa: E402
from cifarflow.evaluation import Client, latencies_ms  # noqa: E402
from cifarflow.serving.inference import INPUT, OUTPUTS, load_session  # noqa: E402
from cifarflow.serving.logs import setup_logging  # noqa: E402


def default_model(out: Path) -> Path:
    from cifarflow import synthetic
    from cifarflow.config import Recipe, validate_config
    from cifarflow.dataset import write_dataset
    from cifarflow.export import export
    from cifarflow.training import train

    config = validate_config({}, ROOT / "config" / "schema.yaml")
    write_dataset(
        synthetic.generate(100, 20),
        out / "data",
        dataset_id="synthetic-bench",
        settings={"source": "synthetic", "val_fraction": 0.1, "seed": 0},
    )
    recipe = Recipe.from_config({**config["train"], "epochs": 1, "device": "cpu"})
    train(out / "data", recipe, out, threads=2)
    export(out / "model.pt", out / "data", out / "model.onnx", config["export"], threads=2)
    return out / "model.onnx"


def per_batch_ms(run, batch: np.ndarray, seconds: float = 5.0) -> float:
    run(batch)
    start, calls = time.perf_counter(), 0
    while calls < 5 or time.perf_counter() - start < seconds:
        run(batch)
        calls += 1
    return (time.perf_counter() - start) / calls * 1e3


def concurrent_ms(client: Client, batch: np.ndarray, concurrency: int, seconds: float = 5.0) -> float:
    """Wall ms per batch with `concurrency` requests in flight."""
    client.infer(batch)
    stop, counts = time.perf_counter() + seconds, []

    def loop():
        n = 0
        while time.perf_counter() < stop:
            client.infer(batch)
            n += 1
        counts.append(n)

    start = time.perf_counter()
    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.perf_counter() - start) / sum(counts) * 1e3


def rest_ms(url: str, name: str, batch: np.ndarray, binary: bool) -> float:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, network_timeout=120)
    tensor = httpclient.InferInput(INPUT, list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput(OUTPUTS[1], binary_data=binary)]
    return per_batch_ms(lambda _: client.infer(name, [tensor], outputs=wanted), batch, seconds=3)


def load(client_url: str, name: str, images: np.ndarray, clients: int, seconds: float, pids) -> dict:
    """`clients` threads, each with its own channel, single-image requests for `seconds`; RSS sampled."""
    stop = time.perf_counter() + seconds
    rss = []

    def sample():
        while time.perf_counter() < stop:
            rss.append(sum(psutil.Process(p).memory_info().rss for p in pids()))
            time.sleep(0.5)

    def loop(seed: int) -> tuple[int, int]:
        client = Client(client_url, name, 64 << 20)
        done = errors = 0
        while time.perf_counter() < stop:
            try:
                client.infer(images[(seed + done) % len(images)][None])
                done += 1
            except Exception:  # noqa: BLE001 - counted, reported
                errors += 1
        client.close()
        return done, errors

    sampler = threading.Thread(target=sample)
    sampler.start()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(loop, range(clients)))
    sampler.join()
    done, errors = sum(r[0] for r in results), sum(r[1] for r in results)
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": done,
        "errors": errors,
        "requests_per_second": round(done / seconds, 1),
        "rss_mib_first": round(rss[0] / 2**20, 1),
        "rss_mib_max": round(max(rss) / 2**20, 1),
        "rss_mib_last": round(rss[-1] / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path)
    parser.add_argument("--engine", default="process", choices=["process", "podman", "docker"])
    parser.add_argument(
        "--base-image",
        default="docker.io/library/python:3.11-slim-bookworm",
        help="BASE_IMAGE for the serving image built around the model (podman/docker)",
    )
    parser.add_argument(
        "--build-option",
        action="append",
        default=[],
        help="an extra build argument (repeatable), e.g. the CA bundle: -v /etc/ssl/certs:/etc/ssl/certs:ro",
    )
    parser.add_argument(
        "--network",
        default="private",
        choices=["private", "host"],
        help="podman/docker: the container's own network namespace (ports published) or the host's",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--load-seconds", type=float, default=20)
    args = parser.parse_args()
    setup_logging()  # training, export and the image build report progress on stderr; figures: stdout

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or default_model(Path(tmp))
        images = np.random.default_rng(0).integers(0, 256, (1024, 32, 32, 3), dtype=np.uint8)
        batch = np.ascontiguousarray(images[: args.batch])
        session = load_session(model, args.threads)

        def inprocess(x):
            return session.run([OUTPUTS[1]], {INPUT: x})

        inproc = per_batch_ms(inprocess, batch)
        inproc_1 = np.percentile([per_batch_ms(inprocess, images[:1], 0.01) for _ in range(200)], 50)
        image = str(model)
        if args.engine != "process":  # the same model, in the serving image
            image = build(
                engine=args.engine,
                model=model,
                reference="cifarflow-serving:bench",
                build_args={"BASE_IMAGE": args.base_image},
                labels={},
                extra=args.build_option,
                sif=Path(tmp) / "serving.sif",
            ).image
        figures = {
            "engine": args.engine,
            "batch": args.batch,
            "threads": args.threads,
            "inprocess_ms_per_batch": round(inproc, 2),
            "inprocess_ms_batch1_p50": round(inproc_1, 3),
        }
        log = Path(tmp) / "server.log"
        spec = ServerSpec(
            engine=args.engine,
            image=image,
            name=container_name("bench", Path(tmp)),
            model_name="cifar10",
            threads=args.threads,
            max_request_mb=64,
            network=args.network,
        )
        with running(spec, log_file=log, ready_timeout_s=120) as server:
            server_process = psutil.Process(server.pid)

            def server_pids():
                return [server_process.pid, *(c.pid for c in server_process.children(recursive=True))]

            client = Client(server.grpc_url, "cifar10", 64 << 20)
            for concurrency in (1, 2):
                ms = concurrent_ms(client, batch, concurrency)
                figures[f"grpc_ms_per_batch_c{concurrency}"] = round(ms, 2)
                figures[f"grpc_throughput_ratio_c{concurrency}"] = round(inproc / ms, 3)
            lat = latencies_ms(client, images, 1000)
            figures |= {f"grpc_batch1_ms_p{q}": round(float(np.percentile(lat, q)), 3) for q in (50, 95, 99)}
            client.close()
            for binary in (True, False):
                ms = rest_ms(server.url, "cifar10", batch, binary)
                figures[f"rest_{'binary' if binary else 'json'}_ms_per_batch"] = round(ms, 1)
                figures[f"rest_{'binary' if binary else 'json'}_throughput_ratio"] = round(inproc / ms, 3)
            figures["load"] = load(
                server.grpc_url, "cifar10", images, args.clients, args.load_seconds, server_pids
            )
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
