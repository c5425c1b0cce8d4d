"""Training pieces: schedule, augmentation, divergence errors, models, checkpoints, resume."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from cifarflow import synthetic, training
from cifarflow.config import Recipe, validate_config
from cifarflow.dataset import write_dataset
from cifarflow.errors import PipelineError
from cifarflow.models import MODELS, build_model
from cifarflow.training import augment, lr_at, train
from conftest import ROOT

SCHEMA = ROOT / "config" / "schema.yaml"


def without_timings(metrics: dict) -> dict:
    timing = ("seconds", "images_per_second", "train_seconds")
    history = [{k: v for k, v in row.items() if k not in timing} for row in metrics["history"]]
    return {**{k: v for k, v in metrics.items() if k not in timing}, "history": history}


def base_recipe(**overrides) -> Recipe:
    train_ = validate_config({}, SCHEMA)["train"]
    small = {"widths": [8, 16, 16], "epochs": 2, "batch_size": 64, "device": "cpu"}
    return Recipe.from_config({**train_, **small, **overrides})


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ds"
    write_dataset(
        synthetic.generate(40, 10),
        out,
        dataset_id="synthetic-tiny",
        settings={"source": "synthetic", "val_fraction": 0.25, "seed": 0},
    )
    return out


def test_onecycle_schedule_warms_up_peaks_and_ends_at_zero():
    recipe = base_recipe(lr=1.0, warmup=0.2, schedule="onecycle")
    lrs = [lr_at(s, 100, recipe) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and max(lrs) == pytest.approx(1.0) and lrs[20] == pytest.approx(1.0)
    assert lrs[100] == pytest.approx(0.0) and all(a >= b for a, b in zip(lrs[20:], lrs[21:], strict=False))
    assert lr_at(100, 100, replace(recipe, schedule="cosine")) == pytest.approx(0.0)
    assert lr_at(90, 100, replace(recipe, schedule="constant")) == pytest.approx(1.0)


def test_augment_flips_and_translates_without_changing_content():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    out = augment(x.repeat(64, 1, 1, 1), flip=True, translate=2, generator=g)
    assert out.shape == (128, 3, 32, 32)
    # every output is its source, possibly mirrored, shifted by at most 2 px: the centre survives
    centres = {tuple(o[0, 14:18, 14:18].flatten().tolist()) for o in out}
    sources = [x[i % 2] for i in range(2)]
    candidates = set()
    for src in sources:
        for img in (src, src.flip(-1)):
            padded = torch.nn.functional.pad(img[None], (2, 2, 2, 2), mode="reflect")[0]
            for dy in range(5):
                for dx in range(5):
                    candidates.add(tuple(padded[0, dy + 14 : dy + 18, dx + 14 : dx + 18].flatten().tolist()))
    assert centres <= candidates and len(centres) > 10  # varied, and always a legal transform
    none = augment(x, flip=False, translate=0, generator=g)
    assert torch.equal(none, x)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_maps_images_to_logits(name):
    model = build_model(name, [0.5] * 3, [0.25] * 3, widths=(8, 16, 16)).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 3, 32, 32)).shape == (3, 10)


def test_training_writes_checkpoint_history_tensorboard_and_metrics(tiny_data, tmp_path):
    metrics = train(tiny_data, base_recipe(), tmp_path, threads=2)
    assert set(metrics) >= {
        "val_accuracy",
        "test_accuracy",
        "train_seconds",
        "images_per_second",
        "parameters",
        "history",
    }
    assert 0 <= metrics["test_accuracy"] <= 1 and len(metrics["history"]) == 2
    checkpoint = torch.load(tmp_path / "model.pt", weights_only=True)
    assert checkpoint["class_names"] == synthetic.CLASS_NAMES and checkpoint["dataset_id"] == "synthetic-tiny"
    assert checkpoint["recipe"]["widths"] == [8, 16, 16] and len(checkpoint["mean"]) == 3
    header = (tmp_path / "history.csv").read_text().splitlines()[0]
    assert header == "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,seconds,images_per_second"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    json.dumps(metrics, allow_nan=False)


def test_same_seed_same_result_and_resume_is_exact(tiny_data, tmp_path, monkeypatch):
    recipe = base_recipe(epochs=3)
    full = train(tiny_data, recipe, tmp_path / "a", threads=2)
    again = train(tiny_data, recipe, tmp_path / "b", threads=2)
    assert without_timings(full) == without_timings(again)
    # the same weights make the same file, byte for byte (and so the same hash in the MLflow lineage)
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()

    # Interrupt the next run during epoch 2, after epoch 1's checkpoint was written.
    real_write_epoch = training._write_epoch

    def interrupt_in_epoch_2(writer, row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt
        real_write_epoch(writer, row)

    def interrupted_run(outdir):
        monkeypatch.setattr(training, "_write_epoch", interrupt_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_data, recipe, outdir, threads=2)
        assert torch.load(outdir / "resume.pt", weights_only=True)["epoch"] == 1
        monkeypatch.setattr(training, "_write_epoch", real_write_epoch)

    interrupted_run(tmp_path / "c")
    resumed = train(tiny_data, recipe, tmp_path / "c", threads=2)
    assert without_timings(resumed) == without_timings(full)
    assert not (tmp_path / "c" / "resume.pt").exists()  # finished: nothing left to resume
    # a checkpoint made with another recipe is not resumed from: the run is a fresh one
    interrupted_run(tmp_path / "d")
    other = train(tiny_data, replace(recipe, seed=1), tmp_path / "d", threads=2)
    fresh = train(tiny_data, replace(recipe, seed=1), tmp_path / "e", threads=2)
    assert len(other["history"]) == 3 and without_timings(other) != without_timings(full)
    assert without_timings(other) == without_timings(fresh)


def test_divergence_names_epoch_step_and_lr(tiny_data, tmp_path):
    with pytest.raises(
        PipelineError, match=r"training diverged: loss is nan at epoch 1, step \d+ \(lr [0-9.e+]+\)"
    ):
        train(tiny_data, base_recipe(lr=1e30, warmup=0.0, ema=0.0, label_smoothing=0.0), tmp_path, threads=2)


def test_cuda_requested_without_cuda_is_a_clear_error(tiny_data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(PipelineError, match="train.device is 'cuda' but no CUDA device"):
        train(tiny_data, base_recipe(device="cuda"), tmp_path)


def test_batch_larger_than_data_is_a_clear_error(tiny_data, tmp_path):
    with pytest.raises(PipelineError, match=r"batch_size 4096 is larger than the training split"):
        train(tiny_data, base_recipe(batch_size=4096), tmp_path)


def test_predictions_depend_on_normalisation_inside_the_model():
    a = build_model("simple", [0.0] * 3, [1.0] * 3).eval()
    b = build_model("simple", [0.5] * 3, [0.25] * 3).eval()
    b.load_state_dict(a.state_dict() | {"normalize.mean": b.normalize.mean, "normalize.std": b.normalize.std})
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))
        assert torch.allclose(b(x), a((x - 0.5) / 0.25), atol=1e-5)
    assert np.allclose(b.normalize.mean.flatten().numpy(), 0.5)
