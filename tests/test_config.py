"""Config: schema defaults, errors that name the key, and the dataset id's stability."""

import copy

import pytest
import yaml
from cifarflow.config import dataset_id, validate_config
from cifarflow.errors import PipelineError
from conftest import ROOT

SCHEMA = ROOT / "config" / "schema.yaml"


def defaults() -> dict:
    return validate_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), SCHEMA)


def test_config_yaml_is_valid_and_equals_schema_defaults():
    assert defaults() == validate_config({}, SCHEMA)


def test_every_schema_key_has_description_and_default():
    def walk(node, where):
        for key, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"{where}{key} has no description"
            assert "default" in sub, f"{where}{key} has no default"
            walk(sub, f"{where}{key}.")

    walk(yaml.safe_load(SCHEMA.read_text()), "")


def test_unknown_key_is_named():
    with pytest.raises(PipelineError, match=r"unknown config key 'dataset\.val_fractoin'"):
        validate_config({"dataset": {"val_fractoin": 0.2}}, SCHEMA)
    with pytest.raises(PipelineError, match=r"unknown config key 'datset'"):
        validate_config({"datset": {}}, SCHEMA)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"source": "imagenet"}, r"'dataset\.source' = 'imagenet' is invalid"),
        ({"val_fraction": 0.9}, r"'dataset\.val_fraction' = 0\.9 is invalid"),
        ({"resize": "yes"}, r"'dataset\.resize' = 'yes' is invalid"),
        ({"cifar10": {"md5": "abc"}}, r"'dataset\.cifar10\.md5' = 'abc' is invalid"),
        ({"synthetic": {"train_per_class": 1}}, r"'dataset\.synthetic\.train_per_class' = 1 is invalid"),
    ],
)
def test_bad_value_is_named(section, message):
    with pytest.raises(PipelineError, match=message):
        validate_config({"dataset": section}, SCHEMA)


def test_dataset_id_changes_with_source_and_split_settings_only():
    base = defaults()["dataset"]
    same = copy.deepcopy(base)
    same["path"] = "elsewhere/cache"  # where the cifar10 archive is cached is not what it holds
    same["cifar10"]["url"] = "https://mirror.example/cifar-10-python.tar.gz"
    same["resize"] = True  # only read for folder sources
    assert dataset_id(same) == dataset_id(base)
    assert dataset_id(base).startswith("cifar10-")

    for change in ({"val_fraction": 0.2}, {"seed": 1}, {"source": "synthetic"}):
        assert dataset_id({**base, **change}) != dataset_id(base), change

    folder = {**base, "source": "folder", "path": "data/imgs"}
    assert dataset_id({**folder, "path": "data/other"}) != dataset_id(folder)
    assert dataset_id({**folder, "path": "data/imgs/"}) == dataset_id(folder)
    assert dataset_id({**folder, "resize": True}) != dataset_id(folder)

    synthetic = {**base, "source": "synthetic"}
    bigger = {**synthetic, "synthetic": {**base["synthetic"], "train_per_class": 7}}
    assert dataset_id(bigger) != dataset_id(synthetic)
