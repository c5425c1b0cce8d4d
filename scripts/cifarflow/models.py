"""Model architectures. No I/O: each model takes float RGB images in 0..1, NCHW, and normalises
them itself (the dataset's mean/std are buffers), so a checkpoint carries its own preprocessing.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

MODELS = ("fast", "simple", "vgg11", "vgg16", "resnet18")


class Normalize(nn.Module):
    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """normalise -> body -> logits. In eval mode, test-time augmentation averages the logits of
    several views of each image: with `tta`, the image and its mirror; with `tta_translate`, also
    the image shifted by one pixel up-left and down-right (reflect padding; weights 1/2, 1/4, 1/4,
    as in airbench94). All views go through the body as one batch: one call, so that batch-1
    latency pays the per-call overhead once."""

    def __init__(
        self,
        body: nn.Module,
        mean: list[float],
        std: list[float],
        tta: bool = False,
        tta_translate: bool = False,
    ):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.body = body
        self.tta = tta
        self.tta_translate = tta_translate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        if self.training or not (self.tta or self.tta_translate):
            return self.body(x)
        views, weights = [x], [1.0]
        if self.tta_translate:
            height, width = x.shape[-2:]
            padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
            views += [padded[..., :height, :width], padded[..., 2:, 2:]]
            weights = [0.5, 0.25, 0.25]
        if self.tta:
            views += [v.flip(-1) for v in views]
            weights = [w / 2 for w in weights] * 2
        logits = self.body(torch.cat(views)).unflatten(0, (len(views), -1))
        return (logits * logits.new_tensor(weights).view(-1, 1, 1)).sum(0)


# --- fast: airbench-style (Keller Jordan's cifar10-airbench, hlb-CIFAR10) ----------------------


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int, identity_init: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(cout, momentum=0.4)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(cout, momentum=0.4)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.GELU()
        if identity_init:  # airbench: the first filters pass their input through, an implicit residual
            for conv in (self.conv1, self.conv2):
                nn.init.dirac_(conv.weight.data[: conv.in_channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    """2x2 patch-whitening conv (fixed weights, set from data) -> three conv groups -> linear."""

    def __init__(self, widths=(64, 256, 256), num_classes: int = 10, identity_init: bool = False):
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, kernel_size=2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        w1, w2, w3 = widths
        groups = [ConvGroup(a, b, identity_init) for a, b in ((24, w1), (w1, w2), (w2, w3))]
        self.layers = nn.Sequential(nn.GELU(), *groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(w3, num_classes, bias=False)
        self.scale = 1 / 9  # a low output temperature, as in airbench

    @torch.no_grad()
    def init_whitening(self, normalized_images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the first layer to the ZCA-like whitening of 2x2 patches: eigenvectors of their
        covariance scaled by 1/sqrt(eigenvalue), each with its negative (24 filters)."""
        patches = normalized_images.float().unfold(2, 2, 1).unfold(3, 2, 1)  # N,C,31,31,2,2
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
        patches = patches - patches.mean(0)
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).reshape(12, 3, 2, 2)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.whiten(x))
        return self.head(self.pool(x).flatten(1)) * self.scale


# --- the original pipeline's architectures ------------------------------------------------------


class SimpleNet(nn.Module):
    """The original's `simple` model: two 5x5 convs with max-pooling, three linear layers."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# Convs per block (64, 128, 256, 512, 512 channels), as in the original's VGG11 and VGG16.
VGG_BLOCKS = {"vgg11": (1, 1, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3)}


class VGG(nn.Module):
    """The original's VGG: conv-BN-ReLU blocks with max-pooling, then 512-512-32-classes with dropout."""

    def __init__(self, convs_per_block: tuple[int, ...], num_classes: int = 10):
        super().__init__()
        layers, cin = [], 3
        for cout, n in zip((64, 128, 256, 512, 512), convs_per_block, strict=True):
            for _ in range(n):
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512, 512),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(512, 32),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(32, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 32x32 inputs."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_model(
    name: str,
    mean: list[float],
    std: list[float],
    num_classes: int = 10,
    widths=(64, 256, 256),
    tta: bool = False,
    tta_translate: bool = False,
    identity_init: bool = False,
) -> Classifier:
    if name == "fast":
        body = FastNet(tuple(widths), num_classes, identity_init)
    elif name == "simple":
        body = SimpleNet(num_classes)
    elif name in VGG_BLOCKS:
        body = VGG(VGG_BLOCKS[name], num_classes)
    elif name == "resnet18":
        body = resnet18_cifar(num_classes)
    else:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
    return Classifier(body, mean, std, tta, tta_translate)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
