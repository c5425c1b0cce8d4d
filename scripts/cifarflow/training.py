"""The training loop: one uint8 tensor per split on the training device, batch-wise augmentation
there, a per-epoch checkpoint to resume from, and metrics for the MLflow hook.

Reproducibility: everything random in epoch e is drawn from generators seeded with (seed, e), so
a run resumed from epoch e's checkpoint continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
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


def trains_in_bf16(precision: str, device: torch.device) -> bool:
    """recipe.precision resolved: `auto` is bf16 on CUDA and on CPUs with AMX bf16 units (2.0x to
    2.2x the fp32 images/s measured on a 2-core Xeon); fp32 on other CPUs, which emulate bf16 slowly."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or bool(torch.cpu.get_capabilities().get("amx_bf16", False))


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


@dataclass
class TrainState:
    """What a per-epoch checkpoint holds to resume exactly."""

    epoch: int = 0  # completed epochs
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # training seconds so far (excluding evaluation)


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
    data_dir: Path, recipe: Recipe, outdir: Path, threads: int = 0, subset: Subset | None = None
) -> dict:
    """Train one experiment; write model.pt, history.csv, tensorboard/ and return metrics.

    A resume.pt in `outdir` made with the same recipe and dataset (and subset) is continued from;
    each epoch rewrites it, and a finished run removes it.

    With a `subset` (a cross-validation fold): train on its train rows of train+val, validate on its
    held-out rows, and instead of testing and writing model.pt return the held-out images' class
    probabilities under "held_out_probabilities" (float32 [len(held_out), classes], rows in the
    order of subset.held_out) besides the metrics (no test figures: the test split is not read).
    """
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
    total_steps = steps_per_epoch * recipe.epochs
    flipped_first = _flipped_first(recipe, n_train, device)

    made_by = recipe.sha256() if subset is None else f"{recipe.sha256()}/subset:{subset.sha256()}"
    resume = Resume(outdir / "resume.pt", made_by, meta["dataset_id"])
    state = resume.load(model, optimizer, ema, lookahead, device)
    writer = _tensorboard(outdir / "tensorboard", state.history)

    for epoch in range(state.epoch, recipe.epochs):
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
        steps = progress(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="step")
        for step in steps:
            done = epoch * steps_per_epoch + step
            lr = lr_at(done, total_steps, recipe)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[step * batch : (step + 1) * batch]
            # alternate_flip: the images flipped in even epochs are the others in odd ones
            flipped = None if flipped_first is None else flipped_first[idx] ^ bool(epoch % 2)
            x = to_float(images["train"][idx])
            x = augment(x, recipe.flip, recipe.translate, generator, crop, flipped)
            y = labels["train"][idx]
            with autocast:
                logits = model(x)
                loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if lookahead is not None:
                lookahead.step(done + 1, total_steps)
            if ema is not None:
                ema.update_parameters(model)
            losses[step] = loss.detach()
            correct += (logits.argmax(1) == y).sum()
            if step % 20 == 19 or step == steps_per_epoch - 1:  # one device sync every 20 steps
                _check_finite(losses, step, epoch, steps_per_epoch, total_steps, recipe)
                steps.set_postfix(
                    loss=f"{losses[step].item():.3f}",
                    img_s=f"{(step + 1) * batch / (time.perf_counter() - start):,.0f}",
                    refresh=False,
                )
        if lookahead is not None:
            lookahead.end_epoch()
        seconds = time.perf_counter() - start

        # ---- validation ----
        val_loss, val_acc = evaluate(evaluated, images["val"], labels["val"], device)
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
        state = TrainState(epoch + 1, [*state.history, row], state.seconds + seconds)
        resume.save(state, model, optimizer, ema, lookahead)  # first, so a logged epoch is resumable
        _log_epoch(row, recipe.epochs, val_loss, val_acc, seconds)
        _write_epoch(writer, row)

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
        "history": state.history,
    }


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
        return TrainState(saved["epoch"], saved["history"], saved["seconds"])

    def completed(self) -> TrainState:
        """The epochs a matching resume.pt holds (history and seconds), without loading its weights."""
        saved = self._matching(torch.device("cpu"))
        return (
            TrainState() if saved is None else TrainState(saved["epoch"], saved["history"], saved["seconds"])
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
