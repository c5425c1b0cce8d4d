"""airbench94's published recipe (Keller Jordan, github.com/KellerJordan/cifar10-airbench,
airbench94.py: 94% on CIFAR-10 in 3.83 s on an A100), re-implemented here for CPUs so that
bench/compare_recipes.py can run it beside ours on the same data and machine.

Faithful to the published hyperparameters and algorithm: the 2x2 patch-whitening conv (24 filters
from the eigenvectors of 5,000 training images' patches, eps 5e-4; its bias trained for the first
3 epochs), three conv groups of widths 64/256/256 (3x3 convs without bias, Dirac-initialised,
max-pool, BatchNorm with eps 1e-12 and momentum 0.6 in airbench's convention, weights frozen, GELU),
a 3x3 max-pool, a bias-free linear head scaled by 1/9; batch 1024 (last partial batch dropped),
Nesterov SGD with momentum 0.85, lr 11.5 and weight decay 0.0153 per 1024 examples in airbench's
decoupled parametrisation (BatchNorm biases at 64x the learning rate), the summed label-smoothed
(0.2) cross-entropy, a triangular schedule (0.2 -> 1 at 23% of the steps -> 0.07), lookahead
(from epoch 3, every 5 steps, decay 0.95 per step times the cube of the progress; copied back at
each epoch's end), alternating flip and 2-pixel reflect translation, and at the end mirror +
one-pixel-translation TTA (6 views). `epochs` may be fractional, as the published 9.9.

What differs, because this is a CPU: the published code runs the network in fp16 on a GPU; here it
runs in bf16 autocast where the CPU has native bf16 (AMX or AVX-512 BF16: the same rule as
train.precision: auto), fp32 otherwise; and the data are the dataset this workflow prepared (its
splits, mean and std).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

EPOCHS = 9.9
BATCH = 1024
LR, MOMENTUM, WEIGHT_DECAY, BIAS_SCALER = 11.5, 0.85, 0.0153, 64.0
LABEL_SMOOTHING = 0.2
WHITEN_BIAS_EPOCHS = 3
LOOKAHEAD_START_EPOCHS, LOOKAHEAD_DECAY, LOOKAHEAD_POWER, LOOKAHEAD_EVERY = 3, 0.95, 3.0, 5
WIDTHS = (64, 256, 256)
BN_MOMENTUM = 0.6  # airbench's convention: the weight of the old running statistics


class _Norm(nn.BatchNorm2d):
    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=1 - BN_MOMENTUM)
        self.weight.requires_grad_(False)  # only the bias (shift) is learnt


def _conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:cin])  # the first filters start as identities
    return conv


class _Group(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.norm1 = _conv(cin, cout), _Norm(cout)
        self.conv2, self.norm2 = _conv(cout, cout), _Norm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        w1, w2, w3 = WIDTHS
        self.groups = nn.Sequential(_Group(24, w1), _Group(w1, w2), _Group(w2, w3))
        self.head = nn.Linear(w3, 10, bias=False)

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        patches = images.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
        covariance = patches.T @ patches / len(patches)
        values, vectors = torch.linalg.eigh(covariance)
        filters = (vectors.T / torch.sqrt(values + eps)[:, None]).reshape(12, 3, 2, 2).float()
        self.whiten.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(F.gelu(self.whiten(x)))
        return self.head(F.max_pool2d(x, 3).flatten(1)) / 9


def _triangle(step: int, total: int) -> float:
    """0.2 -> 1 at 23% of the steps -> 0.07 at the end, linearly."""
    peak = int(0.23 * total)
    if step < peak:
        return 0.2 + 0.8 * step / peak
    return 1 + (0.07 - 1) * (step - peak) / max(1, total - peak)


def _tta_logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mirror + one-pixel translation: the image and its mirror (1/2), the shifts up-left and
    down-right, each with its mirror (1/4 each)."""

    def mirror(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (net(v) + net(v.flip(-1)))

    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = 0.5 * (mirror(padded[..., :32, :32]) + mirror(padded[..., 2:, 2:]))
    return 0.5 * mirror(x) + 0.5 * shifted


def _normalise(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float().div_(255)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def train(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    mean: list[float],
    std: list[float],
    epochs: float = EPOCHS,
    bf16: bool = False,
    seed: int = 0,
    batch: int = BATCH,
) -> dict:
    """Train for `epochs` (fractional allowed) and evaluate with TTA; seconds exclude evaluation.
    `batch` is the published 1024 except on toy data smaller than that (compare_recipes' smoke mode)."""
    torch.manual_seed(seed)
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    images = _normalise(train_images, mean_t, std_t)
    labels = torch.from_numpy(np.array(train_labels))
    net = Net().to(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = time.perf_counter()
    net.init_whitening(images[:5000])

    kilostep = 1024 * (1 + 1 / (1 - MOMENTUM))  # airbench's decoupling of lr from momentum
    lr = LR / kilostep
    wd = WEIGHT_DECAY * batch / kilostep
    norm_biases = [p for n, p in net.named_parameters() if "norm" in n and p.requires_grad]
    others = [p for n, p in net.named_parameters() if "norm" not in n and p.requires_grad]
    groups = [
        {"params": norm_biases, "lr": lr * BIAS_SCALER, "weight_decay": wd / (lr * BIAS_SCALER)},
        {"params": others, "lr": lr, "weight_decay": wd / lr},
    ]
    for g in groups:
        g["initial_lr"] = g["lr"]
    optimizer = torch.optim.SGD(groups, momentum=MOMENTUM, nesterov=True)
    criterion = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING, reduction="sum")

    steps_per_epoch = len(labels) // batch
    total = max(1, math.ceil(steps_per_epoch * epochs))
    pad = F.pad(images, (2, 2, 2, 2), mode="reflect")
    first_flip = torch.rand(len(labels)) < 0.5  # alternating flip: this half in even epochs
    average, step = None, 0
    tensors = [t for t in net.state_dict().values() if t.is_floating_point()]
    for epoch in range(math.ceil(epochs)):
        net.whiten.bias.requires_grad_(epoch < WHITEN_BIAS_EPOCHS)
        net.train()
        # translate: one random 32x32 window of the padded image per image; flip: alternating
        dy, dx = torch.randint(0, 5, (2, len(labels)))
        rows = (dy[:, None] + torch.arange(32))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(32))[:, None, None, :]
        epoch_images = pad[
            torch.arange(len(labels))[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols
        ]
        flip = first_flip ^ bool(epoch % 2)
        epoch_images = torch.where(flip[:, None, None, None], epoch_images.flip(-1), epoch_images)
        epoch_images = epoch_images.contiguous(memory_format=torch.channels_last)
        order = torch.randperm(len(labels))
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            with autocast:
                loss = criterion(net(epoch_images[idx]).float(), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * _triangle(step, total)
            optimizer.step()
            step += 1
            if epoch >= LOOKAHEAD_START_EPOCHS and step % LOOKAHEAD_EVERY == 0:
                with torch.no_grad():
                    if average is None:
                        average = [t.clone() for t in tensors]
                    else:
                        rho = LOOKAHEAD_DECAY**LOOKAHEAD_EVERY * (step / total) ** LOOKAHEAD_POWER
                        torch._foreach_lerp_(average, tensors, 1 - rho)
                        torch._foreach_copy_(tensors, average)
            if step >= total:
                break
        if average is not None:
            with torch.no_grad():
                torch._foreach_copy_(tensors, average)
        if step >= total:
            break
    seconds = time.perf_counter() - start

    net.eval()
    test = _normalise(test_images, mean_t, std_t)
    with torch.no_grad():
        logits = torch.cat([_tta_logits(net, test[i : i + 1000]) for i in range(0, len(test), 1000)])
    accuracy = (logits.argmax(1).numpy() == np.asarray(test_labels)).mean()
    return {
        "test_accuracy": round(float(accuracy), 5),
        "train_seconds": round(seconds, 3),
        "images_per_second": round(step * batch / seconds, 1),
        "batch_size": batch,
        "epochs": round(step / steps_per_epoch, 2),
        "steps": step,
    }


def images_per_second(bf16: bool, steps: int = 3, batch: int = BATCH) -> float:
    """Training throughput of the network (random data), for sizing a run to a time budget."""
    net = Net().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-4, momentum=0.85)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(net(x).float(), y, reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def run(data_dir: Path, epochs: float, bf16: bool, seed: int = 0, batch: int = BATCH) -> dict:
    """Train on a prepared dataset's train split, test on its test split."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from cifarflow.dataset import load_meta, load_split

    meta = load_meta(data_dir)
    train_split, test_split = load_split(data_dir, "train"), load_split(data_dir, "test")
    return train(
        train_split.images,
        train_split.labels,
        test_split.images,
        test_split.labels,
        meta["mean"],
        meta["std"],
        epochs,
        bf16,
        seed,
        batch,
    )
