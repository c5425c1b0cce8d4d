"""CIFAR-10-C-style corruptions: deterministic, CIFAR-10-C's constants, damage growing with severity;
robustness bookkeeping over a model."""

import colorsys
import io

import numpy as np
import pytest
from cifarflow import corruptions, synthetic
from cifarflow.robustness import Robustness, evaluate, stratified_subset, worst
from PIL import Image
from scipy import ndimage


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


# make_cifar_c.py's severity constants for all ten corruptions, as published (hendrycks/robustness,
# ImageNet-C/create_c/make_cifar_c.py), written out here rather than read from the module.
PUBLISHED = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    "speckle_noise": [0.06, 0.1, 0.12, 0.16, 0.2],
    "gaussian_blur": [0.4, 0.6, 0.7, 0.8, 1],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "jpeg_compression": [80, 65, 58, 50, 40],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
}


def test_all_ten_constant_sets_are_the_published_ones():
    assert {name: list(values) for name, values in corruptions.PARAMETERS.items()} == PUBLISHED


# The deterministic corruptions recomputed one image at a time from the published formulas, with
# other code than the module's: scipy.ndimage where the original calls skimage.filters.gaussian
# (scipy.ndimage.gaussian_filter, mode 'nearest', truncate 4) and cv2.GaussianBlur / cv2.filter2D
# (the float32 17x17 disk, a 3x3 Gaussian, correlation with borders as BORDER_REFLECT_101 = scipy's
# 'mirror'), Python's colorsys where it calls skimage's HSV round trip. Each returns 0..255 floats
# before the final np.uint8 truncation, or uint8 where the original returns a Pillow image.
def _reference_defocus_kernel(radius: float, alias_blur: float) -> np.ndarray:
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = np.array(xx**2 + yy**2 <= radius**2, dtype=np.float32)
    disk /= np.sum(disk)
    return ndimage.gaussian_filter(disk, alias_blur, mode="mirror", radius=1).astype(np.float64)


def _reference_brightness(x: np.ndarray, c: float) -> np.ndarray:
    out = np.empty_like(x)
    for i, j in np.ndindex(x.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*x[i, j])
        out[i, j] = colorsys.hsv_to_rgb(h, s, min(max(v + c, 0.0), 1.0))
    return out


def _pillow(image: np.ndarray, transform, c) -> np.ndarray:
    return np.asarray(transform(Image.fromarray(image), c).convert("RGB"))


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer)


def _pixelate(image: Image.Image, c: float) -> Image.Image:
    small = image.resize((int(32 * c), int(32 * c)), Image.Resampling.BOX)
    return small.resize((32, 32), Image.Resampling.BOX)


def _means(x: np.ndarray) -> np.ndarray:
    return np.mean(x, axis=(0, 1), keepdims=True)


REFERENCE = {
    "gaussian_blur": lambda x, c: ndimage.gaussian_filter(x, (c, c, 0), mode="nearest", truncate=4.0),
    "defocus_blur": lambda x, c: np.stack(
        [ndimage.correlate(x[:, :, d], _reference_defocus_kernel(*c), mode="mirror") for d in range(3)],
        axis=2,
    ),
    "contrast": lambda x, c: (x - _means(x)) * c + _means(x),
    "brightness": _reference_brightness,
}
PILLOW_REFERENCE = {"jpeg_compression": _jpeg, "pixelate": _pixelate}


@pytest.mark.parametrize("name", [*REFERENCE, *PILLOW_REFERENCE])
def test_deterministic_corruptions_match_the_published_formulas(images, name):
    """Every pixel at every severity: the Pillow ones exactly; the others are the truncation to uint8
    of a value within 0.001 grey levels of the reference's (where the exact value is a whole grey
    level, float rounding on either side truncates to neighbouring levels: never more than one)."""
    # and the corner cases: black, white, greys, primaries (one image of every 8-bit level per channel)
    levels = np.arange(32 * 32 * 3).reshape(32, 32, 3) % 256
    edges = np.stack([levels, np.repeat(levels[..., :1], 3, axis=2), levels * [1, 0, 0]]).astype(np.uint8)
    images = np.concatenate([edges, images[:17] if name == "brightness" else images])  # colorsys: slow
    for severity in corruptions.SEVERITIES:
        c = PUBLISHED[name][severity - 1]
        ours = corruptions.corrupt(images, name, severity)
        if name in PILLOW_REFERENCE:
            expected = np.stack([_pillow(image, PILLOW_REFERENCE[name], c) for image in images])
            np.testing.assert_array_equal(ours, expected, err_msg=f"{name} severity {severity}")
            continue
        exact = np.stack([np.clip(REFERENCE[name](image / 255.0, c), 0, 1) * 255 for image in images])
        low, high = (np.clip(exact + d, 0, 255).astype(np.uint8) for d in (-1e-3, 1e-3))
        outside = (ours != low) & (ours != high)
        assert not outside.any(), (
            f"{name} severity {severity}: {outside.sum()} of {ours.size} values differ from the published "
            f"formula's, e.g. {ours[outside][:5].tolist()} for {exact[outside][:5].round(3).tolist()}"
        )
        off = ours.astype(int) - exact.astype(np.uint8)
        assert np.abs(off).max() <= 1
        # measured: at most 4.75% of the values (defocus blur, severity 5: flat areas are whole levels)
        assert np.mean(off != 0) <= 0.06, f"{name} severity {severity}: {np.mean(off != 0):.2%} off by one"


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
