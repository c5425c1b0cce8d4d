"""Config: schema defaults, errors that name the key, the dataset id's stability, the typed recipe."""

import copy
import hashlib
import json
import typing
from dataclasses import fields, replace

import pytest
import yaml
from cifarflow.config import Recipe, dataset_id, recipe, validate_config
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


@pytest.mark.parametrize(
    ("label_issues", "message"),
    [
        ({"folds": 1}, r"'audit\.label_issues\.folds' = 1 is invalid.*at least 2\. 0 or null = off"),
        ({"folds": -2}, r"'audit\.label_issues\.folds' = -2 is invalid"),
        ({"folds": "4"}, r"'audit\.label_issues\.folds' = '4' is invalid"),
        ({"folds": 2.5}, r"'audit\.label_issues\.folds' = 2\.5 is invalid"),
        ({"recipe": {"epoch": 2}}, r"unknown config key 'audit\.label_issues\.recipe\.epoch'"),
        ({"recipe": {"epochs": 0}}, r"'audit\.label_issues\.recipe\.epochs' = 0 is invalid"),
    ],
)
def test_label_issue_folds_are_off_or_at_least_two_with_a_recipe_of_train_keys(label_issues, message):
    assert defaults()["audit"]["label_issues"] == {"folds": None, "recipe": {}}  # off by default
    for off in (None, 0):
        validate_config({"audit": {"label_issues": {"folds": off}}}, SCHEMA)
    config = validate_config({"audit": {"label_issues": {"folds": 4, "recipe": {"epochs": 3}}}}, SCHEMA)
    assert config["audit"]["label_issues"]["recipe"] == {"epochs": 3}  # overrides only: no defaults filled in
    with pytest.raises(PipelineError, match=message):
        validate_config({"audit": {"label_issues": label_issues}}, SCHEMA)


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


def test_recipe_fields_are_the_schema_train_keys_with_their_types_and_choices():
    train = yaml.safe_load(SCHEMA.read_text())["properties"]["train"]["properties"]
    hints = typing.get_type_hints(Recipe)
    assert [f.name for f in fields(Recipe)] == list(hints) and set(hints) == set(train)
    python_type = {"integer": int, "number": float, "boolean": bool}
    for name, hint in hints.items():
        spec = train[name]
        if "enum" in spec:
            assert (
                typing.get_origin(hint) is typing.Literal and list(typing.get_args(hint)) == spec["enum"]
            ), name
        elif spec["type"] == "array":
            items = (python_type[spec["items"]["type"]],) * spec["maxItems"]
            assert typing.get_origin(hint) is tuple and typing.get_args(hint) == items, name
        elif isinstance(spec["type"], list):  # [number, "null"]: optional, null = off
            assert spec["type"][1] == "null" and spec["default"] is None, name
            assert hint == python_type[spec["type"][0]] | None, name
        else:
            assert hint is python_type[spec["type"]], name


def test_recipe_keeps_the_config_json_and_hash_byte_for_byte():
    config = defaults()
    config["experiments"] = {"default": {}, "big": {"lr": 1, "widths": [64, 256, 256], "ema": 0}}
    for name, overrides in config["experiments"].items():
        plain = {**config["train"], **overrides}  # the dict the rules used before the dataclass
        typed = recipe(config, name)
        assert typed.asdict() == plain and Recipe.from_config(typed.asdict()) == typed
        assert typed.to_json() == json.dumps(plain, sort_keys=True)
        assert typed.sha256() == hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()
    big = recipe(config, "big")
    assert (big.lr, big.widths, big.model) == (1, (64, 256, 256), "fast")
    assert '"lr": 1,' in big.to_json() and '"ema": 0,' in big.to_json()  # ints stay ints: same JSON
    assert list(big.asdict()) == sorted(big.asdict())
    assert replace(big, seed=1).sha256() != big.sha256()
    with pytest.raises(
        PipelineError, match=r"unknown experiment 'nope'; config `experiments` has: big, default"
    ):
        recipe(config, "nope")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": "fast"}, r"recipe key 'lr' = 'fast' is invalid: expected a number"),
        ({"lr": True}, r"recipe key 'lr' = True is invalid: expected a number"),
        ({"epochs": 2.0}, r"recipe key 'epochs' = 2\.0 is invalid: expected an integer"),
        ({"nesterov": 1}, r"recipe key 'nesterov' = 1 is invalid: expected true or false"),
        ({"widths": [8, 16]}, r"recipe key 'widths' = \[8, 16\] is invalid: expected a list of 3 integers"),
        ({"widths": [8, 16, 1.5]}, r"recipe key 'widths' = \[8, 16, 1\.5\] is invalid"),
        ({"model": "vgg19"}, r"recipe key 'model' = 'vgg19' is invalid: expected one of 'fast', 'simple'"),
        ({"budget_s": "10"}, r"recipe key 'budget_s' = '10' is invalid: expected a number or null"),
        (
            {"lr_max": 0.1},
            r"unknown recipe key 'lr_max'; known keys: alternate_flip, batch_size, budget_s, device",
        ),
    ],
)
def test_recipe_rejects_a_bad_key_naming_it(change, message):
    with pytest.raises(PipelineError, match=message):
        Recipe.from_config({**defaults()["train"], **change})


def test_a_time_budget_is_off_by_default_and_must_be_positive():
    assert defaults()["train"]["budget_s"] is None
    assert Recipe.from_config({**defaults()["train"], "budget_s": 600}).budget_s == 600  # an int is a number
    for bad in (0, -5, "600"):
        with pytest.raises(PipelineError, match=rf"config key 'train\.budget_s' = '?{bad}'? is invalid"):
            validate_config({"train": {"budget_s": bad}}, SCHEMA)


def test_recipe_without_a_key_names_it():
    train = defaults()["train"]
    del train["seed"]
    with pytest.raises(PipelineError, match=r"the recipe lacks key 'seed': give every key"):
        Recipe.from_config(train)
    del train["lr"]
    with pytest.raises(PipelineError, match=r"the recipe lacks keys 'lr', 'seed': give every key"):
        Recipe.from_config(train)


@pytest.mark.parametrize(
    "preset", sorted(p.name for p in (ROOT / "config").glob("*.yaml") if p.name != "schema.yaml")
)
def test_every_config_preset_is_valid(preset):
    """The presets users pass with --configfile (merged over config.yaml) validate as they are."""
    overlay = yaml.safe_load((ROOT / "config" / preset).read_text())
    resolved = validate_config(overlay, SCHEMA)
    assert resolved["train"] == {**defaults()["train"], **overlay.get("train", {})}
