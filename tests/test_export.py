"""ONNX export: the graph's interface, its metadata, the parity gate, speed figures, int8."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from cifarflow import calibration as cal
from cifarflow.config import validate_config
from cifarflow.errors import PipelineError
from cifarflow.export import export, quantize
from cifarflow.models import MODELS
from cifarflow.training import train
from conftest import ROOT
from test_training import base_recipe, tiny_data  # noqa: F401  (fixture)

SETTINGS = validate_config({}, ROOT / "config" / "schema.yaml")["export"]


@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_a_few_steps_and_exports_with_parity(name, tiny_data, tmp_path):  # noqa: F811
    recipe = base_recipe(model=name, epochs=1, batch_size=100, lr=0.05)
    metrics = train(tiny_data, recipe, tmp_path, threads=2)
    assert len(metrics["history"]) == 1
    figures = export(tmp_path / "model.pt", tiny_data, tmp_path / "model.onnx", SETTINGS, threads=2)
    assert figures["argmax_agreement"] >= 0.9995 and figures["max_probability_diff"] <= 1e-4
    assert figures["onnx_test_accuracy"] == pytest.approx(figures["torch_test_accuracy"], abs=5e-4)
    assert figures["model_bytes"] == (tmp_path / "model.onnx").stat().st_size


def test_translate_tta_exports_with_parity_and_says_so(tiny_data, tmp_path):  # noqa: F811
    train(tiny_data, base_recipe(epochs=1, tta_translate=True), tmp_path, threads=2)
    figures = export(tmp_path / "model.pt", tiny_data, tmp_path / "model.onnx", SETTINGS, threads=2)
    assert figures["argmax_agreement"] >= 0.9995 and figures["max_probability_diff"] <= 1e-4
    meta = {p.key: p.value for p in onnx.load(tmp_path / "model.onnx").metadata_props}
    assert (meta["tta"], meta["tta_translate"]) == ("true", "true")
    ops = {node.op_type for node in onnx.load(tmp_path / "model.onnx").graph.node}
    assert "Pad" in ops  # the one-pixel shifts (reflect padding) are in the graph


@pytest.fixture(scope="module")
def exported(tiny_data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("export")
    train(tiny_data, base_recipe(epochs=3), out, threads=2)
    figures = export(
        out / "model.pt",
        tiny_data,
        out / "model.onnx",
        SETTINGS,
        threads=2,
        val_predictions=out / "val_predictions.npz",
    )
    return out, figures


def test_the_graphs_validation_predictions_are_stored_for_the_registrys_paired_test(exported, tiny_data):  # noqa: F811
    """val_predictions.npz: the exported graph's top class on every validation image, in the split's
    order, with the split's sha256 (which images) and the ECE of the graph as it ships."""
    from cifarflow.dataset import load_meta, load_split
    from cifarflow.paired import ValPredictions

    out, figures = exported
    stored = ValPredictions.load(out / "val_predictions.npz")
    val = load_split(tiny_data, "val")
    session = ort.InferenceSession(str(out / "model.onnx"))
    _, probabilities = session.run(None, {"image": np.asarray(val.images)})
    assert len(val.labels) > 0
    np.testing.assert_array_equal(stored.index, np.arange(len(val.labels)))
    np.testing.assert_array_equal(stored.label, val.labels)
    np.testing.assert_array_equal(stored.predicted, probabilities.argmax(1))
    assert stored.ece == pytest.approx(
        cal.calibration_metrics(probabilities, np.asarray(val.labels))["ece"], abs=1e-6
    )
    files = load_meta(tiny_data)["files"]["val"]
    assert (stored.images_sha256, stored.labels_sha256) == (files["images_sha256"], files["labels_sha256"])
    assert figures["val_ece"] == stored.ece
    assert figures["val_onnx_accuracy"] == pytest.approx(stored.accuracy)


def test_graph_takes_uint8_images_and_carries_its_metadata(exported):
    out, _ = exported
    model = onnx.load(out / "model.onnx")
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    (image,) = model.graph.input
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [32, 32, 3]  # dynamic batch, NHWC
    assert [o.name for o in model.graph.output] == ["logits", "probabilities"]
    meta = {p.key: p.value for p in model.metadata_props}
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    assert json.loads(meta["class_names"]) == checkpoint["class_names"]
    assert json.loads(meta["normalization"])["mean"] == checkpoint["mean"]
    assert meta["model_type"] == "fast" and meta["dataset_id"] == "synthetic-tiny"
    assert meta["recipe_sha256"] == checkpoint["recipe_sha256"]
    onnx.checker.check_model(model, full_check=True)
    # no paths of this machine (torch.export's stack traces): the same model is the same file anywhere
    assert str(ROOT).encode() not in (out / "model.onnx").read_bytes()


def test_any_batch_size_runs_and_probabilities_sum_to_one(exported, tiny_data):  # noqa: F811
    out, _ = exported
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    images = np.load(tiny_data / "test_images.npy")
    for n in (1, 7, 33):
        logits, probs = sess.run(None, {"image": images[:n]})
        assert logits.shape == probs.shape == (n, 10) and logits.dtype == np.float32
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)


def test_speed_figures_are_measured(exported):
    _, figures = exported
    assert 0 < figures["latency_ms_p50"] <= figures["latency_ms_p99"]
    assert figures["throughput_images_per_second"] > 0


def test_parity_gate_fails_and_says_by_how_much(exported, tiny_data, tmp_path):  # noqa: F811
    out, _ = exported
    strict = {
        **SETTINGS,
        "parity": {**SETTINGS["parity"], "max_probability_diff": 0.0, "min_argmax_agreement": 1.01},
    }
    with pytest.raises(
        PipelineError, match=r"parity gate failed on 100 test images: argmax agreement 1\.00000 < 1\.01"
    ):
        export(out / "model.pt", tiny_data, tmp_path / "model.onnx", strict, threads=2)
    assert not (tmp_path / "model.onnx").exists() and list(tmp_path.iterdir()) == []


def test_int8_quantisation_reports_accuracy_and_speed(exported, tiny_data, tmp_path):  # noqa: F811
    out, _ = exported
    figures = quantize(out / "model.onnx", tiny_data, tmp_path / "model.int8.onnx", 64, threads=2)
    model = onnx.load(tmp_path / "model.int8.onnx")
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)  # QDQ format
    assert figures["calibration_images"] == 64 and figures["speedup"] > 0
    assert figures["accuracy_drop"] == pytest.approx(
        figures["fp32_test_accuracy"] - figures["int8_test_accuracy"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx"]


def overconfident_checkpoint(source, target, factor: float = 20.0):
    """The same model with its head's weights scaled: the same argmax, logits `factor` times sharper
    (the tiny model trained with label smoothing is under-confident: T ~ 0.25 would suit it)."""
    checkpoint = torch.load(source, weights_only=True)
    (head,) = [key for key in checkpoint["weights"] if key.endswith("head.weight")]
    checkpoint["weights"][head] = checkpoint["weights"][head] * factor
    torch.save(checkpoint, target)
    return target


def test_temperature_fitted_on_val_goes_into_the_graph_and_keeps_every_prediction(
    exported,
    tiny_data,  # noqa: F811
    tmp_path,
):
    out, plain_figures = exported
    sharp = overconfident_checkpoint(out / "model.pt", tmp_path / "sharp.pt")
    plain = export(sharp, tiny_data, tmp_path / "plain.onnx", SETTINGS, threads=2)
    settings = {**SETTINGS, "calibrate": "temperature"}
    figures = export(sharp, tiny_data, tmp_path / "calibrated.onnx", settings, threads=2)
    assert plain["temperature"] == 1.0 and plain["test_ece_before"] == plain["test_ece_after"]
    assert "temperature" not in {p.key for p in onnx.load(tmp_path / "plain.onnx").metadata_props}
    t = figures["temperature"]
    assert t > 1.0  # the sharpened model is over-confident: the temperature softens it

    # fitted on the validation split, and only there
    run = lambda path, split: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"image": np.load(tiny_data / f"{split}_images.npy")}
    )
    val_labels = np.load(tiny_data / "val_labels.npy")
    raw_val_logits, _ = run(tmp_path / "plain.onnx", "val")
    assert t == pytest.approx(cal.fit_temperature(raw_val_logits, val_labels), rel=1e-3)
    assert figures["val_nll_after"] < figures["val_nll_before"] - 0.05
    assert figures["val_nll_before"] == pytest.approx(
        cal.nll_from_logits(raw_val_logits, val_labels), abs=1e-4
    )

    # in the graph: logits / T and their softmax; every prediction and the accuracy unchanged
    meta = {p.key: p.value for p in onnx.load(tmp_path / "calibrated.onnx").metadata_props}
    assert float(meta["temperature"]) == pytest.approx(t, rel=1e-5)
    raw_logits, raw_probs = run(tmp_path / "plain.onnx", "test")
    logits, probs = run(tmp_path / "calibrated.onnx", "test")
    np.testing.assert_allclose(logits, raw_logits / float(meta["temperature"]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probs, cal.softmax(logits), atol=1e-6)
    np.testing.assert_array_equal(probs.argmax(1), raw_probs.argmax(1))
    assert figures["onnx_test_accuracy"] == plain["onnx_test_accuracy"] == plain_figures["onnx_test_accuracy"]
    assert figures["argmax_agreement"] >= 0.9995 and figures["max_probability_diff"] <= 1e-4  # the gate held
    # calibration on test: "before" is the plain graph's, "after" the calibrated graph's
    labels = np.load(tiny_data / "test_labels.npy")
    assert figures["test_ece_before"] == pytest.approx(
        cal.expected_calibration_error(raw_probs, labels), abs=1e-5
    )
    assert figures["test_ece_after"] == pytest.approx(cal.expected_calibration_error(probs, labels), abs=1e-5)
    assert figures["test_nll_after"] < figures["test_nll_before"]


def test_temperature_needs_a_validation_split(exported, tiny_data, tmp_path):  # noqa: F811
    out, _ = exported
    data = tmp_path / "noval"
    data.mkdir()
    for f in tiny_data.iterdir():
        (data / f.name).write_bytes(f.read_bytes())
    np.save(data / "val_images.npy", np.zeros((0, 32, 32, 3), np.uint8))
    np.save(data / "val_labels.npy", np.zeros((0,), np.int64))
    with pytest.raises(PipelineError, match="no validation split.*export.calibrate: none"):
        export(out / "model.pt", data, tmp_path / "model.onnx", {**SETTINGS, "calibrate": "temperature"})
    assert not (tmp_path / "model.onnx").exists()


def test_export_reads_the_checkpoint_without_importing_the_training_loop():
    modules = "'cifarflow.checkpoint', 'cifarflow.training'"
    code = f"import sys, cifarflow.export; print(*(m in sys.modules for m in ({modules})))"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["True", "False"]
