"""CIFAR-10-C-style corruptions: deterministic, CIFAR-10-C's constants, damage growing with severity;
robustness bookkeeping over a model."""

import io

import numpy as np
import pytest
from cifarflow import corruptions, synthetic
from cifarflow.robustness import Robustness, evaluate, stratified_subset, worst
from PIL import Image


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return synthetic.generate(10, 1, seed=5).train.images[:60]


@pytest.mark.parametrize("name", corruptions.NAMES)
def test_same_seed_same_bytes(images, name):
    a = corruptions.corrupt(images, name, 3, seed=7)
    b = corruptions.corrupt(images.copy(), name, 3, seed=7)
    assert a.dtype == np.uint8 and a.shape == images.shape
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, images)  # it did something
    random = name.endswith("_noise")
    assert np.array_equal(corruptions.corrupt(images, name, 3, seed=8), a) != random  # only noise draws


@pytest.mark.parametrize("name", corruptions.NAMES)
def test_damage_grows_with_severity(images, name):
    """PSNR against the original falls from each severity to the next (all five)."""
    psnr = [corruptions.psnr(images, corruptions.corrupt(images, name, s)) for s in corruptions.SEVERITIES]
    assert all(a > b for a, b in zip(psnr, psnr[1:], strict=False)), psnr


def test_a_block_is_corrupted_the_same_however_many_images_follow(images):
    many = np.concatenate([images] * 20)  # 1200 images: two random blocks
    first = corruptions.corrupt(many, "gaussian_noise", 2, seed=1)[: corruptions.BLOCK]
    np.testing.assert_array_equal(
        first, corruptions.corrupt(many[: corruptions.BLOCK], "gaussian_noise", 2, seed=1)
    )


def test_contrast_and_brightness_by_hand():
    # contrast, severity 1 (c = .75), per channel: mean of 10 and 201 is 105.5;
    # (10 - 105.5) * .75 + 105.5 = 33.875 -> 33, (201 - 105.5) * .75 + 105.5 = 177.125 -> 177
    x = np.array([[[[10, 10, 10], [201, 201, 201]]]], dtype=np.uint8)
    assert corruptions.corrupt(x, "contrast", 1)[0, 0].tolist() == [[33, 33, 33], [177, 177, 177]]
    # brightness, severity 1 (V + .05): (100, 50, 0) has V = 100/255 and scales by (V + .05) / V
    # = 1.1275: (112.75, 56.375, 0) -> (112, 56, 0); black has no hue: it becomes grey .05 -> 12
    x = np.array([[[[100, 50, 0], [0, 0, 0]]]], dtype=np.uint8)
    assert corruptions.corrupt(x, "brightness", 1)[0, 0].tolist() == [[112, 56, 0], [12, 12, 12]]


def test_jpeg_and_pixelate_are_pillows_with_cifar10c_constants(images):
    image = Image.fromarray(images[0])
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=40)  # severity 5
    expected = np.asarray(Image.open(buffer).convert("RGB"))
    np.testing.assert_array_equal(corruptions.corrupt(images[:1], "jpeg_compression", 5)[0], expected)
    small = image.resize((int(32 * 0.65), int(32 * 0.65)), Image.Resampling.BOX)  # severity 5: 20x20
    expected = np.asarray(small.resize((32, 32), Image.Resampling.BOX))
    np.testing.assert_array_equal(corruptions.corrupt(images[:1], "pixelate", 5)[0], expected)


def test_constants_are_cifar10cs_and_the_defocus_kernel_is_a_normalised_disk():
    assert corruptions.PARAMETERS["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert corruptions.PARAMETERS["jpeg_compression"] == (80, 65, 58, 50, 40)
    for radius, blur in corruptions.PARAMETERS["defocus_blur"]:
        kernel = corruptions.defocus_kernel(radius, blur)
        assert kernel.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(kernel, kernel.T)  # symmetric: correlation = convolution
    # radius 1.5 covers the 3x3 block: before smoothing, nine equal weights
    assert corruptions.defocus_kernel(1.5, 1e-6)[1:4, 1:4] == pytest.approx(np.full((3, 3), 1 / 9))


def test_bad_requests_name_the_cause(images):
    with pytest.raises(ValueError, match="unknown corruption.*known: gaussian_noise"):
        corruptions.corrupt(images, "fog", 1)
    with pytest.raises(ValueError, match="severities must be among"):
        corruptions.corrupt(images, "contrast", 6)
    with pytest.raises(ValueError, match="uint8"):
        corruptions.corrupt(images.astype(np.float32), "contrast", 1)


def brightness_model(images_batch: np.ndarray):
    """A toy classifier: the class is the mean brightness band (10 bands); stands in for the ONNX runner."""
    mean = images_batch.reshape(len(images_batch), -1).mean(1)
    predicted = np.minimum((mean / 25.6).astype(int), 9)
    probabilities = np.eye(10, dtype=np.float32)[predicted] * 0.9 + 0.01
    return np.log(probabilities), probabilities


def test_robustness_figures_add_up(images):
    labels = brightness_model(images)[1].argmax(1)  # the toy model is right on every clean image
    batches = []

    def run(x):
        batches.append(len(x))
        return brightness_model(x)

    result = evaluate(run, images, labels, ["brightness", "gaussian_noise"], [1, 5], seed=0, batch=16)
    assert max(batches) == 16
    assert result.uncorrupted_accuracy == 1.0 and result.images == 60
    table = [a for row in result.accuracy.values() for a in row.values()]
    assert result.mean_corruption_accuracy == pytest.approx(np.mean(table))
    assert result.relative_drop == pytest.approx(1 - np.mean(table))
    assert result.accuracy["brightness"][5] < result.accuracy["brightness"][1]  # brighter: another band
    metrics = result.metrics()
    assert metrics["accuracy_brightness_s5"] == round(result.accuracy["brightness"][5], 6)
    assert metrics["accuracy_severity_1"] == pytest.approx(
        np.mean([r[1] for r in result.accuracy.values()]), abs=1e-6
    )
    assert Robustness.from_json(result.to_json()).metrics() == metrics
    assert worst(result, 1)[0][0] == min(result.by_corruption(), key=result.by_corruption().get)
    with pytest.raises(ValueError, match="unknown corruption"):
        evaluate(run, images, labels, ["snow"], [1])


def test_the_subset_is_balanced_seeded_and_sorted():
    labels = np.repeat(np.arange(10), [50] * 9 + [5])  # one rare class
    picked = stratified_subset(labels, 100, seed=3)
    assert len(picked) == 100 and len(set(picked)) == 100 and (np.diff(picked) > 0).all()
    counts = np.bincount(labels[picked], minlength=10)
    assert counts[9] == 5 and set(counts[:9]) <= {10, 11, 12}  # the rare class gives all it has
    np.testing.assert_array_equal(picked, stratified_subset(labels, 100, seed=3))
    assert not np.array_equal(picked, stratified_subset(labels, 100, seed=4))
    np.testing.assert_array_equal(stratified_subset(labels, 0), np.arange(len(labels)))


def test_the_config_offers_exactly_these_corruptions():
    import yaml
    from conftest import ROOT

    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())["properties"]["robustness"]
    listed = schema["properties"]["corruptions"]
    assert tuple(listed["items"]["enum"]) == corruptions.NAMES
    assert tuple(listed["default"]) == corruptions.DEFAULT
