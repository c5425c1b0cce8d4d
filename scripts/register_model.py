"""Rule register_model: after the quality gate, the ONNX model goes to the MLflow Model Registry with
its model card (Markdown and HTML, also written beside registration.json)."""

import argparse
import json
from pathlib import Path

import onnx
from cifarflow.model_card import CardInputs, render, robustness_summary
from cifarflow.registry import ChallengerRule, log_card, register, tracking_uri, use_experiment
from cifarflow.runtime import run_cli, write_json, write_text
from cifarflow.versions import from_logs, software_versions


def read(path: str | None) -> dict | None:
    return json.loads(Path(path).read_text()) if path else None


def job_versions(pairs: list[str]) -> dict[str, dict[str, str]]:
    """What each job that made the model recorded, and this job's own versions last."""
    return from_logs(pairs) | {"register_model": software_versions()}


def main(args: argparse.Namespace) -> None:
    settings = json.loads(args.settings)
    manifest = json.loads(Path(args.manifest).read_text())
    figures = json.loads(Path(args.evaluation).read_text())
    train = read(args.train)
    tags = {
        "image": manifest["image"],
        "image_id": manifest["image_id"],
        "engine": manifest["engine"],
        "dataset_id": manifest["dataset_id"],
        "experiment": manifest["experiment"],
        "model_sha256": manifest["model_sha256"],
        "macro_f1": f"{figures['macro_f1']:.6f}",
        "clean_accuracy": f"{figures['clean_accuracy']:.6f}",  # test images without a train/val duplicate
        "latency_ms_p50": str(figures["latency_ms_p50"]),
        "throughput_images_per_second": str(figures["throughput_images_per_second"]),
    }
    robustness = json.loads(Path(args.robustness).read_text())
    tags["mean_corruption_accuracy"] = f"{robustness_summary(robustness)['mean']:.6f}"  # test: recorded only
    validation = robustness.get("validation")  # none with an empty validation split
    uri = tracking_uri(settings["mlflow"]["tracking_uri"])
    use_experiment(uri, settings["mlflow"]["experiment"])
    record = register(
        model_path=Path(args.model),
        name=settings["register"]["model_name"],
        alias=settings["register"]["alias"],
        tags=tags,
        accuracy=figures["accuracy"],
        val_accuracy=train["val_accuracy"],
        # what decides the alias: the paired test on these, and the two guards
        val_predictions=Path(args.val_predictions),
        val_mean_corruption_accuracy=robustness_summary(validation)["mean"] if validation else None,
        rule=ChallengerRule.from_settings(settings["register"]["challenger"]),
        uri=uri,
        lock_file=Path(args.output).parent.parent / ".registry.lock",
    )
    metadata = {p.key: p.value for p in onnx.load(args.model, load_external_data=False).metadata_props}
    card = CardInputs(
        experiment=manifest["experiment"],
        registration=record,
        manifest=manifest,
        evaluation=figures,
        export=read(args.export),
        train=train,
        meta=read(args.meta),
        recipe=json.loads(metadata["recipe"]),
        recipe_sha256=metadata["recipe_sha256"],
        config_sha256=args.config_sha256,
        versions=job_versions(args.logs),
        robustness=robustness,
        audit=read(args.audit),
        train_label_issues=read(args.label_issues),
    )
    markdown, page = render(card)
    outputs = [Path(args.card), Path(args.card_html)]
    write_text(outputs[0], markdown)
    write_text(outputs[1], page)
    folder = log_card(uri, record["name"], record["version"], outputs, manifest["engine"])
    record["model_card"] = f"{record['model_uri']}/{folder + '/' if folder else ''}{outputs[0].name}"
    write_json(args.output, record)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="results/export/<experiment>/model.onnx")
    parser.add_argument("--manifest", required=True, help="results/image/<experiment>/manifest.json")
    parser.add_argument("--evaluation", required=True, help="results/evaluate/<experiment>/metrics.json")
    parser.add_argument("--export", required=True, help="results/export/<experiment>/metrics.json")
    parser.add_argument(
        "--val-predictions", required=True, help="results/export/<experiment>/val_predictions.npz"
    )
    parser.add_argument("--train", required=True, help="results/train/<experiment>/metrics.json")
    parser.add_argument("--meta", required=True, help="results/data/<dataset-id>/meta.json")
    parser.add_argument("--robustness", required=True, help="results/robustness/<experiment>/robustness.json")
    parser.add_argument("--audit", required=True, help="the dataset audit's metrics.json")
    parser.add_argument(
        "--label-issues", help="find_label_issues' metrics.json (train/val label issues; with folds only)"
    )
    parser.add_argument("--logs", nargs="*", default=[], help="JOB=LOG of the jobs that made the model")
    parser.add_argument("--config-sha256", required=True, help="of the settings that made this model")
    parser.add_argument("--settings", required=True, help="the `register` and `mlflow` config, JSON")
    parser.add_argument("--output", required=True, help="where to write registration.json")
    parser.add_argument("--card", required=True, help="where to write model_card.md")
    parser.add_argument("--card-html", required=True, help="where to write model_card.html")
    run_cli(main, parser)
