"""register_model against a real MLflow store (the alias moves only on merit); choosing a serving engine."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from cifarflow.config import validate_config
from cifarflow.paired import ValPredictions, binomial_upper_tail, mcnemar
from cifarflow.registry import ChallengerRule, Evidence, champion_decision, register, tracking_uri
from conftest import ROOT
from mlflow import MlflowClient
from test_serving import model, tiny_data  # noqa: F401  (fixtures)


def tags(sha: str, dataset: str = "synthetic-tiny") -> dict:
    return {
        "model_sha256": sha,
        "dataset_id": dataset,
        "engine": "podman",
        "image": f"cifarflow-serving:x-{sha[:12]}",
    }


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """A SQLite store puts its artifacts under ./mlruns of the working directory (MLflow's default
    artifact root): each test works in its own folder, so nothing lands in the checkout."""
    monkeypatch.chdir(tmp_path)


IMAGES = 400  # validation images of the paired tests below
VAL_SHA = "f" * 64


def correct_pattern(base: np.ndarray | None = None, better: int = 0, worse: int = 0) -> np.ndarray:
    """Per-image right/wrong: the first model gets images 0..299 of 400 right; a challenger of `base`
    also gets `better` of its wrong images right and `worse` of its right images wrong."""
    if base is None:
        return np.arange(IMAGES) < 300
    out = base.copy()
    out[np.flatnonzero(~base)[:better]] = True
    out[np.flatnonzero(base)[:worse]] = False
    return out


def predictions(correct: np.ndarray, ece: float = 0.02, val_sha: str = VAL_SHA) -> ValPredictions:
    """Validation predictions with this right/wrong pattern: label 0 everywhere, predicted 0 or 1."""
    return ValPredictions(
        index=np.arange(len(correct)),
        label=np.zeros(len(correct), dtype=np.int16),
        predicted=np.where(correct, 0, 1).astype(np.int16),
        ece=ece,
        images_sha256=val_sha,
        labels_sha256="e" * 64,
    )


def registrar(model, tmp_path):  # noqa: F811
    """register() of `model` into a fresh SQLite store, as register_model calls it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def reg(tags, accuracy, val_accuracy=None, correct=None, ece=0.02, mca=0.6, val_sha=VAL_SHA):
        """`accuracy`: test, as served, recorded only; `correct`: the validation right/wrong pattern
        that the paired test compares (the first model's unless given); `ece`: its validation ECE;
        `mca`: its mean corruption accuracy on validation images."""
        correct = correct_pattern() if correct is None else correct
        path = tmp_path / f"val-{tags['model_sha256'][:8]}.npz"
        predictions(correct, ece, val_sha).save(path)
        return register(
            model_path=model,
            name="clf",
            alias="champion",
            tags=tags,
            accuracy=accuracy,
            val_accuracy=float(correct.mean()) if val_accuracy is None else val_accuracy,
            val_predictions=path,
            val_mean_corruption_accuracy=mca,
            uri=uri,
            lock_file=tmp_path / "lock",
        )

    return reg, MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_the_champion_moves_only_to_a_challenger_better_by_the_paired_test(model, tmp_path):  # noqa: F811
    """Against a real store: a challenger more accurate by noise stays a challenger, one clearly
    better takes the alias, one more accurate but far less calibrated (or robust) does not, and
    nothing is compared across datasets or validation images. Test accuracy is recorded, never
    compared: here it runs against validation accuracy, and never moves the alias."""
    reg, client = registrar(model, tmp_path)
    first_correct = correct_pattern()

    def challenger(sha, base, better, worse, **kwargs):
        correct = correct_pattern(base, better, worse)
        return reg(
            tags(sha, kwargs.pop("dataset", "synthetic-tiny")), 1 - correct.mean(), correct=correct, **kwargs
        )

    first = reg(tags("a" * 64), 0.25)
    assert (first["version"], first["champion"], first["champion_version"]) == (1, True, 1)
    assert first["champion_decision"]["outcome"] == "first"
    assert client.get_model_version("clf", "1").tags["champion.decision"] == "first"

    # 41 images better, 33 worse: 2 points more accurate on validation, by noise (p = 0.208)
    noise = challenger("b" * 64, first_correct, 41, 33)
    assert (noise["version"], noise["champion"], noise["champion_version"]) == (2, False, 1)
    assert noise["val_accuracy"] > first_correct.mean()  # the old rule would have moved the alias
    assert noise["champion_reason"] == (
        "stays with version 1: challenger version 2 better on 41 images, worse on 33 (of 400), "
        "McNemar p = 0.208 >= 0.05"
    )
    assert json.loads(json.dumps(noise)) == noise  # what register_model writes (numpy types are not JSON)
    stayed = client.get_model_version("clf", "2").tags
    assert (stayed["champion.decision"], stayed["champion.compared_with"]) == ("stayed", "1")
    assert (stayed["champion.better"], stayed["champion.worse"], stayed["champion.images"]) == (
        "41",
        "33",
        "400",
    )
    assert float(stayed["champion.p_value"]) == pytest.approx(binomtest_upper(41, 74), rel=1e-5)
    assert stayed["accuracy"] == f"{1 - correct_pattern(first_correct, 41, 33).mean():.6f}"  # recorded

    # 60 better, 10 worse: p = 4e-10; its ECE and robustness within the tolerances
    better = challenger("c" * 64, first_correct, 60, 10, ece=0.035, mca=0.59)
    assert (better["version"], better["champion"], better["champion_version"]) == (3, True, 3)
    assert better["champion_reason"] == (
        "moves from version 1 to version 3: better on 60 images, worse on 10 (of 400), McNemar p = "
        "4e-10 < 0.05; validation ECE 0.0350 against 0.0200, validation mean corruption accuracy "
        "0.5900 against 0.6000"
    )
    assert client.get_model_version("clf", "3").tags["champion.decision"] == "moved"
    third = correct_pattern(first_correct, 60, 10)

    # clearly more accurate again, but its validation ECE 0.12 is 0.085 above the holder's 0.035
    uncalibrated = challenger("d" * 64, third, 40, 5, ece=0.12)
    assert (uncalibrated["champion"], uncalibrated["champion_version"]) == (False, 3)
    assert (
        "better on 40 images, worse on 5 (of 400), McNemar p = 3.94e-08 < 0.05, but its validation ECE"
        in (uncalibrated["champion_reason"])
    )
    assert (
        "0.0850 above version 3's 0.0350 (more than register.challenger.max_ece_increase 0.02)"
        in (uncalibrated["champion_reason"])
    )
    # ... or its validation mean corruption accuracy 0.5 is 0.09 below the holder's 0.59
    fragile = challenger("e" * 64, third, 40, 5, mca=0.5)
    assert (fragile["champion"], fragile["champion_version"]) == (False, 3)
    assert "mean corruption accuracy 0.5000 is 0.0900 below version 3's 0.5900" in fragile["champion_reason"]

    # another dataset, or other validation images of the same dataset id: nothing to compare
    other_data = challenger("f" * 64, third, 90, 0, dataset="cifar10-0123456789")
    assert (other_data["champion"], other_data["champion_version"]) == (False, 3)
    assert (
        "evaluated on dataset synthetic-tiny, not cifar10-0123456789: not comparable"
        in other_data["champion_reason"]
    )
    other_images = challenger("9" * 64, third, 90, 0, val_sha="0" * 64)
    assert (other_images["champion"], other_images["champion_version"]) == (False, 3)
    assert other_images["champion_reason"] == (
        "'champion' is version 3, whose validation predictions are on other validation images "
        "(val_images.npy sha256 000000000000 against ffffffffffff): not comparable, so it stays "
        "(move it by hand if you mean to)"
    )
    again = challenger("c" * 64, first_correct, 60, 10, ece=0.035, mca=0.59)  # a rerun: its version
    assert (again["version"], again["champion"], again["new_version"]) == (3, True, False)
    assert str(client.get_model_version_by_alias("clf", "champion").version) == "3"
    assert len(client.search_model_versions("name = 'clf'")) == 7

    # every version carries its predictions, where the next challenger reads them
    stored = mlflow.artifacts.download_artifacts(
        artifact_uri="models:/clf/3/val_predictions.npz", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"
    )
    np.testing.assert_array_equal(ValPredictions.load(Path(stored)).correct, third)
    assert client.get_model_version("clf", "3").tags["val_ece"] == "0.035000"
    assert client.get_model_version("clf", "3").tags["val_mean_corruption_accuracy"] == "0.590000"


def test_a_later_evaluation_of_a_version_goes_beside_its_tags_never_over_them(model, tmp_path):  # noqa: F811
    """The champion, evaluated in its Podman image, is evaluated again with the process engine (a rerun
    with serving.engine: process): the version keeps its image and figures as first written, and the
    second evaluation is recorded beside them under its engine's name."""
    reg, client = registrar(model, tmp_path)
    sha = "a" * 64
    podman = {
        **tags(sha),
        "image_id": "sha256:" + "1" * 64,
        "experiment": "default",
        "latency_ms_p50": "1.8",
        "throughput_images_per_second": "9000.0",
    }
    first = reg(podman, 0.90)
    assert (first["version"], first["new_version"], first["champion"]) == (1, True, True)
    written = dict(client.get_model_version("clf", "1").tags)

    process = {
        **podman,
        "engine": "process",
        "image": "results/export/default/model.onnx",
        "image_id": sha,
        "latency_ms_p50": "1.1",
        "throughput_images_per_second": "12000.0",
    }
    again = reg(process, 0.90)
    assert (again["version"], again["new_version"], again["champion"]) == (1, False, True)
    assert again["engine"] == "process" and "already is 'champion'" in again["champion_reason"]
    version = client.get_model_version("clf", "1")
    # every tag of the first registration is unchanged: the image is still the Podman image
    assert {key: version.tags[key] for key in written} == written
    assert version.tags["image"] == "cifarflow-serving:x-aaaaaaaaaaaa" and version.tags["engine"] == "podman"
    assert version.tags["latency_ms_p50"] == "1.8"
    # the second evaluation is beside them, under its engine
    assert version.tags["eval.process.image"] == "results/export/default/model.onnx"
    assert version.tags["eval.process.latency_ms_p50"] == "1.1"
    assert version.tags["eval.process.accuracy"] == "0.900000"
    assert version.tags["eval.process.experiment"] == "default"
    assert version.tags["eval.podman.image"] == "cifarflow-serving:x-aaaaaaaaaaaa"  # the first, as written
    assert set(version.tags) - set(written) == {
        key for key in version.tags if key.startswith("eval.process.")
    }
    found = client.search_model_versions(
        "name = 'clf' and tags.`eval.process.image` = 'results/export/default/model.onnx'"
    )
    assert [str(v.version) for v in found] == ["1"]  # the registry's search finds it

    # A new model evaluated with the process engine is compared with the champion's own predictions
    # (on the validation split of the same dataset: the same whichever engine served it).
    first_correct = correct_pattern()
    worse = reg({**process, "model_sha256": "b" * 64}, 0.85, correct=correct_pattern(first_correct, 0, 20))
    assert (worse["version"], worse["champion"]) == (2, False)
    assert (
        "stays with version 1: challenger version 2 better on 0 images, worse on 20"
        in worse["champion_reason"]
    )
    better = reg({**process, "model_sha256": "c" * 64}, 0.95, correct=correct_pattern(first_correct, 20, 0))
    assert (better["version"], better["champion"], better["champion_version"]) == (3, True, 3)
    assert client.get_model_version("clf", "1").tags == version.tags  # nothing rewritten by either


def binomtest_upper(successes: int, trials: int) -> float:
    """The one-sided exact binomial p-value by scipy, an implementation independent of paired.py."""
    stats = pytest.importorskip("scipy.stats")
    return stats.binomtest(successes, trials, 0.5, alternative="greater").pvalue


@pytest.mark.parametrize(
    "better, worse, expected",
    [
        (5, 0, 1 / 32),  # all 5 discordant images go the challenger's way: 0.5 ** 5
        (8, 2, 56 / 1024),  # (C(10,8) + C(10,9) + C(10,10)) / 2 ** 10 = (45 + 10 + 1) / 1024
        (0, 0, 1.0),  # no discordant image: nothing shows a difference
        (0, 7, 1.0),
        (3, 3, 42 / 64),  # (20 + 15 + 6 + 1) / 64
    ],
)
def test_the_exact_mcnemar_p_value_is_the_binomial_tail_worked_by_hand(better, worse, expected):
    holder = np.array([False] * better + [True] * worse + [True] * 4 + [False] * 2)
    challenger = np.array([True] * better + [False] * worse + [True] * 4 + [False] * 2)
    test = mcnemar(challenger, holder)
    assert (test.better, test.worse, test.images) == (better, worse, better + worse + 6)
    assert test.p_value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("better, worse", [(41, 33), (60, 10), (200, 170), (1, 0), (512, 470)])
def test_the_exact_mcnemar_p_value_matches_scipys_binomial_test(better, worse):
    assert binomial_upper_tail(better, better + worse) == pytest.approx(
        binomtest_upper(better, better + worse), rel=1e-9
    )


# The alias's version 3 on dataset d1: right on images 0..299 of 400, validation ECE 0.03, mean
# corruption accuracy on validation images 0.6
HOLDER = Evidence(predictions(correct_pattern(), ece=0.03), 0.6)
HELD = ("3", {"dataset_id": "d1", "val_accuracy": "0.750000", "accuracy": "0.990000"}, HOLDER)
STAYS = "not comparable, so it stays (move it by hand if you mean to)"


def challenger_of(better: int, worse: int, ece: float = 0.03, mca: float | None = 0.6) -> Evidence:
    return Evidence(predictions(correct_pattern(correct_pattern(), better, worse), ece=ece), mca)


@pytest.mark.parametrize(
    "challenger, champion, moved, outcome, reason",
    [
        (challenger_of(0, 0), None, True, "first", "no 'champion' yet: version 7 takes it"),
        # the same version again (a rerun, another engine) keeps the alias, whatever its figures
        (challenger_of(0, 50), ("7", *HELD[1:]), True, "holds", "version 7 already is 'champion'"),
        # better by noise: 2 points of validation accuracy, and p = 0.208
        (
            challenger_of(41, 33),
            HELD,
            False,
            "stayed",
            "better on 41 images, worse on 33 (of 400), McNemar p = 0.208 >= 0.05",
        ),
        # 10 of 10 discordant images: p = 0.5 ** 10 = 0.000977
        (
            challenger_of(10, 0),
            HELD,
            True,
            "moved",
            (
                "moves from version 3 to version 7: better on 10 images, worse on 0 (of 400), "
                "McNemar p = 0.000977 < 0.05; validation ECE 0.0300 against 0.0300, validation mean "
                "corruption accuracy 0.6000 against 0.6000"
            ),
        ),
        # 9 of 13 is not enough: p = 0.133
        (challenger_of(9, 4), HELD, False, "stayed", "McNemar p = 0.133 >= 0.05"),
        # at the tolerances exactly: it moves
        (
            challenger_of(30, 0, ece=0.05, mca=0.58),
            HELD,
            True,
            "moved",
            "validation ECE 0.0500 against 0.0300, validation mean corruption accuracy 0.5800 against 0.6000",
        ),
        # beyond them: it stays, and says which
        (
            challenger_of(30, 0, ece=0.0501),
            HELD,
            False,
            "stayed",
            (
                "but its validation ECE 0.0501 is 0.0201 above version 3's 0.0300 (more than "
                "register.challenger.max_ece_increase 0.02)"
            ),
        ),
        (
            challenger_of(30, 0, mca=0.579),
            HELD,
            False,
            "stayed",
            (
                "but its validation mean corruption accuracy 0.5790 is 0.0210 below version 3's 0.6000 (more "
                "than register.challenger.max_corruption_drop 0.02)"
            ),
        ),
        (
            challenger_of(30, 0, ece=0.2, mca=0.1),
            HELD,
            False,
            "stayed",
            "max_ece_increase 0.02); and its validation mean corruption accuracy",
        ),
        (
            challenger_of(30, 0, mca=None),
            HELD,
            False,
            "stayed",
            "but version 7 has no mean corruption accuracy on validation images to compare",
        ),
        # a holder registered when robustness was measured on test images only: its test figure
        # never decides, so nothing vetoes or clears the challenger on robustness, and it stays
        (
            challenger_of(30, 0),
            ("3", HELD[1], Evidence(HOLDER.predictions, None)),
            False,
            "stayed",
            "but version 3 has no mean corruption accuracy on validation images to compare",
        ),
        (
            challenger_of(30, 0),
            ("3", {"dataset_id": "d0"}, HOLDER),
            False,
            "not compared",
            f"'champion' is version 3, evaluated on dataset d0, not d1: {STAYS}",
        ),
        (
            challenger_of(30, 0),
            ("3", {}, HOLDER),
            False,
            "not compared",
            f"'champion' is version 3, evaluated on dataset None, not d1: {STAYS}",
        ),
        (
            challenger_of(30, 0),
            ("3", HELD[1], Evidence(None, 0.6)),
            False,
            "not compared",
            (
                "'champion' is version 3, registered without validation predictions (before the "
                f"paired test): {STAYS}"
            ),
        ),
        (
            Evidence(predictions(correct_pattern()[:399]), 0.6),
            HELD,
            False,
            "not compared",
            (
                "'champion' is version 3, whose validation predictions are on other validation "
                f"images (399 against 400, or in another order): {STAYS}"
            ),
        ),
        (
            Evidence(predictions(np.zeros(0, dtype=bool)), 0.6),
            HELD,
            False,
            "not compared",
            (
                "version 7 has no predictions on validation images to compare with version 3's (an "
                "empty validation split: raise dataset.val_fraction): the alias stays"
            ),
        ),
    ],
)
def test_champion_decision_needs_a_paired_win_within_the_calibration_and_robustness_tolerances(
    challenger, champion, moved, outcome, reason
):
    decision = champion_decision("champion", "7", "d1", challenger, champion)
    assert (decision.moved, decision.outcome) == (moved, outcome)
    assert reason in decision.reason


def test_alpha_and_the_tolerances_come_from_the_config():
    """register.challenger: a stricter alpha keeps a champion that 0.05 would give away; wider
    tolerances let a less calibrated challenger through. The defaults are those of the schema."""
    schema = validate_config({}, ROOT / "config" / "schema.yaml")["register"]["challenger"]
    assert ChallengerRule.from_settings(schema) == ChallengerRule(0.05, 0.02, 0.02)
    ten_of_ten = challenger_of(10, 0)  # p = 0.000977
    assert champion_decision("champion", "7", "d1", ten_of_ten, HELD).moved
    strict = ChallengerRule.from_settings({**schema, "alpha": 0.0005})
    assert not champion_decision("champion", "7", "d1", ten_of_ten, HELD, strict).moved
    uncalibrated = challenger_of(30, 0, ece=0.2)
    assert not champion_decision("champion", "7", "d1", uncalibrated, HELD).moved
    lenient = ChallengerRule.from_settings({**schema, "max_ece_increase": 0.5})
    decision = champion_decision("champion", "7", "d1", uncalibrated, HELD, lenient)
    assert decision.moved
    assert decision.tags() == {
        "champion.decision": "moved",
        "champion.reason": decision.reason,
        "champion.compared_with": "3",
        "champion.images": "400",
        "champion.better": "30",
        "champion.worse": "0",
        "champion.p_value": "9.31323e-10",
        "champion.val_accuracy": "0.825",
        "champion.holder_val_accuracy": "0.75",
        "champion.val_ece": "0.2",
        "champion.holder_val_ece": "0.03",
        "champion.val_mean_corruption_accuracy": "0.6",
        "champion.holder_val_mean_corruption_accuracy": "0.6",
        "champion.alpha": "0.05",
        "champion.max_ece_increase": "0.5",
        "champion.max_corruption_drop": "0.02",
    }


def test_tracking_uri_follows_config_then_environment_then_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri("") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri("") == "http://127.0.0.1:5000"
    assert tracking_uri("sqlite:///elsewhere.db") == "sqlite:///elsewhere.db"
    from snakemake_logger_plugin_mlflow.uri import tracking_uri as the_hooks

    assert tracking_uri is the_hooks  # one place decides the store


def test_a_deleted_experiment_is_refused_as_the_hook_refuses_it(tmp_path):
    """The registry finds or creates the experiment with the hook's function: a deleted one is an
    error that says how to fix it, not logged to (nor restored, nor created anew)."""
    from cifarflow.errors import PipelineError
    from cifarflow.registry import use_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("cifar10"))
    with pytest.raises(PipelineError) as refused:
        use_experiment(uri, "cifar10")
    assert str(refused.value) == (
        "experiment 'cifar10' is deleted; restore it (mlflow experiments restore) or choose another "
        "name with config mlflow.experiment"
    )
    assert client.get_experiment_by_name("cifar10").lifecycle_stage == "deleted"
    assert [e.name for e in client.search_experiments()] == ["Default"]


@pytest.mark.parametrize("engine", ["docker", "apptainer"])
def test_choose_names_the_missing_engine_and_the_fix(engine, monkeypatch, tmp_path):
    from cifarflow.engines import choose
    from cifarflow.errors import PipelineError

    monkeypatch.setenv("PATH", str(tmp_path))  # no engine binaries at all
    with pytest.raises(
        PipelineError, match=rf"serving.engine is '{engine}'.*`{engine}` is not on PATH.*process"
    ):
        choose(engine)
    assert choose("auto") == "process"


def test_the_model_card_is_a_file_of_the_registered_version(model, tmp_path):  # noqa: F811
    import mlflow
    from cifarflow.registry import log_card, use_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = use_experiment(uri, "cifar10")
    register_tags, client = registrar(model, tmp_path)
    record = register_tags(tags("a" * 64), 0.9)
    card, page = tmp_path / "model_card.md", tmp_path / "model_card.html"
    card.write_text("# Model card: clf version 1\n")
    page.write_text("<h1>Model card: clf version 1</h1>\n")
    assert log_card(uri, "clf", record["version"], [card, page], "podman") == ""
    # a later evaluation of the same version: its card goes beside the first, which stays
    card.write_text("# a later evaluation\n")
    assert log_card(uri, "clf", record["version"], [card, page], "process") == "evaluations/process"

    first = mlflow.artifacts.download_artifacts(artifact_uri="models:/clf/1/model_card.md", tracking_uri=uri)
    assert Path(first).read_text() == "# Model card: clf version 1\n"
    files = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/clf/1", tracking_uri=uri))
    assert (files / "model_card.html").read_text().startswith("<h1>Model card")
    assert (files / "evaluations/process/model_card.md").read_text() == "# a later evaluation\n"
    assert (files / "MLmodel").exists()  # beside the model it describes
    # the model is logged in the workflow's experiment, which MLflow's UI opens on its runs table
    version = client.get_model_version("clf", "1")
    model_id = version.model_id or version.source.removeprefix("models:/")  # SQL registries: source
    assert client.get_logged_model(model_id).experiment_id == experiment_id
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "genai_development")
    use_experiment(uri, "cifar10")  # a kind someone chose stays
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "genai_development"
