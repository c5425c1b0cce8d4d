"""ONNX export with the preprocessing inside the graph, a parity gate against PyTorch on the
whole test split, ONNX Runtime speed figures, and optional int8 static quantisation.

The graph takes what any image decoder gives: uint8 [N, 32, 32, 3] RGB. Scaling to 0..1, the
dataset's normalisation and flip TTA all happen inside, so no client can get them wrong.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from .calibration import calibration_metrics, fit_temperature, nll_from_logits, softmax
from .checkpoint import load_checkpoint
from .config import Recipe
from .dataset import load_meta, load_split
from .errors import PipelineError
from .paired import ValPredictions
from .runtime import atomic_path
from .serving.inference import INPUT, OUTPUTS, load_session, ort_runner, predict

log = logging.getLogger("cifarflow")
for _noisy in ("onnxscript", "onnx_ir"):  # the exporter's optimiser logs every folded constant
    logging.getLogger(_noisy).setLevel(logging.WARNING)

BATCH = 256


class ServingModel(nn.Module):
    """uint8 NHWC RGB images -> (logits, probabilities), float32 [N, classes].

    With a temperature T (export.calibrate: temperature) both outputs are the calibrated ones: logits
    = the classifier's logits / T and probabilities = softmax(logits), so a client that applies its
    own softmax to `logits` gets the calibrated probabilities too; the class ranking is unchanged.
    T = 1 adds nothing to the graph (the same file as before calibration existed).
    """

    def __init__(self, classifier: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.classifier = classifier
        self.temperature = float(temperature)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = image.permute(0, 3, 1, 2).float() / 255.0
        logits = self.classifier(x)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return logits, torch.softmax(logits, dim=1)


def torch_runner(model: nn.Module):
    @torch.no_grad()
    def run(x: np.ndarray):
        logits, probs = model(torch.from_numpy(np.array(x)))  # a writable copy
        return logits.numpy(), probs.numpy()

    return run


def speed(sess: ort.InferenceSession, images: np.ndarray) -> dict[str, float]:
    """Latency at batch 1 (p50, p99 over 200 calls) and throughput at batch 256, in ONNX Runtime."""
    run = ort_runner(sess)
    one = images[:1]
    for _ in range(20):
        run(one)
    latencies = []
    for i in range(200):
        x = images[i % len(images)][None]
        start = time.perf_counter()
        run(x)
        latencies.append(time.perf_counter() - start)
    batch = np.ascontiguousarray(np.resize(images, (BATCH, *images.shape[1:])))
    run(batch)
    start, calls = time.perf_counter(), 0
    while calls < 5 or time.perf_counter() - start < 2.0:
        run(batch)
        calls += 1
    return {
        "latency_ms_p50": round(float(np.percentile(latencies, 50)) * 1e3, 3),
        "latency_ms_p99": round(float(np.percentile(latencies, 99)) * 1e3, 3),
        "throughput_images_per_second": round(calls * BATCH / (time.perf_counter() - start), 1),
    }


def _metadata(checkpoint: dict, temperature: float) -> dict[str, str]:
    recipe = Recipe.from_config(checkpoint["recipe"])
    calibration = {}
    if temperature != 1.0:
        calibration = {
            "temperature": repr(temperature),
            "calibration": "temperature scaling fitted on the validation split: logits = the model's "
            "logits / temperature, probabilities = softmax(logits)",
        }
    return calibration | {
        "class_names": json.dumps(checkpoint["class_names"]),
        "normalization": json.dumps({"mean": checkpoint["mean"], "std": checkpoint["std"], "scale": 1 / 255}),
        "input_format": "uint8 [N,32,32,3] RGB (NHWC); scaling, normalisation and TTA are in the graph",
        "model_type": recipe.model,
        "tta": json.dumps(recipe.tta),
        "tta_translate": json.dumps(recipe.tta_translate),
        "dataset_id": checkpoint["dataset_id"],
        "recipe_sha256": checkpoint["recipe_sha256"],
        "recipe": recipe.to_json(),
    }


def to_onnx(model: nn.Module, checkpoint: dict, path: Path, opset: int, temperature: float = 1.0) -> None:
    """Export the serving wrapper (dynamic batch), attach metadata, run onnx.checker's full check."""
    wrapper = ServingModel(model, temperature).eval()
    example = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    program = torch.onnx.export(
        wrapper,
        (example,),
        input_names=[INPUT],
        output_names=list(OUTPUTS),
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
        verbose=False,
    )
    proto = program.model_proto
    for node in proto.graph.node:  # stack traces name local paths: the file would differ per checkout
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    for key, value in _metadata(checkpoint, temperature).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, path)
    onnx.checker.check_model(str(path), full_check=True)


def parity(torch_out, ort_out, labels: np.ndarray, limits: dict) -> dict[str, float]:
    (t_logits, t_probs), (o_logits, o_probs) = torch_out, ort_out
    t_pred, o_pred = t_logits.argmax(1), o_logits.argmax(1)
    figures = {
        "argmax_agreement": float((t_pred == o_pred).mean()),
        "max_probability_diff": float(np.abs(t_probs - o_probs).max()),
        "max_logit_diff": float(np.abs(t_logits - o_logits).max()),
        "torch_test_accuracy": float((t_pred == labels).mean()),
        "onnx_test_accuracy": float((o_pred == labels).mean()),
    }
    figures["accuracy_diff"] = abs(figures["torch_test_accuracy"] - figures["onnx_test_accuracy"])
    failures = []
    if figures["argmax_agreement"] < limits["min_argmax_agreement"]:
        failures.append(
            f"argmax agreement {figures['argmax_agreement']:.5f} < {limits['min_argmax_agreement']}"
        )
    if figures["max_probability_diff"] > limits["max_probability_diff"]:
        failures.append(
            f"max |probability diff| {figures['max_probability_diff']:.3g} > {limits['max_probability_diff']}"
        )
    if figures["accuracy_diff"] > limits["max_accuracy_diff"]:
        failures.append(
            f"accuracy differs by {figures['accuracy_diff'] * 100:.3f} points"
            f" > {limits['max_accuracy_diff'] * 100:.3f}"
        )
    if failures:
        raise PipelineError(
            f"ONNX parity gate failed on {len(labels)} test images: {'; '.join(failures)}. "
            "The exported graph does not reproduce the PyTorch model; nothing was written."
        )
    return {k: round(v, 7) for k, v in figures.items()}


def fit_on_validation(model: nn.Module, data_dir: Path) -> tuple[float, dict[str, float]]:
    """The temperature that minimises NLL on the validation split (never test), and that NLL before/after."""
    val = load_split(data_dir, "val")
    if len(val.labels) == 0:
        raise PipelineError(
            "export.calibrate is 'temperature', but the dataset has no validation split to fit it on "
            "(dataset.val_fraction is 0): raise dataset.val_fraction or set export.calibrate: none"
        )
    labels = np.asarray(val.labels)
    logits, _ = predict(torch_runner(ServingModel(model)), np.asarray(val.images))
    temperature = fit_temperature(logits, labels)
    figures = {
        "val_nll_before": round(nll_from_logits(logits, labels), 6),
        "val_nll_after": round(nll_from_logits(logits, labels, temperature), 6),
    }
    log.info(
        "temperature %.4f fitted on %d validation images: NLL %.4f -> %.4f",
        temperature,
        len(labels),
        figures["val_nll_before"],
        figures["val_nll_after"],
    )
    return temperature, figures


def calibration_figures(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, float]:
    """ECE, NLL and Brier on test of the exported graph (`logits`: its output, already divided by the
    temperature) and of the same model without the temperature ("before")."""
    figures = {"temperature": round(temperature, 6)}
    for when, probabilities in (("before", softmax(logits, 1 / temperature)), ("after", softmax(logits))):
        for key, value in calibration_metrics(probabilities, labels).items():
            if key != "mean_confidence":
                figures[f"test_{key}_{when}"] = value
    return figures


def validation_predictions(sess: ort.InferenceSession, data_dir: Path) -> ValPredictions:
    """The exported graph's top class and top-label ECE on every validation image: what the
    registry's paired test compares a challenger with the champion on (paired.py)."""
    val = load_split(data_dir, "val")
    labels = np.asarray(val.labels)
    files = load_meta(data_dir)["files"]["val"]
    predicted, ece = np.zeros(0, dtype=np.int64), float("nan")
    if len(labels):
        _, probabilities = predict(ort_runner(sess), np.asarray(val.images))
        predicted = probabilities.argmax(1)
        ece = calibration_metrics(probabilities, labels)["ece"]
    return ValPredictions(
        index=np.arange(len(labels)),
        label=labels,
        predicted=predicted,
        ece=ece,
        images_sha256=files["images_sha256"],
        labels_sha256=files["labels_sha256"],
    )


def export(
    checkpoint_path: Path,
    data_dir: Path,
    out_path: Path,
    settings: dict,
    threads: int = 0,
    val_predictions: Path | None = None,
) -> dict:
    """Export, gate on parity over the whole test split, measure; the .onnx appears only if it passed.
    With export.calibrate: temperature, a temperature fitted on the validation split goes into the graph.
    With `val_predictions`, the graph's predictions on the validation split are written there (paired.py)."""
    if threads:
        torch.set_num_threads(threads)
    model, checkpoint = load_checkpoint(checkpoint_path)
    test = load_split(data_dir, "test")
    images, labels = np.asarray(test.images), np.asarray(test.labels)
    temperature, fitted = 1.0, {}
    if settings.get("calibrate", "none") == "temperature":
        temperature, fitted = fit_on_validation(model, data_dir)
    with atomic_path(out_path) as tmp:
        to_onnx(model, checkpoint, tmp, settings["opset"], temperature)
        sess = load_session(tmp, threads)
        log.info(
            "exported %s (opset %d, %s bytes); checking parity on %d test images",
            out_path.name,
            settings["opset"],
            f"{tmp.stat().st_size:,}",
            len(labels),
        )
        onnx_out = predict(ort_runner(sess), images)
        figures = parity(
            predict(torch_runner(ServingModel(model, temperature)), images),
            onnx_out,
            labels,
            settings["parity"],
        )
        log.info("parity: %s", figures)
        figures |= fitted | calibration_figures(onnx_out[0], labels, temperature)
        log.info(
            "test ECE %.4f before, %.4f after the temperature (%.4g)",
            figures["test_ece_before"],
            figures["test_ece_after"],
            temperature,
        )
        figures |= speed(sess, images)
        figures["model_bytes"] = tmp.stat().st_size
        if val_predictions is not None:
            val = validation_predictions(sess, data_dir)
            if len(val.label):
                figures |= {"val_onnx_accuracy": round(val.accuracy, 7), "val_ece": val.ece}
            log.info(
                "validation: accuracy %.4f, ECE %.4f on %d images (for the registry's paired test)",
                val.accuracy,
                val.ece,
                len(val.label),
            )
            val.save(val_predictions)
    return figures


def quantize(
    onnx_path: Path, data_dir: Path, out_path: Path, calibration_images: int, threads: int = 0
) -> dict:
    """Static int8 quantisation (QDQ, per-channel weights), calibrated on training images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Calibration(CalibrationDataReader):
        """uint8 training images, in batches of 64."""

        def __init__(self, images: np.ndarray):
            self.batches = iter([np.ascontiguousarray(images[i : i + 64]) for i in range(0, len(images), 64)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: batch}

    train = np.asarray(load_split(data_dir, "train").images)
    rng = np.random.default_rng(0)
    calibration = train[np.sort(rng.choice(len(train), min(calibration_images, len(train)), replace=False))]
    test = load_split(data_dir, "test")
    images, labels = np.asarray(test.images), np.asarray(test.labels)
    with atomic_path(out_path) as tmp, tempfile.TemporaryDirectory(dir=out_path.parent) as scratch:
        prep = Path(scratch) / "prep.onnx"  # shape-inferred and optimised, as quantize_static advises
        quant_pre_process(str(onnx_path), str(prep), skip_symbolic_shape=True)
        quantize_static(
            str(prep),
            str(tmp),
            Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        fp32, int8 = load_session(onnx_path, threads), load_session(tmp, threads)
        fp32_acc = float((predict(ort_runner(fp32), images)[0].argmax(1) == labels).mean())
        int8_acc = float((predict(ort_runner(int8), images)[0].argmax(1) == labels).mean())
        fp32_speed, int8_speed = speed(fp32, images), speed(int8, images)
        size = tmp.stat().st_size
    return {
        "fp32_test_accuracy": round(fp32_acc, 5),
        "int8_test_accuracy": round(int8_acc, 5),
        "accuracy_drop": round(fp32_acc - int8_acc, 5),
        "fp32_throughput_images_per_second": fp32_speed["throughput_images_per_second"],
        "int8_throughput_images_per_second": int8_speed["throughput_images_per_second"],
        "speedup": round(
            int8_speed["throughput_images_per_second"] / fp32_speed["throughput_images_per_second"], 3
        ),
        "int8_latency_ms_p50": int8_speed["latency_ms_p50"],
        "model_bytes": size,
        "calibration_images": len(calibration),
    }
