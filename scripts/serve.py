"""Serve an exported model over the Open Inference Protocol (KServe v2 REST + gRPC), without a container.

    python scripts/serve.py --model results/export/default/model.onnx --port 8080

The serving image runs exactly this (containers/serving/Dockerfile). Stop it with Ctrl-C or SIGTERM.
"""

import argparse
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cifarflow.logs import setup_logging  # noqa: E402
from cifarflow.serving import serve  # noqa: E402


def main() -> None:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=env("CIFARFLOW_MODEL", ""), help="the exported model.onnx")
    parser.add_argument(
        "--name", default=env("CIFARFLOW_MODEL_NAME", "cifar10"), help="the model's name in the URLs"
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
    args = parser.parse_args()
    if not args.model or not Path(args.model).is_file():
        parser.error(f"--model {args.model!r} is not a file: pass the exported model.onnx")
    # KServe 0.21 answers with FastAPI's ORJSONResponse, which FastAPI now calls deprecated on every request.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    setup_logging()
    sys.argv = sys.argv[:1]  # KServe parses sys.argv when imported; our flags are not its flags
    serve(
        Path(args.model), args.name, args.port, args.grpc_port, args.threads, int(args.max_request_mb * 2**20)
    )


if __name__ == "__main__":
    main()
