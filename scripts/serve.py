"""Serve an exported model over the Open Inference Protocol (KServe v2 REST + gRPC), without a container.

    python scripts/serve.py --model results/export/default/model.onnx --port 8080

The serving image runs exactly this (containers/serving/Dockerfile), beside the package it imports,
cifarflow.serving, and nothing else of cifarflow. Stop it with Ctrl-C or SIGTERM.
"""

import argparse
import os
import sys
import warnings
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cifarflow.serving.images import MAX_PIXELS  # noqa: E402  (no KServe)
from cifarflow.serving.logs import setup_logging  # noqa: E402


def main() -> None:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=env("CIFARFLOW_MODEL", ""), help="the exported model.onnx")
    parser.add_argument(
        "--name", default=env("CIFARFLOW_MODEL_NAME", "cifar10"), help="the model's name in the URLs"
    )
    parser.add_argument(
        "--host",
        default=env("CIFARFLOW_HOST", "127.0.0.1"),
        help="the address both protocols listen on (default loopback only; 0.0.0.0 inside a "
        "container's own network namespace, where publishing a port needs it)",
    )
    parser.add_argument("--port", type=int, default=int(env("CIFARFLOW_HTTP_PORT", "8080")), help="HTTP port")
    parser.add_argument(
        "--grpc-port", type=int, default=int(env("CIFARFLOW_GRPC_PORT", "8081")), help="gRPC port"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=int(env("CIFARFLOW_THREADS", "0")),
        help="ONNX Runtime threads per request (0: one per core)",
    )
    parser.add_argument(
        "--max-request-mb",
        type=float,
        default=float(env("CIFARFLOW_MAX_REQUEST_MB", "64")),
        help="larger request bodies get 413 (64 MB is a batch of about 20,000 images in binary)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=int(env("CIFARFLOW_MAX_IMAGE_PIXELS", str(MAX_PIXELS))),
        help="images posted to /classify with more pixels (width x height, read from the header) get "
        f"413 before they are decoded (default {MAX_PIXELS}: 4096x4096)",
    )
    parser.add_argument(
        "--model-repository",
        choices=("off", "on"),
        default=env("CIFARFLOW_MODEL_REPOSITORY", "off"),
        help="KServe's model-repository extension over REST, POST /v2/repository/models/<name>/"
        "load|unload: no authentication, so anyone who reaches the port can take the model down; off "
        "by default (never served over gRPC)",
    )
    args = parser.parse_args()
    if not 1 <= args.max_image_pixels <= Image.MAX_IMAGE_PIXELS:
        parser.error(
            f"--max-image-pixels {args.max_image_pixels} must lie in 1..{Image.MAX_IMAGE_PIXELS} "
            "(Pillow's own decompression-bomb threshold)"
        )
    if not args.model or not Path(args.model).is_file():
        parser.error(f"--model {args.model!r} is not a file: pass the exported model.onnx")
    # KServe 0.21 answers with FastAPI's ORJSONResponse, which FastAPI now calls deprecated on every request.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    setup_logging()
    sys.argv = sys.argv[:1]  # KServe parses sys.argv when imported; our flags are not its flags
    from cifarflow.serving.server import UntestedKServe, serve  # imports KServe: only now

    try:
        serve(
            Path(args.model),
            args.name,
            http_port=args.port,
            grpc_port=args.grpc_port,
            threads=args.threads,
            max_body_bytes=int(args.max_request_mb * 2**20),
            host=args.host,
            max_image_pixels=args.max_image_pixels,
            model_repository=args.model_repository == "on",
        )
    except UntestedKServe as err:
        sys.exit(f"serve.py: {err}")


if __name__ == "__main__":
    main()
