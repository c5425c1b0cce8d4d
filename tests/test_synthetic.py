"""The synthetic source: deterministic, CIFAR-shaped, balanced, and learnable by a small CNN."""

import numpy as np
import torch
from cifarflow import synthetic
from torch import nn


def test_same_seed_same_bytes_other_seed_other_bytes():
    a = synthetic.generate(20, 5, seed=3)
    b = synthetic.generate(20, 5, seed=3)
    c = synthetic.generate(20, 5, seed=4)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    assert a.source_checksum == b.source_checksum != c.source_checksum
    # changing the test size leaves the training images alone
    np.testing.assert_array_equal(synthetic.generate(20, 9, seed=3).train.images, a.train.images)


def test_shapes_and_balance():
    raw = synthetic.generate(30, 7)
    assert raw.train.images.shape == (300, 32, 32, 3) and raw.train.images.dtype == np.uint8
    assert raw.test.images.shape == (70, 32, 32, 3)
    assert np.bincount(raw.train.labels).tolist() == [30] * 10
    assert len(set(raw.class_names)) == 10
    assert raw.train.images.std() > 30  # not blank


def test_mean_colour_alone_is_not_enough():
    """Hue is jittered across classes: a nearest-mean-colour rule must fall well short."""
    raw = synthetic.generate(200, 100)
    feats = lambda x: x.reshape(len(x), -1, 3).mean(1)  # noqa: E731
    centroids = np.stack([feats(raw.train.images[raw.train.labels == k]).mean(0) for k in range(10)])
    pred = np.argmin(((feats(raw.test.images)[:, None] - centroids) ** 2).sum(-1), axis=1)
    assert (pred == raw.test.labels).mean() < 0.4  # seen here: 0.17


def test_small_cnn_learns_it_well_above_chance():
    torch.manual_seed(0)
    raw = synthetic.generate(150, 50, seed=1)

    def to_tensor(x):
        return torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).float().div(255)

    x, y = to_tensor(raw.train.images), torch.from_numpy(raw.train.labels)
    tx, ty = to_tensor(raw.test.images), torch.from_numpy(raw.test.labels)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(12):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        accuracy = (model(tx).argmax(1) == ty).float().mean().item()
    assert accuracy > 0.5, accuracy  # chance is 0.1; seen here: 0.74 after 12 short epochs
