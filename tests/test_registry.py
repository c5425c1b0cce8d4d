"""register_model against a real MLflow store (the alias moves only on merit); choosing a serving engine."""

import json
from pathlib import Path

import pytest
from cifarflow.registry import champion_decision, register, tracking_uri
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


def registrar(model, tmp_path):  # noqa: F811
    """register() of `model` into a fresh SQLite store, as register_model calls it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def reg(tags, accuracy, val_accuracy=None):
        """`accuracy`: test, as served; `val_accuracy`, which decides: the same unless given."""
        return register(
            model_path=model,
            name="clf",
            alias="champion",
            tags=tags,
            accuracy=accuracy,
            val_accuracy=accuracy if val_accuracy is None else val_accuracy,
            uri=uri,
            lock_file=tmp_path / "lock",
        )

    return reg, MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_champion_moves_only_to_a_better_model_on_the_same_dataset(model, tmp_path):  # noqa: F811
    """Better = higher validation accuracy. Test accuracy is recorded, never compared: here it runs
    against validation accuracy (1 - val), and never moves the alias."""
    register_tags, client = registrar(model, tmp_path)

    def reg(sha, val_accuracy, dataset="synthetic-tiny"):
        return register_tags(tags(sha, dataset), round(1 - val_accuracy, 6), val_accuracy)

    first = reg("a" * 64, 0.90)
    assert (first["version"], first["champion"], first["champion_version"]) == (1, True, 1)
    worse = reg("b" * 64, 0.80)  # its test accuracy (0.2) is twice the champion's: no matter
    assert (worse["version"], worse["champion"], worse["champion_version"]) == (2, False, 1)
    assert "val accuracy 0.8000 does not beat version 1's 0.9000" in worse["champion_reason"]
    assert json.loads(json.dumps(worse)) == worse  # what register_model writes (a numpy bool was not JSON)
    better = reg("c" * 64, 0.95)
    assert (better["version"], better["champion"], better["champion_version"]) == (3, True, 3)
    other_data = reg("d" * 64, 0.99, dataset="cifar10-0123456789")
    assert (other_data["champion"], other_data["champion_version"]) == (False, 3)
    assert "not comparable" in other_data["champion_reason"]
    again = reg("c" * 64, 0.95)  # the same model again (a rerun): its version, not a new one
    assert (again["version"], again["champion"]) == (3, True)
    assert str(client.get_model_version_by_alias("clf", "champion").version) == "3"
    assert len(client.search_model_versions("name = 'clf'")) == 4
    assert client.get_model_version("clf", "2").tags["accuracy"] == "0.200000"
    assert client.get_model_version("clf", "2").tags["val_accuracy"] == "0.800000"
    # a champion registered before selection moved to validation accuracy has none to compare
    client.delete_model_version_tag("clf", "3", "val_accuracy")
    newer = reg("e" * 64, 0.99)
    assert (newer["champion"], newer["champion_version"]) == (False, 3)
    assert "registered without a validation accuracy" in newer["champion_reason"]


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

    # A new model evaluated with the process engine is compared with the champion's own figure
    # (accuracy on the same dataset: the same whichever engine served it).
    worse = reg({**process, "model_sha256": "b" * 64}, 0.85)
    assert (worse["version"], worse["champion"]) == (2, False)
    assert "does not beat version 1's 0.9000 on the same dataset" in worse["champion_reason"]
    better = reg({**process, "model_sha256": "c" * 64}, 0.95)
    assert (better["version"], better["champion"], better["champion_version"]) == (3, True, 3)
    assert client.get_model_version("clf", "1").tags == version.tags  # nothing rewritten by either


# The alias's version 3, registered with validation accuracy 0.9 on dataset d1 (and test accuracy 0.99)
HELD = ("3", {"dataset_id": "d1", "val_accuracy": "0.900000", "accuracy": "0.990000"})
STAYS = "not comparable, so it stays (move it by hand if you mean to)"


@pytest.mark.parametrize(
    "val_accuracy, champion, expected",
    [
        (0.5, None, (True, "no 'champion' yet")),
        (0.95, HELD, (True, "val accuracy 0.9500 beats version 3's 0.9000 on the same dataset")),
        (0.9, HELD, (False, "val accuracy 0.9000 does not beat version 3's 0.9000 on the same dataset")),
        (0.85, HELD, (False, "val accuracy 0.8500 does not beat version 3's 0.9000 on the same dataset")),
        # the figures compared unrounded: better by less than the reason shows is better
        (0.90004, HELD, (True, "val accuracy 0.9000 beats version 3's 0.9000 on the same dataset")),
        # the same version again (a rerun, another engine) keeps the alias, whatever its figures
        (0.5, ("7", HELD[1]), (True, "version 7 already is 'champion'")),
        (
            0.99,
            ("3", {"dataset_id": "d0", "val_accuracy": "0.500000"}),
            (False, f"'champion' is version 3, evaluated on dataset d0, not d1: {STAYS}"),
        ),
        (
            0.99,
            ("3", {"val_accuracy": "0.500000"}),
            (False, f"'champion' is version 3, evaluated on dataset None, not d1: {STAYS}"),
        ),
        (
            0.99,
            ("3", {"dataset_id": "d1", "accuracy": "0.500000"}),
            (
                False,
                "'champion' is version 3, registered without a validation accuracy (chosen on test "
                f"accuracy, before selection moved to validation): {STAYS}",
            ),
        ),
    ],
)
def test_champion_decision_moves_on_a_better_validation_accuracy_on_the_same_dataset_only(
    val_accuracy, champion, expected
):
    assert champion_decision("champion", "7", "d1", val_accuracy, champion) == expected


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
