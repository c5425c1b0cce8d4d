"""The training loop: one uint8 tensor per split on the training device, batch-wise augmentation
there, a per-epoch checkpoint to resume from, and metrics for the MLflow hook.

Reproducibility: everything random in epoch e is drawn from generators seeded with (seed, e), so
a run resumed from epoch e's checkpoint continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .config import recipe_hash
from .dataset import load_meta, load_split
from .errors import PipelineError, TrainingDiverged, TrainingFailed
from .models import FastNet, build_model, count_parameters
from .runtime import atomic_path, progress

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


def augment(x: torch.Tensor, flip: bool, translate: int, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and translations (reflect padding) of a float batch, on its device."""
    n = x.shape[0]
    if flip:
        mask = torch.rand(n, device=x.device, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    if translate:
        # One gather: output pixel (i, j) of image k reads padded (i + dy_k, j + dx_k). No
        # per-image Python and no host sync, so the same code is fast on a GPU.
        size, t = x.shape[-1], translate
        padded = nn.functional.pad(x, (t, t, t, t), mode="reflect")
        dy, dx = torch.randint(0, 2 * t + 1, (2, n, 1), device=x.device, generator=generator)
        grid = torch.arange(size, device=x.device)
        rows, cols = (dy + grid)[:, None, :, None], (dx + grid)[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, channels, rows, cols].contiguous(memory_format=torch.channels_last)
    return x


def lr_at(step: int, total: int, recipe: dict) -> float:
    """Learning rate at optimiser step `step` of `total` (warm-up from lr/10, then the schedule)."""
    peak, warm = recipe["lr"], int(recipe["warmup"] * total)
    if step < warm:
        return peak * (0.1 + 0.9 * step / warm)
    progress_ = (step - warm) / max(1, total - warm)
    if recipe["schedule"] == "onecycle":
        return peak * (1 - progress_)
    if recipe["schedule"] == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * progress_))
    return peak


def make_optimizer(model: nn.Module, recipe: dict) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": recipe["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if recipe["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=recipe["lr"], betas=(recipe["momentum"], 0.999))
    return torch.optim.SGD(groups, lr=recipe["lr"], momentum=recipe["momentum"], nesterov=recipe["nesterov"])


def _autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing on CPU, where bf16 was measured 2.6x slower than fp32."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` in eval mode (TTA included when the model has it)."""
    model.eval()
    total_loss, correct = 0.0, 0
    autocast = _autocast(device)
    for start in range(0, len(labels), EVAL_BATCH):
        x = to_float(images[start : start + EVAL_BATCH])
        y = labels[start : start + EVAL_BATCH]
        with autocast:
            logits = model(x).float()
        total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return total_loss / len(labels), correct / len(labels)


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


def train(data_dir: Path, recipe: dict, outdir: Path, threads: int = 0) -> dict:
    """Train one experiment; write model.pt, history.csv, tensorboard/ and return metrics."""
    from torch.utils.tensorboard import SummaryWriter  # heavy import, only where needed

    if threads:
        torch.set_num_threads(threads)
    device = pick_device(recipe["device"])
    meta = load_meta(data_dir)
    torch.manual_seed(recipe["seed"])
    model = build_model(
        recipe["model"], meta["mean"], meta["std"], meta["num_classes"], recipe["widths"], recipe["tta"]
    )
    model = model.to(device, memory_format=torch.channels_last)
    log.info(
        "model %s: %s parameters on %s, %d threads",
        recipe["model"],
        f"{count_parameters(model):,}",
        device,
        torch.get_num_threads(),
    )

    splits = {name: load_split(data_dir, name) for name in ("train", "val", "test")}
    images = {name: to_device_nchw(s.images, device) for name, s in splits.items()}
    labels = {name: torch.from_numpy(np.array(s.labels)).to(device) for name, s in splits.items()}
    n_train, batch = len(labels["train"]), recipe["batch_size"]
    if n_train < batch:
        raise TrainingFailed(f"train.batch_size {batch} is larger than the training split ({n_train} images)")
    if isinstance(model.body, FastNet):
        model.body.init_whitening(model.normalize(to_float(images["train"][:5000])))

    optimizer = make_optimizer(model, recipe)
    ema = (
        AveragedModel(model, multi_avg_fn=ema_update(recipe["ema"]), use_buffers=True)
        if recipe["ema"]
        else None
    )
    steps_per_epoch = n_train // batch  # drop the last partial batch: constant batch statistics
    total_steps = steps_per_epoch * recipe["epochs"]
    state = TrainState()

    resume_path = outdir / "resume.pt"
    identity = {"recipe_sha256": recipe_hash(recipe), "dataset_id": meta["dataset_id"]}
    if resume_path.exists():
        saved = torch.load(resume_path, map_location=device, weights_only=True)
        if {k: saved.get(k) for k in identity} == identity:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            if ema is not None:
                ema.load_state_dict(saved["ema"])
            state = TrainState(saved["epoch"], saved["history"], saved["seconds"])
            log.info("resuming after epoch %d from %s", state.epoch, resume_path)
        else:
            log.info("ignoring %s: it was made with another recipe or dataset", resume_path)

    writer = SummaryWriter(log_dir=str(outdir / "tensorboard"))
    for row in state.history:  # a resumed run's events start where the interrupted one stopped
        _write_epoch(writer, row)
    autocast = _autocast(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe["label_smoothing"])
    evaluated = ema.module if ema is not None else model

    for epoch in range(state.epoch, recipe["epochs"]):
        generator = _seed_epoch(recipe["seed"], epoch, device)
        model.train()
        order = torch.randperm(n_train, device=device, generator=generator)
        losses = torch.zeros(steps_per_epoch, device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        start = time.perf_counter()
        steps = progress(
            range(steps_per_epoch),
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{recipe['epochs']}",
            unit="step",
        )
        for step in steps:
            global_step = epoch * steps_per_epoch + step
            lr = lr_at(global_step, total_steps, recipe)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[step * batch : (step + 1) * batch]
            x = augment(to_float(images["train"][idx]), recipe["flip"], recipe["translate"], generator)
            y = labels["train"][idx]
            with autocast:
                logits = model(x)
                loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            losses[step] = loss.detach()
            correct += (logits.argmax(1) == y).sum()
            if step % 20 == 19 or step == steps_per_epoch - 1:
                _check_finite(losses, step, epoch, steps_per_epoch, total_steps, recipe)
                steps.set_postfix(
                    loss=f"{losses[step].item():.3f}",
                    img_s=f"{(step + 1) * batch / (time.perf_counter() - start):,.0f}",
                    refresh=False,
                )
        seconds = time.perf_counter() - start
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
        log.info(
            "epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.4g | %.1f s, %s img/s",
            epoch + 1,
            recipe["epochs"],
            row["train_loss"],
            row["train_accuracy"],
            val_loss,
            val_acc,
            lr,
            seconds,
            f"{row['images_per_second']:,.0f}",
        )
        _write_epoch(writer, row)
        with atomic_path(resume_path) as tmp:
            torch.save(
                {
                    **identity,
                    "epoch": state.epoch,
                    "history": state.history,
                    "seconds": state.seconds,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "ema": ema.state_dict() if ema is not None else {},
                },
                tmp,
            )

    # The test split: evaluated once, here, and used for nothing else.
    test_loss, test_acc = evaluate(evaluated, images["test"], labels["test"], device)
    writer.add_scalar("test/accuracy", test_acc, state.epoch)
    writer.close()
    log.info("test: loss %.4f accuracy %.4f", test_loss, test_acc)

    checkpoint = {
        "format": 1,
        "weights": {k: v.detach().cpu() for k, v in evaluated.state_dict().items()},
        "recipe": recipe,
        "recipe_sha256": identity["recipe_sha256"],
        "class_names": meta["class_names"],
        "mean": meta["mean"],
        "std": meta["std"],
        "dataset_id": meta["dataset_id"],
    }
    with atomic_path(outdir / "model.pt") as tmp:
        torch.save(checkpoint, tmp)
    _write_history(outdir / "history.csv", state.history)
    last = state.history[-1]
    return {
        "val_accuracy": last["val_accuracy"],
        "val_loss": last["val_loss"],
        "test_accuracy": round(test_acc, 5),
        "test_loss": round(test_loss, 5),
        "train_seconds": round(state.seconds, 3),
        "images_per_second": round(steps_per_epoch * batch * state.epoch / state.seconds, 1),
        "parameters": count_parameters(model),
        "epochs": state.epoch,
        "history": state.history,
    }


def _check_finite(
    losses: torch.Tensor, step: int, epoch: int, steps_per_epoch: int, total: int, recipe: dict
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


def _write_epoch(writer, row: dict) -> None:
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "images_per_second"):
        split, _, name = key.partition("_")
        writer.add_scalar(f"{split}/{name}" if name else key, row[key], row["epoch"])


def _write_history(path: Path, history: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        out = csv.DictWriter(fh, fieldnames=list(history[0]))
        out.writeheader()
        out.writerows(history)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the trained model (eval mode, CPU) from model.pt, loaded with weights_only=True."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if "weights" not in checkpoint:  # record_failure's: a sweep trial that did not finish
        raise PipelineError(
            f"{path} holds no model: its training {checkpoint.get('outcome', 'failed')} "
            f"({checkpoint.get('reason')}). Only a training that finished can be exported or served."
        )
    recipe = checkpoint["recipe"]
    model = build_model(
        recipe["model"],
        checkpoint["mean"],
        checkpoint["std"],
        len(checkpoint["class_names"]),
        recipe["widths"],
        recipe["tta"],
    )
    model.load_state_dict(checkpoint["weights"])
    return model.eval(), checkpoint


# history.csv's columns, as train() writes them
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


def record_failure(outdir: Path, recipe: dict, dataset_id: str, error: TrainingFailed) -> dict:
    """The outputs of a sweep trial whose training stopped (diverged, or failed): they say so instead
    of holding a model, so that its job succeeds and the sweep's ranking lists it with the reason.

    model.pt holds no weights (load_checkpoint refuses it, naming the reason); history.csv and the
    returned metrics hold the epochs completed before, from resume.pt, which is then removed:
    the same recipe would stop the same way, so there is nothing to resume.
    """
    resume_path = outdir / "resume.pt"
    history, seconds = [], 0.0
    if resume_path.exists():
        saved = torch.load(resume_path, map_location="cpu", weights_only=True)
        if (saved.get("recipe_sha256"), saved.get("dataset_id")) == (recipe_hash(recipe), dataset_id):
            history, seconds = saved["history"], saved["seconds"]
    reason = str(error)
    with atomic_path(outdir / "model.pt") as tmp:
        marker = {"format": 1, "outcome": error.outcome, "reason": reason, "recipe": recipe}
        torch.save({**marker, "recipe_sha256": recipe_hash(recipe), "dataset_id": dataset_id}, tmp)
    with atomic_path(outdir / "history.csv") as tmp, open(tmp, "w", newline="") as fh:
        out = csv.DictWriter(fh, fieldnames=list(history[0]) if history else HISTORY_COLUMNS)
        out.writeheader()
        out.writerows(history)
    (outdir / "tensorboard").mkdir(parents=True, exist_ok=True)
    resume_path.unlink(missing_ok=True)
    log.warning("training %s: %s; recorded as this trial's outcome", error.outcome, reason)
    return {
        "outcome": error.outcome,
        "reason": reason,
        "epochs": len(history),
        "train_seconds": round(seconds, 3),
        "history": history,
    }
