"""Rule build_serving_image: the exported model in a serving image (or a served process), and its manifest."""

import argparse
import json
import logging
import subprocess
import time
from pathlib import Path

from cifarflow import __version__
from cifarflow.engines import build, choose
from cifarflow.runtime import run_cli, sha256_file, write_json, write_metrics
from cifarflow.serving.inference import load_session

log = logging.getLogger("cifarflow")


def source_revision() -> str:
    """The workflow's git commit (with -dirty for uncommitted changes), or 'unknown' outside git."""
    here = ["git", "-C", str(Path(__file__).parent)]
    try:
        commit = subprocess.run([*here, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            [*here, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def main(args: argparse.Namespace) -> None:
    settings = json.loads(args.settings)
    model = Path(args.model)
    engine = choose(settings["engine"], settings["base_image"])
    model_sha256 = sha256_file(model)
    dataset_id = load_session(model).get_modelmeta().custom_metadata_map.get("dataset_id", "unknown")
    revision = source_revision()
    reference = f"{settings['image']}:{args.experiment}-{model_sha256[:12]}"
    build_args = {
        "BASE_IMAGE": settings["base_image"],
        "MODEL_NAME": settings["model_name"],
        "VERSION": __version__,
    }
    labels = {
        "io.cifarflow.model.sha256": model_sha256,
        "io.cifarflow.dataset.id": dataset_id,
        "org.opencontainers.image.revision": revision,
    }
    manifest_path = Path(args.manifest)
    start = time.perf_counter()
    built = build(
        engine=engine,
        model=model,
        reference=reference,
        build_args=build_args,
        labels=labels,
        extra=settings["build_options"],
        sif=manifest_path.parent / "serving.sif",
    )
    seconds = round(time.perf_counter() - start, 2)
    manifest = {
        "engine": engine,
        "engine_requested": settings["engine"],
        "image": built.image,
        "image_id": built.image_id,
        "digest": built.digest,
        "image_size_bytes": built.size_bytes,
        "model_name": settings["model_name"],
        "model_sha256": model_sha256,
        "dataset_id": dataset_id,
        "experiment": args.experiment,
        "source_revision": revision,
        "base_image": settings["base_image"] if engine != "process" else None,
        "build_seconds": seconds,
    }
    size = f", {built.size_bytes / 2**20:.0f} MiB" if built.size_bytes else ""
    log.info("%s image %s (%s%s) built in %.1f s", engine, built.image, built.image_id[:19], size, seconds)
    write_metrics(
        args.metrics,
        {"build_seconds": seconds, **({"image_size_bytes": built.size_bytes} if built.size_bytes else {})},
    )
    write_json(manifest_path, manifest)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="results/export/<experiment>/model.onnx")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--settings", required=True, help="the `serving` config section, JSON")
    parser.add_argument("--manifest", required=True, help="where to write manifest.json")
    parser.add_argument("--metrics", required=True, help="where to write metrics.json")
    run_cli(main, parser)
