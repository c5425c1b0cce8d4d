"""The training loop: one uint8 tensor per split on the training device, batch-wise augmentation
there, a per-epoch checkpoint to resume from, and metrics for the MLflow hook.

Reproducibility: everything random in epoch e is drawn from generators seeded with (seed, e), so
a run resumed from epoch e's checkpoint continues exactly as an uninterrupted one would.

With recipe.budget_s, a probe on a throwaway copy of the model measures this machine's costs
(measure_costs) and plan_epochs chooses the epochs that fit; the run is then exactly the run of
that many epochs, and resume.pt keeps the choice.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import logging
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .checkpoint import build_model_of, save_checkpoint, save_failure
from .config import Recipe
from .dataset import Split, load_meta, load_split
from .errors import PipelineError, TrainingDiverged, TrainingFailed
from .models import Classifier, FastNet, count_parameters
from .runtime import atomic_path, progress

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger("cifarflow")

EVAL_BATCH = 1024


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise PipelineError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def to_device_nchw(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC (as stored) -> uint8 NCHW channels_last tensor on `device` (same bytes order)."""
    tensor = torch.from_numpy(np.array(images)).to(device)  # a writable in-memory copy of the memmap
    return tensor.permute(0, 3, 1, 2)  # a view: NHWC memory is exactly channels_last NCHW


def to_float(batch: torch.Tensor) -> torch.Tensor:
    return batch.float().div_(255).contiguous(memory_format=torch.channels_last)


def augment(
    x: torch.Tensor,
    flip: bool,
    translate: int,
    generator: torch.Generator,
    crop: int | None = None,
    flipped: torch.Tensor | None = None,
) -> torch.Tensor:
    """Horizontal flips (random, or where the boolean mask `flipped` says) and random translations
    (reflect padding) of a float batch, on its device; with `crop`, a random crop of that size out
    of the translated image (progressive resizing)."""
    n, size = x.shape[0], x.shape[-1]
    if flip and flipped is None:
        flipped = torch.rand(n, device=x.device, generator=generator) < 0.5
    if flip:
        x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
    crop = crop or size
    if translate or crop != size:
        # One gather: output pixel (i, j) of image k reads padded (i + dy_k, j + dx_k). No
        # per-image Python and no host sync, so the same code is fast on a GPU.
        t = translate
        padded = nn.functional.pad(x, (t, t, t, t), mode="reflect") if t else x
        dy, dx = torch.randint(0, size + 2 * t - crop + 1, (2, n, 1), device=x.device, generator=generator)
        grid = torch.arange(crop, device=x.device)
        rows, cols = (dy + grid)[:, None, :, None], (dx + grid)[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, channels, rows, cols].contiguous(memory_format=torch.channels_last)
    return x


def lr_at(step: int, total: int, recipe: Recipe) -> float:
    """Learning rate at optimiser step `step` of `total` (warm-up from lr/10, then the schedule)."""
    peak, warm = recipe.lr, int(recipe.warmup * total)
    if step < warm:
        return peak * (0.1 + 0.9 * step / warm)
    progress_ = (step - warm) / max(1, total - warm)
    if recipe.schedule == "onecycle":
        return peak * (1 - progress_)
    if recipe.schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * progress_))
    return peak


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, betas=(recipe.momentum, 0.999))
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov)


# CPU features whose bf16 dot products oneDNN's convolutions use natively: AMX tiles (Xeon 4th
# generation on) and AVX-512 BF16 (e.g. AMD EPYC Zen 4). Elsewhere bf16 is emulated, and slower.
NATIVE_BF16 = ("amx_bf16", "avx512_bf16")


def trains_in_bf16(precision: str, device: torch.device) -> bool:
    """recipe.precision resolved: `auto` is bf16 on CUDA and on CPUs with native bf16 dot products
    (NATIVE_BF16; docs/training.md has the speed-ups measured), fp32 on other CPUs."""
    if precision != "auto":
        return precision == "bf16"
    capabilities = torch.cpu.get_capabilities()
    return device.type == "cuda" or any(capabilities.get(flag, False) for flag in NATIVE_BF16)


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` in eval mode (TTA included when the model has it)."""
    model.eval()
    total_loss, correct = 0.0, 0
    autocast = _autocast(device, device.type == "cuda")  # fp32 on CPU: the exported graph's arithmetic
    for start in range(0, len(labels), EVAL_BATCH):
        x = to_float(images[start : start + EVAL_BATCH])
        y = labels[start : start + EVAL_BATCH]
        with autocast:
            logits = model(x).float()
        total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return total_loss / len(labels), correct / len(labels)


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """Softmax class probabilities [N, classes] (float32) of `model` in eval mode, as evaluate scores."""
    model.eval()
    autocast = _autocast(device, device.type == "cuda")
    parts = []
    for start in range(0, len(images), EVAL_BATCH):
        with autocast:
            logits = model(to_float(images[start : start + EVAL_BATCH])).float()
        parts.append(torch.softmax(logits, dim=1).cpu().numpy())
    return np.concatenate(parts).astype(np.float32)


def ema_update(decay: float):
    """EMA with warm-up: decay min(decay, (1+n)/(10+n)) after n updates, so that short runs are
    not dominated by the initial weights."""

    def update(
        ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor
    ) -> None:
        n = float(num_averaged)
        pairs = [(e, p) for e, p in zip(ema_params, params, strict=True) if e.is_floating_point()]
        if pairs:  # AveragedModel calls this once per (device, dtype) group
            torch._foreach_lerp_(
                [e for e, _ in pairs], [p for _, p in pairs], 1 - min(decay, (1 + n) / (10 + n))
            )
        for e, p in zip(ema_params, params, strict=True):
            if not e.is_floating_point():  # BatchNorm's step counters
                e.copy_(p)

    return update


class Lookahead:
    """airbench94's lookahead: every 5 steps from 30% of training on, the weights and BatchNorm
    statistics move to an exponential average of themselves (decay 0.95 per step, times the cube
    of the training progress: weak at first, strong at the end), and the average replaces them.
    After each epoch the weights are set to the average once more."""

    EVERY, DECAY, START = 5, 0.95, 0.3

    def __init__(self, model: nn.Module):
        self.tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.average: list[torch.Tensor] | None = None

    @torch.no_grad()
    def step(self, step: int, total: int) -> None:
        """After optimiser step number `step` (1-based) of `total`."""
        if step % self.EVERY or step < self.START * total:
            return
        if self.average is None:
            self.average = [t.detach().clone() for t in self.tensors]
            return
        rho = self.DECAY**self.EVERY * (step / total) ** 3
        torch._foreach_lerp_(self.average, self.tensors, 1 - rho)
        torch._foreach_copy_(self.tensors, self.average)

    @torch.no_grad()
    def end_epoch(self) -> None:
        if self.average is not None:
            torch._foreach_copy_(self.tensors, self.average)


@dataclass(frozen=True)
class TrainStep:
    """One optimiser step on a prepared batch: forward, loss, backward, update, lookahead and EMA.
    The training loop and the budget's throughput probe (measure_costs) run this same code."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    autocast: contextlib.AbstractContextManager
    ema: AveragedModel | None
    lookahead: Lookahead | None

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, lr: float, done: int, total: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of optimiser step number `done` (0-based) of `total`, at rate `lr`."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.autocast:
            logits = self.model(x)
            loss = self.criterion(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.lookahead is not None:
            self.lookahead.step(done + 1, total)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return loss, logits


# ---- training to a time budget (train.budget_s) -------------------------------------------------

PROBE_WARMUP = 3  # untimed first steps: one-off costs (kernel selection, allocations) are paid here
PROBE_STEPS = 10  # timed steps: the steady per-step cost
SAFETY = 1.05  # predicted per-epoch and final costs are planned 5% larger: the probe is short


@dataclass(frozen=True)
class Costs:
    """What one training run pays on this machine, measured by measure_costs."""

    step_seconds: float  # one training step (batch preparation, forward, backward, update, EMA, lookahead)
    eval_image_seconds: float  # evaluating one image (the evaluated model: TTA views included)
    save_seconds: float  # writing resume.pt once


@dataclass(frozen=True)
class BudgetPlan:
    """The epochs chosen for train.budget_s, and what they were chosen from (resume.pt keeps it)."""

    budget_s: float
    epochs: int  # trained: min(fit_epochs, train.epochs)
    fit_epochs: int  # the epochs that fit the budget
    images_per_second: float  # training throughput measured by the probe
    precision: str  # the training arithmetic it was measured with
    spent_s: float  # seconds gone before the first epoch: loading, building the model, the probe
    epoch_s: float  # predicted seconds of one epoch: its steps, validation and resume.pt
    final_s: float  # predicted seconds after the last epoch: test evaluation and model.pt
    predicted_s: float  # spent_s + epochs * epoch_s + final_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_costs(
    model: Classifier,
    recipe: Recipe,
    images: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor],
    device: torch.device,
    outdir: Path,
    clock=time.perf_counter,
) -> Costs:
    """Time a training step, the evaluation of an image and a resume.pt on a throwaway copy of the
    freshly initialised model (its own optimiser, EMA and lookahead, random batches of the training
    split from a generator no epoch uses). The real run is untouched: it trains exactly what
    `epochs: <the chosen number>` would train, bit for bit (every epoch reseeds its randomness).

    The probe is a miniature run of PROBE_WARMUP + PROBE_STEPS steps with the recipe's schedule,
    so lookahead acts in the same share of steps as in a real run; its steps are full-size and with
    the whitening bias trained, the dearest kind (early_crop epochs and later ones cost less)."""
    probe = copy.deepcopy(model)
    optimizer = make_optimizer(probe, recipe)
    ema = AveragedModel(probe, multi_avg_fn=ema_update(recipe.ema), use_buffers=True) if recipe.ema else None
    lookahead = Lookahead(probe) if recipe.lookahead else None
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    autocast = _autocast(device, trains_in_bf16(recipe.precision, device))
    step = TrainStep(probe, optimizer, criterion, autocast, ema, lookahead)
    if isinstance(probe.body, FastNet):
        probe.body.whiten.bias.requires_grad_(recipe.whiten_bias_epochs > 0)
    generator = torch.Generator(device=device)
    generator.manual_seed(recipe.seed * 100_003 - 2)  # a stream no epoch (nor alternate_flip) uses
    n_train, total = len(labels["train"]), PROBE_WARMUP + PROBE_STEPS
    probe.train()
    for done in range(total):
        if done == PROBE_WARMUP:
            _sync(device)
            start = clock()
        idx = torch.randint(0, n_train, (recipe.batch_size,), device=device, generator=generator)
        x = augment(to_float(images["train"][idx]), recipe.flip, recipe.translate, generator)
        step(x, labels["train"][idx], lr_at(done, total, recipe), done, total)
    _sync(device)
    step_seconds = (clock() - start) / PROBE_STEPS

    evaluated = ema.module if ema is not None else probe
    n = min(len(labels["val"]), EVAL_BATCH)
    evaluate(evaluated, images["val"][: min(n, 64)], labels["val"][: min(n, 64)], device)  # its one-off costs
    start = clock()
    evaluate(evaluated, images["val"][:n], labels["val"][:n], device)  # .item() syncs
    eval_image_seconds = (clock() - start) / n

    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=outdir, prefix=".budget-probe-") as tmp:
        start = clock()
        Resume(Path(tmp) / "resume.pt", recipe.sha256(), "probe").save(
            TrainState(), probe, optimizer, ema, lookahead
        )
        save_seconds = clock() - start
    return Costs(step_seconds, eval_image_seconds, save_seconds)


def plan_epochs(
    recipe: Recipe,
    costs: Costs,
    spent_s: float,
    steps_per_epoch: int,
    n_val: int,
    n_test: int,
    precision: str,
) -> BudgetPlan:
    """The most epochs (at most recipe.epochs) whose predicted time, with `spent_s` already gone,
    fits recipe.budget_s. TrainingFailed when not even one epoch fits: a budget is a promise, and
    training past it is no answer to it."""
    budget = float(recipe.budget_s)
    epoch_s = SAFETY * (
        steps_per_epoch * costs.step_seconds + n_val * costs.eval_image_seconds + costs.save_seconds
    )
    final_s = SAFETY * (n_test * costs.eval_image_seconds + costs.save_seconds)
    images_per_second = recipe.batch_size / costs.step_seconds
    fit = max(0, math.floor((budget - spent_s - final_s) / epoch_s))
    if fit < 1:
        need = math.ceil(spent_s + epoch_s + final_s)
        raise TrainingFailed(
            f"train.budget_s = {budget:g} s is too short for one epoch on this machine: {spent_s:.1f} s "
            "went before the first epoch (starting, loading the data, measuring), one epoch with its "
            f"validation is predicted at {epoch_s:.1f} s ({images_per_second:,.0f} training images/s "
            f"measured, {precision}), and the test evaluation and saving at {final_s:.1f} s. Raise "
            f"train.budget_s to at least {need}, or set it to null and give train.epochs."
        )
    epochs = min(fit, recipe.epochs)
    plan = BudgetPlan(
        budget_s=budget,
        epochs=epochs,
        fit_epochs=fit,
        images_per_second=round(images_per_second, 1),
        precision=precision,
        spent_s=round(spent_s, 3),
        epoch_s=round(epoch_s, 3),
        final_s=round(final_s, 3),
        predicted_s=round(spent_s + epochs * epoch_s + final_s, 3),
    )
    limit = f"at most train.epochs = {recipe.epochs}" if fit > recipe.epochs else "all that fit"
    log.info(
        "time budget %g s: %d epochs (%s; %d fit) at %s training images/s measured (%s); predicted %.1f s "
        "(%.1f s so far, %.1f s an epoch with validation, %.1f s for the test and saving)",
        budget,
        epochs,
        limit,
        fit,
        f"{images_per_second:,.0f}",
        precision,
        plan.predicted_s,
        spent_s,
        epoch_s,
        final_s,
    )
    return plan


def _budget_metrics(plan: dict, wall_s: float) -> dict:
    """metrics.json's budget figures (and so the MLflow run's metrics): the plan and the wall time."""
    if wall_s > plan["budget_s"]:
        log.warning(
            "training took %.1f s, over its budget of %g s (predicted %.1f s): this machine ran slower "
            "than the probe measured (other load?)",
            wall_s,
            plan["budget_s"],
            plan["predicted_s"],
        )
    return {
        "budget_s": plan["budget_s"],
        "budget_fit_epochs": plan["fit_epochs"],
        "budget_images_per_second": plan["images_per_second"],
        "budget_predicted_seconds": plan["predicted_s"],
        "wall_seconds": round(wall_s, 3),
    }


@dataclass
class TrainState:
    """What a per-epoch checkpoint holds to resume exactly."""

    epoch: int = 0  # completed epochs
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # training seconds so far (excluding evaluation)
    budget: dict | None = None  # with train.budget_s: the BudgetPlan chosen when the run started


def _seed_epoch(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """Seed everything random in `epoch` from (seed, epoch): the global RNG (dropout) and the
    returned generator (shuffling, augmentation). This is what makes a resumed run exact."""
    epoch_seed = seed * 100_003 + epoch
    torch.manual_seed(epoch_seed)
    generator = torch.Generator(device=device)
    generator.manual_seed(epoch_seed)
    return generator


@dataclass(frozen=True)
class Subset:
    """Cross-validation: train on the images `train` of train+val pooled (train's rows first, then
    val's: row len(train) + i is val image i) and validate on `held_out`, whose class probabilities
    are the product (label_issues: confident learning on out-of-fold probabilities)."""

    train: np.ndarray  # int64 rows of the pool
    held_out: np.ndarray

    def sha256(self) -> str:
        """Identifies the subset, so that a fold's resume.pt is never continued on another one."""
        digest = hashlib.sha256(np.ascontiguousarray(self.train, dtype=np.int64).tobytes())
        digest.update(b"|" + np.ascontiguousarray(self.held_out, dtype=np.int64).tobytes())
        return digest.hexdigest()


def _load_splits(
    data_dir: Path, device: torch.device, subset: Subset | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Images (uint8 NCHW, channels_last) and labels of every split, on `device`; with a subset,
    "train" and "val" are its parts of train+val pooled, and there is no "test"."""
    names = ("train", "val", "test") if subset is None else ("train", "val")
    splits = {name: load_split(data_dir, name) for name in names}
    if subset is not None:
        pool = Split(
            np.concatenate([splits["train"].images, splits["val"].images]),
            np.concatenate([splits["train"].labels, splits["val"].labels]),
        )
        splits = {
            "train": Split(pool.images[subset.train], pool.labels[subset.train]),
            "val": Split(pool.images[subset.held_out], pool.labels[subset.held_out]),
        }
    images = {name: to_device_nchw(s.images, device) for name, s in splits.items()}
    labels = {name: torch.from_numpy(np.array(s.labels)).to(device) for name, s in splits.items()}
    return images, labels


def _make_model(recipe: Recipe, meta: dict, train_images: torch.Tensor, device: torch.device) -> Classifier:
    """The recipe's network on `device`, initialised from its seed (and fast's whitening layer from
    the first 5,000 training images)."""
    torch.manual_seed(recipe.seed)
    model = build_model_of(recipe, meta["mean"], meta["std"], meta["num_classes"])
    model = model.to(device, memory_format=torch.channels_last)
    if isinstance(model.body, FastNet):
        model.body.init_whitening(model.normalize(to_float(train_images[:5000])))
    log.info(
        "model %s: %s parameters on %s, %d threads",
        recipe.model,
        f"{count_parameters(model):,}",
        device,
        torch.get_num_threads(),
    )
    return model


def train(
    data_dir: Path,
    recipe: Recipe,
    outdir: Path,
    threads: int = 0,
    started: float | None = None,
    stop_after: int | None = None,
    subset: Subset | None = None,
) -> dict:
    """Train one experiment; write model.pt, history.csv, tensorboard/ and return metrics.

    A resume.pt in `outdir` made with the same recipe and dataset (and subset) is continued from;
    each epoch rewrites it, and a finished run removes it. With recipe.budget_s, the epochs are those
    that fit the budget (plan_epochs), counted from `started` (a time.time(): the job's start) or
    from now.

    `stop_after` E below the epochs trained: a rung of successive halving. Train up to epoch E of
    the full schedule (the learning rate follows all the epochs), keep resume.pt for the next rung,
    and return the validation figures at epoch E (no test split, no model.pt, history.csv or
    tensorboard/). The rungs of a trial that goes on to the end thus make the same model, byte for
    byte, as one uninterrupted training. A resume.pt already past E (the rung run again) gives
    epoch E's figures from its history, training nothing.

    With a `subset` (a cross-validation fold): train on its train rows of train+val, validate on its
    held-out rows, and instead of testing and writing model.pt return the held-out images' class
    probabilities under "held_out_probabilities" (float32 [len(held_out), classes], rows in the
    order of subset.held_out) besides the metrics (no test figures: the test split is not read).
    """
    if stop_after is not None and not 1 <= stop_after <= recipe.epochs:
        raise PipelineError(f"stop after epoch {stop_after}: the recipe trains epochs 1 to {recipe.epochs}")
    out = _train_until(data_dir, recipe, outdir, threads, started, stop_after, subset)
    return _rung_figures(out.history, stop_after) if isinstance(out, TrainState) else out


def _train_until(
    data_dir: Path,
    recipe: Recipe,
    outdir: Path,
    threads: int,
    started: float | None,
    stop_after: int | None,
    subset: Subset | None,
) -> dict | TrainState:
    """train()'s loop up to epoch `stop_after` (or the end): the metrics at the end of the schedule,
    else the state."""
    wall_start = time.perf_counter()
    before = max(0.0, time.time() - started) if started is not None else 0.0  # the job's time before train()
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(recipe.device)
    meta = load_meta(data_dir)
    images, labels = _load_splits(data_dir, device, subset)
    n_train, batch = len(labels["train"]), recipe.batch_size
    if n_train < batch:
        raise TrainingFailed(f"train.batch_size {batch} is larger than the training split ({n_train} images)")
    model = _make_model(recipe, meta, images["train"], device)
    optimizer = make_optimizer(model, recipe)
    ema = AveragedModel(model, multi_avg_fn=ema_update(recipe.ema), use_buffers=True) if recipe.ema else None
    lookahead = Lookahead(model) if recipe.lookahead else None
    evaluated = ema.module if ema is not None else model  # what is validated, tested and saved
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    bf16 = trains_in_bf16(recipe.precision, device)
    autocast = _autocast(device, bf16)
    log.info("training arithmetic: %s", "bf16 autocast" if bf16 else "fp32")
    steps_per_epoch = n_train // batch  # drop the last partial batch: constant batch statistics
    flipped_first = _flipped_first(recipe, n_train, device)

    made_by = recipe.sha256() if subset is None else f"{recipe.sha256()}/subset:{subset.sha256()}"
    resume = Resume(outdir / "resume.pt", made_by, meta["dataset_id"])
    state = resume.load(model, optimizer, ema, lookahead, device)
    if recipe.budget_s is not None and state.budget is None:  # a fresh run; a resumed one keeps its plan
        costs = measure_costs(model, recipe, images, labels, device, outdir)
        plan = plan_epochs(
            recipe,
            costs,
            spent_s=before + time.perf_counter() - wall_start,
            steps_per_epoch=steps_per_epoch,
            n_val=len(labels["val"]),
            n_test=len(labels.get("test", ())),  # a fold tests nothing
            precision="bf16" if bf16 else "fp32",
        )
        state = replace(state, budget=asdict(plan))
    epochs = recipe.epochs if state.budget is None else state.budget["epochs"]
    total_steps = steps_per_epoch * epochs
    until = epochs if stop_after is None else stop_after
    if until > epochs:
        raise PipelineError(f"stop after epoch {until}: this training's schedule has {epochs} epochs")
    writer = _tensorboard(outdir / "tensorboard", state.history) if until == epochs else None
    step = TrainStep(model, optimizer, criterion, autocast, ema, lookahead)

    for epoch in range(state.epoch, until):
        # ---- training ----
        generator = _seed_epoch(recipe.seed, epoch, device)
        model.train()
        order = torch.randperm(n_train, device=device, generator=generator)
        crop = recipe.early_crop if epoch < recipe.early_crop_epochs else None
        if isinstance(model.body, FastNet):  # a frozen first layer also spares the backward pass into it
            model.body.whiten.bias.requires_grad_(epoch < recipe.whiten_bias_epochs)
        losses = torch.zeros(steps_per_epoch, device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        start = time.perf_counter()
        steps = progress(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", unit="step")
        for i in steps:
            done = epoch * steps_per_epoch + i
            lr = lr_at(done, total_steps, recipe)
            idx = order[i * batch : (i + 1) * batch]
            # alternate_flip: the images flipped in even epochs are the others in odd ones
            flipped = None if flipped_first is None else flipped_first[idx] ^ bool(epoch % 2)
            x = to_float(images["train"][idx])
            x = augment(x, recipe.flip, recipe.translate, generator, crop, flipped)
            y = labels["train"][idx]
            loss, logits = step(x, y, lr, done, total_steps)
            losses[i] = loss.detach()
            correct += (logits.argmax(1) == y).sum()
            if i % 20 == 19 or i == steps_per_epoch - 1:  # one device sync every 20 steps
                _check_finite(losses, i, epoch, steps_per_epoch, total_steps, recipe)
                steps.set_postfix(
                    loss=f"{losses[i].item():.3f}",
                    img_s=f"{(i + 1) * batch / (time.perf_counter() - start):,.0f}",
                    refresh=False,
                )
        if lookahead is not None:
            lookahead.end_epoch()
        seconds = time.perf_counter() - start

        # ---- validation ----
        val_loss, val_acc = evaluate(evaluated, images["val"], labels["val"], device)
        if not math.isfinite(val_loss):  # finite training losses, weights too large to evaluate
            raise TrainingDiverged(
                f"training diverged: validation loss is {val_loss} after epoch {epoch + 1} (training "
                f"loss {losses.mean().item():.4g}, lr {lr:.4g}). Lower train.lr or raise train.warmup, "
                "then rerun."
            )
        row = {
            "epoch": epoch + 1,
            "train_loss": round(losses.mean().item(), 5),
            "train_accuracy": round(correct.item() / (steps_per_epoch * batch), 5),
            "val_loss": round(val_loss, 5),
            "val_accuracy": round(val_acc, 5),
            "lr": lr,
            "seconds": round(seconds, 3),
            "images_per_second": round(steps_per_epoch * batch / seconds, 1),
        }
        state = TrainState(epoch + 1, [*state.history, row], state.seconds + seconds, state.budget)
        resume.save(state, model, optimizer, ema, lookahead)  # first, so a logged epoch is resumable
        _log_epoch(row, epochs, val_loss, val_acc, seconds)
        if writer is not None:
            _write_epoch(writer, row)
    if writer is None:  # a rung: resume.pt holds the state for the next one
        return state

    if subset is not None:  # a fold: its product is the held-out images' probabilities
        writer.close()
        held_out = predict_probabilities(evaluated, images["val"], device)
        _write_history(outdir / "history.csv", state.history)
        resume.remove()
        last = state.history[-1]
        return {
            "val_accuracy": last["val_accuracy"],
            "val_loss": last["val_loss"],
            "train_images": len(subset.train),
            "held_out_images": len(subset.held_out),
            "train_seconds": round(state.seconds, 3),
            "images_per_second": round(steps_per_epoch * batch * state.epoch / state.seconds, 1),
            "precision": "bf16" if bf16 else "fp32",
            "epochs": state.epoch,
            "history": state.history,
            "held_out_probabilities": held_out,
        }

    # ---- test: the test split is evaluated once, here, and used for nothing else ----
    test_loss, test_acc = evaluate(evaluated, images["test"], labels["test"], device)
    writer.add_scalar("test/accuracy", test_acc, state.epoch)
    writer.close()
    log.info("test: loss %.4f accuracy %.4f", test_loss, test_acc)

    save_checkpoint(outdir / "model.pt", evaluated, recipe, meta)
    _write_history(outdir / "history.csv", state.history)
    resume.remove()  # finished: nothing left to resume
    last = state.history[-1]
    wall_s = before + time.perf_counter() - wall_start
    budget = {} if state.budget is None else _budget_metrics(state.budget, wall_s)
    return {
        "val_accuracy": last["val_accuracy"],
        "val_loss": last["val_loss"],
        "test_accuracy": round(test_acc, 5),
        "test_loss": round(test_loss, 5),
        "train_seconds": round(state.seconds, 3),
        "images_per_second": round(steps_per_epoch * batch * state.epoch / state.seconds, 1),
        "parameters": count_parameters(model),
        "precision": "bf16" if bf16 else "fp32",
        "epochs": state.epoch,
        **budget,
        "history": state.history,
    }


def _rung_figures(history: list[dict], epochs: int) -> dict:
    """A rung's metrics: the validation figures at epoch `epochs`, and the epochs up to it."""
    rows = history[:epochs]
    if len(rows) < epochs:
        raise PipelineError(f"resume.pt holds {len(rows)} epochs; the rung needed {epochs}")
    return {
        "val_accuracy": rows[-1]["val_accuracy"],
        "val_loss": rows[-1]["val_loss"],
        "train_seconds": round(sum(row["seconds"] for row in rows), 3),
        "epochs": epochs,
        "epoch_history": rows,
    }


def record_stop(
    outdir: Path, recipe: Recipe, dataset_id: str, rung: Mapping, outcome: str, reason: str
) -> dict:
    """The outputs of a halving trial that stopped after a rung (its `rung` metrics): like
    record_failure's, model.pt without weights and the outcome (`stopped`, or the rung's own, e.g.
    diverged) with its reason; history.csv and the metrics hold the epochs it trained, and the
    validation figures where it stopped. resume.pt is removed: nothing resumes it.
    """
    history = list(rung.get("epoch_history") or [])
    save_failure(outdir / "model.pt", recipe, dataset_id, outcome, reason)
    with atomic_path(outdir / "history.csv") as tmp, open(tmp, "w", newline="") as fh:
        out = csv.DictWriter(fh, fieldnames=list(history[0]) if history else HISTORY_COLUMNS)
        out.writeheader()
        out.writerows(history)
    (outdir / "tensorboard").mkdir(parents=True, exist_ok=True)
    Resume(outdir / "resume.pt", recipe.sha256(), dataset_id).remove()
    log.info("recorded as this trial's outcome (%s): %s", outcome, reason)
    metrics = {"outcome": outcome, "reason": reason, "epochs": rung.get("epochs", 0), "history": history}
    for key in ("val_accuracy", "val_loss", "train_seconds"):
        if rung.get(key) is not None:
            metrics[key] = rung[key]
    return metrics


def _flipped_first(recipe: Recipe, n_train: int, device: torch.device) -> torch.Tensor | None:
    """alternate_flip: which training images are flipped in even epochs (a fixed random half, drawn
    from the seed alone so that a resumed run draws the same); None for random flips."""
    if not (recipe.flip and recipe.alternate_flip):
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(recipe.seed * 100_003 - 1)  # a stream no epoch uses
    return torch.rand(n_train, device=device, generator=generator) < 0.5


@dataclass(frozen=True)
class Resume:
    """The per-epoch checkpoint (outdir/resume.pt): everything a killed run needs to continue as
    if it had not stopped. It is only resumed from when made with the same recipe and dataset."""

    path: Path
    recipe_sha256: str
    dataset_id: str

    def load(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        ema: AveragedModel | None,
        lookahead: Lookahead | None,
        device: torch.device,
    ) -> TrainState:
        """Restore model, optimiser and EMA in place from a matching resume.pt; a fresh state if none."""
        saved = self._matching(device)
        if saved is None:
            return TrainState()
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        if lookahead is not None and saved.get("lookahead") is not None:
            lookahead.average = saved["lookahead"]
        log.info("resuming after epoch %d from %s", saved["epoch"], self.path)
        return TrainState(saved["epoch"], saved["history"], saved["seconds"], saved.get("budget"))

    def completed(self) -> TrainState:
        """The epochs a matching resume.pt holds (history and seconds), without loading its weights."""
        saved = self._matching(torch.device("cpu"))
        return (
            TrainState()
            if saved is None
            else TrainState(saved["epoch"], saved["history"], saved["seconds"], saved.get("budget"))
        )

    def _matching(self, device: torch.device) -> dict | None:
        if not self.path.exists():
            return None
        saved = torch.load(self.path, map_location=device, weights_only=True)
        if (saved.get("recipe_sha256"), saved.get("dataset_id")) != (self.recipe_sha256, self.dataset_id):
            log.info("ignoring %s: it was made with another recipe or dataset", self.path)
            return None
        return saved

    def save(
        self,
        state: TrainState,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        ema: AveragedModel | None,
        lookahead: Lookahead | None,
    ) -> None:
        with atomic_path(self.path) as tmp:  # a kill while saving leaves the previous epoch's
            torch.save(
                {
                    "recipe_sha256": self.recipe_sha256,
                    "dataset_id": self.dataset_id,
                    "epoch": state.epoch,
                    "history": state.history,
                    "seconds": state.seconds,
                    "budget": state.budget,  # the epochs chosen for train.budget_s: kept, never re-measured
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "ema": ema.state_dict() if ema is not None else {},
                    "lookahead": lookahead.average if lookahead is not None else None,
                },
                tmp,
            )

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _log_epoch(row: dict, epochs: int, val_loss: float, val_acc: float, seconds: float) -> None:
    log.info(
        "epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.4g | %.1f s, %s img/s",
        row["epoch"],
        epochs,
        row["train_loss"],
        row["train_accuracy"],
        val_loss,
        val_acc,
        row["lr"],
        seconds,
        f"{row['images_per_second']:,.0f}",
    )


def _check_finite(
    losses: torch.Tensor, step: int, epoch: int, steps_per_epoch: int, total: int, recipe: Recipe
) -> None:
    """Checked every few steps (one device sync), reporting the first bad step exactly."""
    window = losses[: step + 1]
    bad = (~torch.isfinite(window)).nonzero()
    if len(bad):
        first = int(bad[0])
        lr = lr_at(epoch * steps_per_epoch + first, total, recipe)
        raise TrainingDiverged(
            f"training diverged: loss is {window[first].item()} at epoch {epoch + 1}, step {first + 1} "
            f"(lr {lr:.4g}). Lower train.lr or raise train.warmup, then rerun."
        )


def _tensorboard(log_dir: Path, history: list[dict]) -> SummaryWriter:
    """The run's event writer; a resumed run's events start where the interrupted one stopped."""
    from torch.utils.tensorboard import SummaryWriter  # heavy import, only where needed

    writer = SummaryWriter(log_dir=str(log_dir))
    for row in history:
        _write_epoch(writer, row)
    return writer


def _write_epoch(writer: SummaryWriter, row: dict) -> None:
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "images_per_second"):
        split, _, name = key.partition("_")
        writer.add_scalar(f"{split}/{name}" if name else key, row[key], row["epoch"])


def _write_history(path: Path, history: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        out = csv.DictWriter(fh, fieldnames=list(history[0]))
        out.writeheader()
        out.writerows(history)


def record_failure(outdir: Path, recipe: Recipe, dataset_id: str, error: TrainingFailed) -> dict:
    """The outputs of a sweep trial whose training stopped (diverged, or failed): they say so instead
    of holding a model, so that its job succeeds and the sweep's ranking lists it with the reason.

    model.pt holds no weights (load_checkpoint refuses it, naming the reason); history.csv and the
    returned metrics hold the epochs completed before, from resume.pt, which is then removed:
    the same recipe would stop the same way, so there is nothing to resume.
    """
    resume = Resume(outdir / "resume.pt", recipe.sha256(), dataset_id)
    state = resume.completed()
    reason = str(error)
    save_failure(outdir / "model.pt", recipe, dataset_id, error.outcome, reason)
    with atomic_path(outdir / "history.csv") as tmp, open(tmp, "w", newline="") as fh:
        out = csv.DictWriter(fh, fieldnames=list(state.history[0]) if state.history else HISTORY_COLUMNS)
        out.writeheader()
        out.writerows(state.history)
    (outdir / "tensorboard").mkdir(parents=True, exist_ok=True)
    resume.remove()
    log.warning("recorded as this trial's outcome (%s): %s", error.outcome, reason)
    metrics = {"outcome": error.outcome, "reason": reason, "epochs": state.epoch, "history": state.history}
    if state.epoch:  # the time of the epochs that completed (that of the one that stopped is not kept)
        metrics["train_seconds"] = round(state.seconds, 3)
    return metrics


# history.csv's columns, as train() writes them (record_failure's when no epoch completed)
HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "seconds",
    "images_per_second",
]
