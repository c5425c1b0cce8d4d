"""Training pieces: schedule, augmentation, divergence errors, models, checkpoints, resume."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from cifarflow import synthetic, training
from cifarflow.checkpoint import load_checkpoint
from cifarflow.config import Recipe, validate_config
from cifarflow.dataset import write_dataset
from cifarflow.errors import PipelineError, TrainingDiverged
from cifarflow.models import MODELS, build_model
from cifarflow.training import augment, lr_at, train
from conftest import ROOT

SCHEMA = ROOT / "config" / "schema.yaml"


def without_timings(metrics: dict) -> dict:
    # what the clock decides (a budgeted run's too: the throughput it measured, the time it predicted)
    timing = ("seconds", "images_per_second", "train_seconds", "wall_seconds")
    timing += ("budget_images_per_second", "budget_predicted_seconds")
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


def interrupted_in_epoch_2(monkeypatch, data: Path, recipe, outdir: Path) -> dict:
    """Train, interrupted (KeyboardInterrupt) in epoch 2's validation, after epoch 1's checkpoint
    was written; returns that resume.pt, and training.evaluate is the real one again."""
    real_evaluate = training.evaluate
    calls = []

    def interrupt_in_epoch_2(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args)

    monkeypatch.setattr(training, "evaluate", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(data, recipe, outdir, threads=2)
    monkeypatch.setattr(training, "evaluate", real_evaluate)
    return torch.load(outdir / "resume.pt", weights_only=True)


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

    def interrupted_run(outdir):
        assert interrupted_in_epoch_2(monkeypatch, tiny_data, recipe, outdir)["epoch"] == 1

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


def test_halving_rungs_end_identical_to_an_uninterrupted_training(tiny_data, tmp_path):
    """A trial that survives every rung (epochs 1, then 2, of a 4-epoch schedule, each a separate
    call as a rung job is, then the rest) makes the same model.pt, byte for byte, and the same
    metrics as one uninterrupted training: the learning rate spans the full 4 epochs from the start."""
    recipe = base_recipe(epochs=4)
    full = train(tiny_data, recipe, tmp_path / "full", threads=2)
    rungs = tmp_path / "rungs"
    first = train(tiny_data, recipe, rungs, threads=2, stop_after=1)
    assert not (rungs / "model.pt").exists() and not (rungs / "history.csv").exists()
    assert torch.load(rungs / "resume.pt", weights_only=True)["epoch"] == 1
    second = train(tiny_data, recipe, rungs, threads=2, stop_after=2)
    assert torch.load(rungs / "resume.pt", weights_only=True)["epoch"] == 2
    for rung, epochs in ((first, 1), (second, 2)):  # each rung's figures are those of its epoch
        assert rung["epochs"] == epochs and "test_accuracy" not in rung
        assert rung["val_accuracy"] == full["history"][epochs - 1]["val_accuracy"]
        assert rung["val_loss"] == full["history"][epochs - 1]["val_loss"]
    # the rung's lr is that of the full schedule at that epoch, not the end of a short one (0)
    assert second["epoch_history"][-1]["lr"] == full["history"][1]["lr"] > 0
    # a rung run again after its state went further trains nothing and gives the same figures
    again = train(tiny_data, recipe, rungs, threads=2, stop_after=1)
    assert again == first
    assert torch.load(rungs / "resume.pt", weights_only=True)["epoch"] == 2
    last = train(tiny_data, recipe, rungs, threads=2)
    assert without_timings(last) == without_timings(full)
    assert (rungs / "model.pt").read_bytes() == (tmp_path / "full" / "model.pt").read_bytes()
    assert (rungs / "history.csv").read_text().count("\n") == 5 and not (rungs / "resume.pt").exists()
    with pytest.raises(PipelineError, match="stop after epoch 5: the recipe trains epochs 1 to 4"):
        train(tiny_data, recipe, rungs, stop_after=5)


def test_divergence_names_epoch_step_and_lr(tiny_data, tmp_path):
    with pytest.raises(
        PipelineError, match=r"training diverged: loss is nan at epoch 1, step \d+ \(lr [0-9.e+]+\)"
    ):
        train(tiny_data, base_recipe(lr=1e30, warmup=0.0, ema=0.0, label_smoothing=0.0), tmp_path, threads=2)


def test_a_validation_loss_that_is_not_finite_is_a_divergence(tiny_data, tmp_path, monkeypatch):
    # Seen with lr 10000 at batch 128: a huge but finite training loss, weights whose logits
    # overflow on validation. Its metrics could not be written as JSON; it is a divergence.
    monkeypatch.setattr(training, "evaluate", lambda *args: (float("nan"), 0.1))
    with pytest.raises(
        TrainingDiverged, match=r"training diverged: validation loss is nan after epoch 1 \(training loss \d"
    ):
        train(tiny_data, base_recipe(), tmp_path, threads=2)
    assert not (tmp_path / "resume.pt").exists() and not (tmp_path / "model.pt").exists()


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


def test_tta_averages_its_views_in_one_batch():
    model = build_model("fast", [0.5] * 3, [0.25] * 3, widths=(8, 16, 16), tta=True).eval()
    x = torch.rand(3, 3, 32, 32)
    body = model.body
    with torch.no_grad():
        norm = model.normalize(x)
        # mirror TTA: the image and its mirror, 1/2 each
        assert torch.allclose(model(x), 0.5 * (body(norm) + body(norm.flip(-1))), atol=1e-5)
        # translate TTA: one pixel up-left and down-right (reflect padding), 1/4 each, each with its mirror
        model.tta_translate = True
        padded = torch.nn.functional.pad(norm, (1, 1, 1, 1), mode="reflect")
        views = {"plain": norm, "up-left": padded[..., :32, :32], "down-right": padded[..., 2:, 2:]}
        mirrored = {k: 0.5 * (body(v) + body(v.flip(-1))) for k, v in views.items()}
        expected = 0.5 * mirrored["plain"] + 0.25 * (mirrored["up-left"] + mirrored["down-right"])
        assert torch.allclose(model(x), expected, atol=1e-5)
        model.tta = False  # translate alone: no mirrors
        expected = 0.5 * body(norm) + 0.25 * (body(views["up-left"]) + body(views["down-right"]))
        assert torch.allclose(model(x), expected, atol=1e-5)
        model.train()  # training: one view
        assert torch.equal(model(x), body(norm))


def test_augment_crops_a_legal_window_of_the_translated_image():
    x = torch.arange(3 * 32 * 32, dtype=torch.float32).reshape(1, 3, 32, 32).repeat(50, 1, 1, 1)
    out = augment(x, flip=False, translate=2, generator=torch.Generator().manual_seed(0), crop=24)
    assert out.shape == (50, 3, 24, 24)
    padded = torch.nn.functional.pad(x[:1], (2, 2, 2, 2), mode="reflect")[0]
    offsets = [(dy, dx) for dy in range(13) for dx in range(13)]
    windows = {tuple(padded[:, dy : dy + 24, dx : dx + 24].flatten().tolist()) for dy, dx in offsets}
    assert {tuple(o.flatten().tolist()) for o in out} <= windows
    assert len({tuple(o[0, 0].tolist()) for o in out}) > 5  # random offsets, not always the same


def test_alternate_flip_flips_each_image_in_every_other_epoch(tiny_data, tmp_path):
    recipe = base_recipe(alternate_flip=True)
    first = training._flipped_first(recipe, 100, torch.device("cpu"))
    assert first.dtype == torch.bool and 20 < int(first.sum()) < 80  # a random half
    assert torch.equal(first, training._flipped_first(recipe, 100, torch.device("cpu")))  # from the seed
    assert training._flipped_first(replace(recipe, alternate_flip=False), 100, torch.device("cpu")) is None
    x = torch.rand(4, 3, 32, 32)
    mask = torch.tensor([True, False, True, False])
    out = augment(x, flip=True, translate=0, generator=torch.Generator(), flipped=mask)
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])
    assert train(tiny_data, recipe, tmp_path, threads=2)["epochs"] == 2


def test_lookahead_pulls_the_weights_to_their_average_late_in_training():
    model = torch.nn.Linear(2, 2)
    lookahead = training.Lookahead(model)
    with torch.no_grad():
        model.weight.fill_(1.0)
    lookahead.step(5, 100)  # before 30% of training: nothing
    assert lookahead.average is None
    lookahead.step(31, 100)  # not a 5th step
    assert lookahead.average is None
    lookahead.step(35, 100)  # starts the average
    assert torch.equal(lookahead.average[0], torch.ones(2, 2))
    with torch.no_grad():
        model.weight.fill_(3.0)
    lookahead.step(100, 100)  # rho = 0.95**5 at the end: the weights move to the average
    rho = 0.95**5
    assert torch.allclose(model.weight, torch.full((2, 2), rho * 1 + (1 - rho) * 3))
    assert torch.equal(lookahead.average[0], model.weight.detach())


def test_a_frozen_whitening_bias_never_moves(tiny_data, tmp_path):
    recipe = base_recipe(whiten_bias_epochs=0, ema=0.0)
    train(tiny_data, recipe, tmp_path, threads=2)
    trained = torch.load(tmp_path / "model.pt", weights_only=True)["weights"]
    torch.manual_seed(recipe.seed)
    initial = training.build_model_of(recipe, [0.5] * 3, [0.25] * 3, 10).state_dict()
    assert torch.equal(trained["body.whiten.bias"], initial["body.whiten.bias"])
    assert not torch.equal(trained["body.head.weight"], initial["body.head.weight"])


def test_identity_init_makes_the_first_filters_pass_their_input_through():
    model = build_model("fast", [0.5] * 3, [0.25] * 3, widths=(32, 48, 64), identity_init=True)
    conv = model.body.layers[1].conv1  # 24 -> 32 channels
    x = torch.rand(2, 24, 8, 8)
    with torch.no_grad():
        assert torch.allclose(conv(x)[:, :24], x, atol=1e-6)
    plain = build_model("fast", [0.5] * 3, [0.25] * 3, widths=(32, 48, 64))
    with torch.no_grad():
        assert not torch.allclose(plain.body.layers[1].conv1(x)[:, :24], x, atol=1e-3)


def test_precision_auto_is_bf16_where_the_cpu_has_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    assert training.trains_in_bf16("bf16", cpu) and not training.trains_in_bf16("fp32", cpu)
    assert training.trains_in_bf16("auto", torch.device("cuda"))
    for flags, bf16 in (
        ({"amx_bf16": True, "avx512_bf16": True}, True),  # Xeon 4th generation
        ({"amx_bf16": False, "avx512_bf16": True}, True),  # AMD EPYC Zen 4
        ({"amx_bf16": False, "avx512_bf16": False, "avx512_f": True}, False),  # bf16 emulated
        ({"avx2": True}, False),
    ):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda flags=flags: flags)
        assert training.trains_in_bf16("auto", cpu) is bf16, flags


def test_progressive_resizing_trains_small_crops_first(tiny_data, tmp_path):
    recipe = base_recipe(early_crop=24, early_crop_epochs=1, tta_translate=True)
    metrics = train(tiny_data, recipe, tmp_path, threads=2)
    assert len(metrics["history"]) == 2 and 0 <= metrics["test_accuracy"] <= 1
    model, _ = load_checkpoint(tmp_path / "model.pt")
    assert model.tta_translate and model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
