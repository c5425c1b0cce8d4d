"""Sweeps: the `sweep` section expanded into trials (names, settings, seeded draws, the size limit,
bad keys and ranges named), mixed with hand-written experiments, and the ranking by validation."""

import copy
import math
import re

import pytest
import yaml
from cifarflow.config import load_schema, validate_config
from cifarflow.errors import PipelineError
from cifarflow.sweep import (
    Sweep,
    entering,
    experiments,
    plan,
    promote_rung,
    rank,
    ranking_metrics,
    stop_reason,
    stopped_at,
)
from conftest import ROOT
from snakemake.utils import update_config

SCHEMA_PATH = ROOT / "config" / "schema.yaml"
SCHEMA = load_schema(SCHEMA_PATH)
EXPERIMENT_NAME = re.compile(SCHEMA["properties"]["experiments"]["propertyNames"]["pattern"])


def config(sweep: dict, experiments_: dict | None = None) -> dict:
    """config.yaml with an overlay merged in as Snakemake merges --configfile, then validated."""
    merged = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    overlay = {"sweep": copy.deepcopy(sweep)}
    if experiments_ is not None:
        overlay["experiments"] = experiments_
    update_config(merged, overlay)
    return validate_config(merged, SCHEMA_PATH)


def planned(sweep: dict):
    return plan(config(sweep), SCHEMA)


GRID = {
    "name": "lrw",
    "parameters": {"lr": [0.1, 0.3], "widths": [[16, 32, 64], [32, 64, 128]], "epochs": [3]},
}
RANDOM = {
    "name": "search",
    "method": "random",
    "trials": 6,
    "seed": 7,
    "parameters": {
        "lr": {"min": 0.01, "max": 1.0, "scale": "log"},
        "weight_decay": {"min": 0.0001, "max": 0.001},
        "epochs": {"min": 2, "max": 5},
        "batch_size": {"min": 64, "max": 512, "scale": "log"},
        "optimizer": ["sgd", "adamw"],
    },
}


def test_no_parameters_no_sweep():
    assert planned({}) is None
    assert planned({"name": "x", "method": "random", "trials": 3}) is None


def test_grid_names_each_trial_by_the_settings_it_varies():
    sweep = planned(GRID)
    assert sweep.method == "grid" and sweep.swept == ("lr", "widths") and sweep.promote == 1
    assert sweep.trials == {
        "lrw-lr0.1-w16x32x64": {"epochs": 3, "lr": 0.1, "widths": [16, 32, 64]},
        "lrw-lr0.1-w32x64x128": {"epochs": 3, "lr": 0.1, "widths": [32, 64, 128]},
        "lrw-lr0.3-w16x32x64": {"epochs": 3, "lr": 0.3, "widths": [16, 32, 64]},
        "lrw-lr0.3-w32x64x128": {"epochs": 3, "lr": 0.3, "widths": [32, 64, 128]},
    }
    assert sweep.tags("lrw-lr0.3-w16x32x64") == {
        "sweep": "lrw",
        "sweep.trial": "lrw-lr0.3-w16x32x64",
        "sweep.epochs": "3",
        "sweep.lr": "0.3",
        "sweep.widths": "[16, 32, 64]",
    }


def test_grid_names_of_every_kind_of_value_are_valid_experiment_names():
    sweep = planned(
        {
            "name": "all.kinds_1",
            "parameters": {
                "weight_decay": [0.00001, 0.0005],
                "optimizer": ["sgd", "adamw"],
                "flip": [True, False],
                "batch_size": [128, 256],
            },
        }
    )
    names = list(sweep.trials)
    assert len(names) == 16
    assert (
        "all.kinds_1-bs128-flip-sgd-wd1e-05" in names and "all.kinds_1-bs256-noflip-adamw-wd0.0005" in names
    )
    assert all(EXPERIMENT_NAME.match(name) and "/" not in name for name in names)
    # the order the keys are written in does not matter: the same settings, the same names
    reordered = dict(reversed(list(GRID["parameters"].items())))
    assert planned({**GRID, "parameters": reordered}).trials == planned(GRID).trials


def test_random_trials_are_numbered_drawn_within_their_ranges_and_typed():
    sweep = planned(RANDOM)
    assert list(sweep.trials) == [f"search-{n:03d}" for n in range(1, 7)]
    assert sweep.swept == ("batch_size", "epochs", "lr", "optimizer", "weight_decay")
    for settings in sweep.trials.values():
        assert 0.01 <= settings["lr"] <= 1.0 and isinstance(settings["lr"], float)
        assert float(f"{settings['lr']:.3g}") == settings["lr"]  # three significant digits
        assert 0.0001 <= settings["weight_decay"] <= 0.001
        assert settings["epochs"] in range(2, 6) and isinstance(settings["epochs"], int)
        assert 64 <= settings["batch_size"] <= 512 and isinstance(settings["batch_size"], int)
        assert settings["optimizer"] in ("sgd", "adamw")
    # not all the same: the draws vary (log scale: spread over decades)
    lrs = [s["lr"] for s in sweep.trials.values()]
    assert len(set(lrs)) == 6 and max(lrs) / min(lrs) > 3


def test_random_draws_are_a_function_of_seed_trial_and_key():
    sweep = planned(RANDOM)
    assert planned(copy.deepcopy(RANDOM)).trials == sweep.trials  # same config, same trials
    other_seed = planned({**RANDOM, "seed": 8})
    assert list(other_seed.trials) == list(sweep.trials) and other_seed.trials != sweep.trials
    # raising `trials` keeps the earlier ones: nothing already trained changes
    more = planned({**RANDOM, "trials": 10})
    assert {k: more.trials[k] for k in sweep.trials} == sweep.trials and len(more.trials) == 10
    # a new parameter leaves the other parameters' draws alone
    parameters = {**RANDOM["parameters"], "momentum": {"min": 0.8, "max": 0.95}}
    extended = planned({**RANDOM, "parameters": parameters})
    for name, settings in extended.trials.items():
        assert {k: v for k, v in settings.items() if k != "momentum"} == sweep.trials[name]


def test_a_log_range_spreads_over_decades():
    lr = {"min": 0.001, "max": 10.0, "scale": "log"}
    sweep = planned({"name": "s", "method": "random", "trials": 64, "parameters": {"lr": lr}})
    decades = [math.floor(math.log10(s["lr"])) for s in sweep.trials.values()]
    assert {d: decades.count(d) for d in range(-3, 1)} == pytest.approx({d: 16 for d in range(-3, 1)}, abs=9)


def test_a_sweep_over_the_limit_is_refused_with_its_count():
    big = {"name": "big", "parameters": {"lr": [0.1, 0.2, 0.3, 0.4, 0.5], "seed": list(range(13))}}
    with pytest.raises(
        PipelineError, match=r"sweep 'big' has 65 trials \(5 lr x 13 seed\), more than sweep\.max_trials = 64"
    ):
        planned(big)
    assert len(planned({**big, "max_trials": 65}).trials) == 65
    # refused before anything is generated: a grid of 10^12 combinations answers at once
    huge = {
        "name": "huge",
        "parameters": {key: list(range(1, 1001)) for key in ("epochs", "batch_size", "seed")},
    }
    with pytest.raises(PipelineError, match=r"has 1000000000 trials"):
        planned(huge)
    with pytest.raises(
        PipelineError,
        match=r"sweep 'r' has 100 trials \(sweep\.trials = 100\), more than sweep\.max_trials = 64",
    ):
        planned({"name": "r", "method": "random", "trials": 100, "parameters": {"lr": [0.1, 0.2]}})


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        (
            {"parameters": {"lrr": [0.1]}},
            r"'sweep\.parameters' names 'lrr', not a train key; a sweep sets train keys: .*lr,",
        ),
        (
            {"parameters": {"lr": [0.1, -1]}},
            r"'sweep\.parameters\.lr\[1\]' = -1 is invalid: -1 is less than or equal to the minimum of 0",
        ),
        ({"parameters": {"widths": [[16, 32]]}}, r"'sweep\.parameters\.widths\[0\]' = \[16, 32\] is invalid"),
        (
            {"parameters": {"optimizer": ["sgd", "lion"]}},
            r"'sweep\.parameters\.optimizer\[1\]' = 'lion' is invalid",
        ),
        (
            {"parameters": {"lr": {"min": 0.1, "max": 1}}},
            r"'sweep\.parameters\.lr' is a range, but a grid needs a list of values",
        ),
        (
            {"method": "random", "trials": 2, "parameters": {"optimizer": {"min": 0, "max": 1}}},
            r"'sweep\.parameters\.optimizer' is a range, but train\.optimizer is not a number",
        ),
        (
            {"method": "random", "trials": 2, "parameters": {"lr": {"min": 1, "max": 0.1}}},
            r"'sweep\.parameters\.lr': min 1 must be below max 0\.1",
        ),
        (
            {
                "method": "random",
                "trials": 2,
                "parameters": {"weight_decay": {"min": 0, "max": 0.1, "scale": "log"}},
            },
            r"'sweep\.parameters\.weight_decay': a log scale needs min > 0, not 0",
        ),
        (
            {"method": "random", "trials": 2, "parameters": {"momentum": {"min": 0.5, "max": 2}}},
            r"'sweep\.parameters\.momentum\.max' = 2 is invalid: 2 is greater than the maximum of 0\.999",
        ),
        (
            {"method": "random", "trials": 2, "parameters": {"epochs": {"min": 1.5, "max": 4}}},
            r"'sweep\.parameters\.epochs\.min' = 1\.5 is invalid: 1\.5 is not of type 'integer'",
        ),
        ({"trials": 3, "parameters": {"lr": [0.1]}}, r"'sweep\.trials' is for random draws"),
        ({"method": "random", "parameters": {"lr": [0.1]}}, r"'sweep\.trials' is required for random draws"),
    ],
)
def test_bad_keys_values_and_ranges_are_named(sweep, message):
    with pytest.raises(PipelineError, match=message):
        planned({"name": "s", **sweep})


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        (
            {"parameters": {"lr": 0.1}},
            r"'sweep\.parameters\.lr' = 0\.1 is invalid: .*a list of values, or a range",
        ),
        ({"parameters": {"lr": []}}, r"'sweep\.parameters\.lr' = \[\] is invalid: \[\] should be non-empty"),
        (
            {"parameters": {"lr": [0.1, 0.1]}},
            r"'sweep\.parameters\.lr' = \[0\.1, 0\.1\] is invalid: .*non-unique",
        ),
        (
            {"parameters": {"lr": {"min": 0.1}}},
            r"'sweep\.parameters\.lr' = .* is invalid: 'max' is a required",
        ),
        (
            {"parameters": {"lr": {"min": 0.1, "max": 1, "step": 2}}},
            r"unknown config key 'sweep\.parameters\.lr\.step'",
        ),
        (
            {"parameters": {"lr": {"min": 0.1, "max": 1, "scale": "exp"}}},
            r"'sweep\.parameters\.lr\.scale' = 'exp' is invalid: 'exp' is not one of \['linear', 'log'\]",
        ),
        ({"name": "a/b"}, r"'sweep\.name' = 'a/b' is invalid"),
        ({"max_trials": 0}, r"'sweep\.max_trials' = 0 is invalid"),
        ({"promote": 0}, r"'sweep\.promote' = 0 is invalid"),
        ({"method": "bayes"}, r"'sweep\.method' = 'bayes' is invalid"),
        ({"grid": {}}, r"unknown config key 'sweep\.grid'"),
    ],
)
def test_the_schema_names_bad_sweep_sections(sweep, message):
    with pytest.raises(PipelineError, match=message):
        validate_config({"sweep": sweep}, SCHEMA_PATH)


def test_sweeps_and_hand_written_experiments_mix():
    cfg = config(GRID, {"vgg": {"model": "vgg11"}})
    merged = experiments(cfg, plan(cfg, SCHEMA))
    assert list(merged) == ["default", "vgg", *planned(GRID).trials]  # config.yaml's default stays
    assert merged["vgg"] == {"model": "vgg11"} and merged["lrw-lr0.1-w16x32x64"]["lr"] == 0.1
    # null drops an experiment that config.yaml defines: only the sweep trains
    cfg = config(GRID, {"default": None})
    assert list(experiments(cfg, plan(cfg, SCHEMA))) == list(planned(GRID).trials)
    # no sweep: the experiments as before (config.yaml's default and the overlay's)
    cfg = config({}, {"short": {"epochs": 2}})
    assert experiments(cfg, None) == {"default": {}, "short": {"epochs": 2}}


def test_a_trial_named_like_an_experiment_is_an_error_naming_both():
    cfg = config(GRID, {"lrw-lr0.3-w16x32x64": {"epochs": 9}})
    with pytest.raises(
        PipelineError,
        match=r"sweep 'lrw' trial 'lrw-lr0\.3-w16x32x64' \(epochs=3, lr=0\.3, widths=\[16, 32, 64\]\) "
        r"has the name of experiment 'lrw-lr0\.3-w16x32x64' in `experiments` \(epochs=9\): rename the sweep",
    ):
        experiments(cfg, plan(cfg, SCHEMA))


def test_nothing_to_train_is_an_error():
    cfg = config({}, {"default": None})
    with pytest.raises(
        PipelineError, match="nothing to train: every name in `experiments` is null and there is no sweep"
    ):
        experiments(cfg, None)


# -- ranking ---------------------------------------------------------------------------------------

TRIALS = {
    "s-a": {"lr": 0.1},
    "s-b": {"lr": 0.3},
    "s-c": {"lr": 1000.0},
    "s-d": {"lr": 0.2},
    "s-e": {"lr": 0.05},
}


def result(val: float, test: float, val_loss: float = 0.5) -> dict:
    return {
        "outcome": "ok",
        "val_accuracy": val,
        "val_loss": val_loss,
        "test_accuracy": test,
        "train_seconds": 3.5,
        "epochs": 4,
    }


RESULTS = {
    "s-a": result(0.90, 0.99),  # the best test accuracy, not the best validation accuracy
    "s-b": result(0.95, 0.91),
    "s-c": {
        "outcome": "diverged",
        "reason": "training diverged: loss is nan at epoch 1, step 3 (lr 1000)",
        "epochs": 0,
    },
    "s-d": result(0.95, 0.93, val_loss=0.4),  # ties s-b on accuracy, lower loss: ranks first
    "s-e": {
        "val_accuracy": 0.5,
        "val_loss": 1.2,
        "test_accuracy": 0.49,
        "train_seconds": 2.0,
        "epochs": 4,
    },  # before outcomes
}


def sweep(promote: int = 1) -> Sweep:
    return Sweep("s", "grid", ("lr",), TRIALS, promote)


def test_ranking_orders_by_validation_accuracy_and_lists_stopped_trials_last():
    ranking = rank(sweep(), RESULTS)
    order = [(row["trial"], row["rank"], row["outcome"]) for row in ranking["trials"]]
    assert order == [
        ("s-d", 1, "ok"),
        ("s-b", 2, "ok"),
        ("s-a", 3, "ok"),
        ("s-e", 4, "ok"),
        ("s-c", None, "diverged"),
    ]
    assert ranking["promoted"] == ["s-d"] and ranking["selected_on"] == "val_accuracy"
    assert ranking["sweep"] == "s" and ranking["swept"] == ["lr"] and ranking["promote"] == 1
    diverged = ranking["trials"][-1]
    assert diverged["reason"].startswith("training diverged: loss is nan") and diverged["settings"] == {
        "lr": 1000.0
    }
    assert diverged["val_accuracy"] is None and not diverged["promoted"]
    best = ranking["trials"][0]
    assert best["promoted"] and best["test_accuracy"] == 0.93 and best["train_seconds"] == 3.5
    assert ranking_metrics(ranking) == {
        "trials": 5,
        "trials_finished": 4,
        "trials_stopped": 1,
        "best_val_accuracy": 0.95,
        "best_test_accuracy": 0.93,
    }


def test_test_accuracy_never_chooses():
    # s-a has by far the best test accuracy; raising it further changes nothing
    boosted = {**RESULTS, "s-a": result(0.90, 1.0)}
    assert rank(sweep(2), boosted)["promoted"] == rank(sweep(2), RESULTS)["promoted"]
    assert rank(sweep(2), RESULTS)["promoted"] == ["s-d", "s-b"]


def test_promote_takes_at_most_the_trials_that_finished():
    assert rank(sweep(10), RESULTS)["promoted"] == ["s-d", "s-b", "s-a", "s-e"]


def test_no_finished_trial_is_an_error_with_every_reason():
    stopped = {name: {"outcome": "diverged", "reason": f"training diverged ({name})"} for name in TRIALS}
    with pytest.raises(
        PipelineError,
        match=r"none of its 5 trials finished training(.|\n)*s-c: diverged: training diverged \(s-c\)",
    ):
        rank(sweep(), stopped)


def test_a_sweep_travels_as_json_to_the_ranking_step():
    planned_ = planned(RANDOM)
    assert Sweep.from_json(planned_.to_json()) == planned_


def test_a_missing_result_is_named():
    with pytest.raises(PipelineError, match=r"no training result for trial\(s\) s-c"):
        rank(sweep(), {k: v for k, v in RESULTS.items() if k != "s-c"})


# -- Successive halving ----------------------------------------------------------------------------

HALVING = {
    "name": "sh",
    "method": "halving",
    "halving": {"min_epochs": 1, "eta": 3},
    "parameters": {"lr": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]},
}


def planned_halving(sweep: dict, epochs: int):
    merged = config(sweep)
    merged["train"]["epochs"] = epochs
    return plan(merged, SCHEMA)


def rung_result(val: float | None, epochs: int, outcome: str = "ok") -> dict:
    if outcome != "ok":
        return {"outcome": outcome, "reason": "training diverged: loss is nan", "epochs": 0}
    return {"outcome": "ok", "val_accuracy": val, "val_loss": 1 - val, "train_seconds": 1.0, "epochs": epochs}


def test_halving_rungs_grow_by_eta_up_to_the_full_schedule():
    sweep = planned_halving(HALVING, 27)
    assert sweep.method == "halving" and sweep.halving and sweep.eta == 3
    assert sweep.rungs == (1, 3, 9, 27) and len(sweep.trials) == 9 and "sh-lr0.01" in sweep.trials
    # the last rung completes the schedule even where it is no power of eta
    assert planned_halving(HALVING, 20).rungs == (1, 3, 9, 20)
    assert planned_halving({**HALVING, "halving": {"min_epochs": 2, "eta": 2}}, 9).rungs == (2, 4, 8, 9)
    assert planned_halving({**HALVING, "halving": {}}, 4).rungs == (1, 3, 4)  # defaults: 1, eta 3
    assert Sweep.from_json(sweep.to_json()) == sweep
    assert planned(GRID).rungs == () and not planned(GRID).halving
    # trials drawn at random, as method random draws them
    drawn = planned_halving({**RANDOM, "method": "halving", "halving": {"sample": "random"}, "parameters": {
        key: value for key, value in RANDOM["parameters"].items() if key != "epochs"}}, 9)  # fmt: skip
    assert list(drawn.trials) == [f"search-{n:03d}" for n in range(1, 7)] and drawn.rungs == (1, 3, 9)


@pytest.mark.parametrize(
    ("sweep", "epochs", "message"),
    [
        (
            {**HALVING, "halving": {"min_epochs": 4}},
            4,
            r"'sweep\.halving\.min_epochs' = 4 is not below train\.epochs = 4",
        ),
        (
            {**HALVING, "parameters": {"epochs": [2, 4]}},
            4,
            r"'sweep\.parameters\.epochs' cannot be swept with method halving",
        ),
        ({**HALVING, "trials": 3}, 9, r"'sweep\.trials' is for random draws.*sweep\.halving\.sample: random"),
        ({**HALVING, "halving": {"eta": 1}}, 9, r"'sweep\.halving\.eta' = 1 is invalid"),
        ({**HALVING, "halving": {"sample": "bayes"}}, 9, r"'sweep\.halving\.sample' = 'bayes' is invalid"),
    ],
)
def test_bad_halving_settings_are_named(sweep, epochs, message):
    with pytest.raises(PipelineError, match=message):
        planned_halving(sweep, epochs)


def test_each_rung_promotes_the_best_third_by_validation_and_never_a_diverged_trial():
    sweep = planned_halving(HALVING, 27)
    trials = list(sweep.trials)
    results = {name: rung_result(0.1 * i, 1) for i, name in enumerate(trials)}
    results[trials[-1]] = rung_result(None, 1, "diverged")  # would be the best; it has no result
    decision = promote_rung(sweep, 0, results)
    assert (decision["entered"], decision["keep"], decision["epochs"], decision["next_epochs"]) == (
        9,
        3,
        1,
        3,
    )
    assert decision["promoted"] == [trials[7], trials[6], trials[5]]
    assert [row["rank"] for row in decision["trials"]] == [1, 2, 3, 4, 5, 6, 7, 8, None]
    assert entering(sweep, 1, decision) == [trials[5], trials[6], trials[7]]  # in trial order
    assert entering(sweep, 0, None) == trials
    assert stopped_at(trials[7], [decision]) is None and stopped_at(trials[0], [decision]) == 0
    reason = stop_reason(trials[0], decision)
    assert reason == (
        "stopped by successive halving after rung 0 (1 epoch): validation accuracy 0.0000, rank 8 of 9; "
        "the best 3 went on"
    )
    assert stop_reason(trials[-1], decision) == "training diverged: loss is nan"
    # rung 1: three entered, one goes on (at least one, however few enter)
    second = promote_rung(sweep, 1, {name: rung_result(0.5, 3) for name in entering(sweep, 1, decision)})
    # a tie of accuracy and loss: the first name
    assert second["keep"] == 1 and second["promoted"] == [min(trials[5:8])] == ["sh-lr10.0"]
    with pytest.raises(PipelineError, match="did not enter rung 1"):
        stopped_at(trials[0], [second])
    with pytest.raises(PipelineError, match="no decision after rung 3"):
        promote_rung(sweep, 3, results)
    with pytest.raises(PipelineError, match="none of the 2 trials of rung 0 trained without fault"):
        promote_rung(sweep, 0, {name: rung_result(None, 1, "diverged") for name in trials[:2]})


def test_the_halving_ranking_lists_the_stopped_by_how_far_they_went_and_counts_trial_epochs():
    sweep = planned_halving({**HALVING, "parameters": {"lr": [0.1, 0.3, 1.0, 3.0]}}, 9)
    final = {"outcome": "ok", "val_accuracy": 0.9, "val_loss": 0.1, "test_accuracy": 0.8, "epochs": 9}

    def stopped(rung: int, val: float) -> dict:
        return {"outcome": "stopped", "reason": "stopped by successive halving", "val_accuracy": val,
                "epochs": sweep.rungs[rung], "stopped_at_rung": rung}  # fmt: skip

    results = {
        "sh-lr0.1": stopped(0, 0.7),
        "sh-lr0.3": stopped(1, 0.6),
        "sh-lr1.0": final,
        "sh-lr3.0": {"outcome": "diverged", "reason": "training diverged", "epochs": 0, "stopped_at_rung": 0},
    }
    ranking = rank(sweep, results)
    assert ranking["rungs"] == [1, 3, 9] and ranking["eta"] == 3 and ranking["promoted"] == ["sh-lr1.0"]
    assert [row["trial"] for row in ranking["trials"]] == ["sh-lr1.0", "sh-lr0.3", "sh-lr0.1", "sh-lr3.0"]
    assert [row["stopped_at_rung"] for row in ranking["trials"]] == [None, 1, 0, 0]
    figures = ranking_metrics(ranking)
    assert figures["trial_epochs"] == 9 + 3 + 1 + 0 and figures["trials_finished"] == 1
    assert "trial_epochs" not in ranking_metrics(
        rank(planned(GRID), {n: final for n in planned(GRID).trials})
    )
