"""Sweeps: the `sweep` config section expanded into trials, which are ordinary experiments, and the
ranking of the trials' results by validation accuracy.

Imported by the Snakefile at parse time, so it stays light: the standard library (and jsonschema
to check a sweep's values).

Names. A grid trial is named by the settings it varies, in key order: `<sweep>-lr0.1-w16x32x64`
(keys with one value are fixed for every trial and left out). A random trial is numbered,
`<sweep>-001`, since drawn values make poor names; its settings are in its MLflow tags, its
recipe and the ranking. The same config always gives the same names and settings.

Draws. A random trial's value of a key is a function of (seed, trial number, key) alone, through
sha256 rather than a stateful generator: raising `trials` keeps the earlier trials as they were
(so they are not retrained), adding a parameter leaves the others' values alone, and no Python or
NumPy release can change them.

Successive halving (method halving; Li et al., "A System for Massively Parallel Hyperparameter
Tuning", MLSys 2020). The trials are drawn as grid or random ones are; each trains in rungs, rung
k ending after min_epochs * eta^k epochs of its one full schedule, the last rung at train.epochs.
After each rung but the last, `promote_rung` keeps the best max(1, entered // eta) by validation
accuracy and the others stop there. It is the synchronous form: a rung is decided once all its
trials have a result, so the same config always promotes the same trials (docs/sweeps.md says why
not the asynchronous one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import PipelineError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a wildcard value and a file name
# Short forms of train keys in grid trial names; keys not listed use their own name, and the
# string-valued ones (model, optimizer, schedule, device) show their value alone.
ABBREVIATIONS = {
    "batch_size": "bs",
    "epochs": "ep",
    "label_smoothing": "ls",
    "momentum": "mom",
    "translate": "tr",
    "warmup": "wu",
    "weight_decay": "wd",
    "widths": "w",
}
SIGNIFICANT_DIGITS = 3  # of a drawn float: 0.0234 rather than 0.023419876, in names, tables and tags
SELECTED_ON = "val_accuracy"  # the validation split: the test split never chooses anything


@dataclass(frozen=True)
class Sweep:
    """A configured sweep, expanded: its trials in order, each with the `train` keys it sets."""

    name: str
    method: Literal["grid", "random", "halving"]
    swept: tuple[str, ...]  # the keys whose values differ between trials, sorted
    trials: dict[str, dict[str, Any]]  # trial name -> its overrides of `train`
    promote: int  # how many of the best go on to export, serving and registration
    rungs: tuple[int, ...] = ()  # halving: the epochs at the end of each rung, the last = train.epochs
    eta: int = 0  # halving: each rung keeps 1/eta of the trials that entered it

    @property
    def halving(self) -> bool:
        return bool(self.rungs)

    def to_json(self) -> str:
        """What the ranking step receives (from_json reads it back)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Sweep:
        values = json.loads(text)
        return cls(**{**values, "swept": tuple(values["swept"]), "rungs": tuple(values.get("rungs", ()))})

    def tags(self, trial: str) -> dict[str, str]:
        """MLflow tags of a trial's training run: the sweep's name and the trial's settings."""
        settings = {f"sweep.{key}": _tag(value) for key, value in self.trials[trial].items()}
        return {"sweep": self.name, "sweep.trial": trial, **settings}


def plan(config: Mapping[str, Any], schema: Mapping[str, Any]) -> Sweep | None:
    """The configured sweep with its trials, or None when `sweep.parameters` is empty.

    `config` has been validated (validate_config); `schema` is config/schema.yaml, whose `train`
    keys are the keys a sweep may set. PipelineError names a bad key, value or range, and refuses
    a sweep larger than sweep.max_trials with its count, before anything is generated.
    """
    section = config["sweep"]
    parameters: Mapping[str, Any] = section["parameters"]
    if not parameters:
        return None
    train = schema["properties"]["train"]["properties"]
    name, method = section["name"], section["method"]
    rungs, eta = (), 0
    if method == "halving":
        halving = section["halving"]
        rungs, eta = halving_rungs(halving, config["train"]["epochs"], parameters), halving["eta"]
    # how the trials are drawn; the hint names the key that sets it
    sampling = section["halving"]["sample"] if method == "halving" else method
    to_random = "sweep.halving.sample: random" if method == "halving" else "sweep.method: random"
    unknown = sorted(set(parameters) - set(train))
    if unknown:
        raise PipelineError(
            f"config key 'sweep.parameters' names {', '.join(map(repr, unknown))}, not a train key; "
            f"a sweep sets train keys: {', '.join(sorted(train))}. Remove or rename it."
        )
    for key in sorted(parameters):
        _check_parameter(key, parameters[key], train[key], sampling, to_random)

    trials = section["trials"]
    if sampling == "grid":
        if trials is not None:
            raise PipelineError(
                "config key 'sweep.trials' is for random draws: a grid has one trial per combination "
                f"of the parameters' values. Remove sweep.trials, or set {to_random}."
            )
        sizes = {key: len(parameters[key]) for key in sorted(parameters)}
        count = math.prod(sizes.values())
        shape = " x ".join(f"{size} {key}" for key, size in sizes.items() if size > 1) or "1"
    else:
        if trials is None:
            raise PipelineError(
                "config key 'sweep.trials' is required for random draws: how many trials to draw."
            )
        count, shape = trials, f"sweep.trials = {trials}"
    if count > section["max_trials"]:
        raise PipelineError(
            f"sweep '{name}' has {count} trials ({shape}), more than sweep.max_trials = "
            f"{section['max_trials']}. Nothing was run: shrink the sweep, or raise sweep.max_trials "
            "on purpose."
        )

    if sampling == "grid":
        settings = _grid(parameters)
        swept = tuple(key for key in sorted(parameters) if len(parameters[key]) > 1)
        named = {_grid_name(name, s, swept): s for s in settings}
    else:
        settings = [_draw(section["seed"], number, parameters, train) for number in range(1, count + 1)]
        swept = tuple(
            key
            for key in sorted(parameters)
            if isinstance(parameters[key], Mapping) or len(parameters[key]) > 1
        )
        named = {f"{name}-{number:03d}": s for number, s in enumerate(settings, start=1)}
    if len(named) != count:  # unique values give unique names; this guards the naming itself
        raise PipelineError(f"sweep '{name}': {count} trials but only {len(named)} distinct names")
    for trial in named:
        if not NAME.match(trial):
            raise PipelineError(f"sweep '{name}': trial name {trial!r} is not a valid experiment name")
    return Sweep(name, method, swept, named, section["promote"], rungs, eta)


def halving_rungs(halving: Mapping[str, Any], epochs: int, parameters: Mapping[str, Any]) -> tuple[int, ...]:
    """The epochs at the end of each rung: min_epochs * eta^k below `epochs`, then `epochs`.

    PipelineError when there would be one rung only (nothing to halve), or when the sweep varies
    `epochs` (the rungs are fractions of one schedule that every trial shares).
    """
    if "epochs" in parameters:
        raise PipelineError(
            "config key 'sweep.parameters.epochs' cannot be swept with method halving: the rungs are "
            "fractions of one full schedule (train.epochs) that every trial shares. Remove it and set "
            "train.epochs, or use method grid or random."
        )
    low, eta = halving["min_epochs"], halving["eta"]
    if low >= epochs:
        raise PipelineError(
            f"config key 'sweep.halving.min_epochs' = {low} is not below train.epochs = {epochs}: "
            "successive halving needs at least two rungs. Lower min_epochs or raise train.epochs."
        )
    rungs = []
    while low < epochs:
        rungs.append(low)
        low *= eta
    return (*rungs, epochs)


def experiments(config: Mapping[str, Any], sweep: Sweep | None) -> dict[str, dict[str, Any]]:
    """Every experiment that trains, name -> overrides of `train`: the hand-written ones (a name
    mapped to null dropped) and the sweep's trials. A trial named like an experiment is an error."""
    written = {name: overrides for name, overrides in config["experiments"].items() if overrides is not None}
    trials = sweep.trials if sweep is not None else {}
    clashes = sorted(set(written) & set(trials))
    if clashes:
        name = clashes[0]
        raise PipelineError(
            f"sweep '{sweep.name}' trial {name!r} ({_settings_text(trials[name])}) has the name of "
            f"experiment {name!r} in `experiments` ({_settings_text(written[name])}): rename the sweep "
            "(sweep.name) or the experiment."
        )
    merged = {**written, **trials}
    if not merged:
        raise PipelineError(
            "nothing to train: every name in `experiments` is null and there is no sweep. "
            "Give an experiment (e.g. experiments: {default: {}}) or sweep.parameters."
        )
    return merged


def _check_parameter(
    key: str, spec: Any, key_schema: Mapping[str, Any], sampling: str, to_random: str
) -> None:
    where = f"sweep.parameters.{key}"
    if not isinstance(spec, Mapping):
        for index, value in enumerate(spec):
            _check_value(f"{where}[{index}]", value, key_schema)
        return
    if sampling == "grid":
        raise PipelineError(
            f"config key '{where}' is a range, but a grid needs a list of values: give one "
            f"(e.g. [0.1, 0.3]), or set {to_random}."
        )
    kind = key_schema.get("type")
    if kind not in ("number", "integer"):
        raise PipelineError(
            f"config key '{where}' is a range, but train.{key} is not a number: give a list of values."
        )
    low, high, scale = spec["min"], spec["max"], spec.get("scale", "linear")
    if not low < high:
        raise PipelineError(f"config key '{where}': min {low!r} must be below max {high!r}.")
    if scale == "log" and low <= 0:
        raise PipelineError(f"config key '{where}': a log scale needs min > 0, not {low!r}.")
    _check_value(f"{where}.min", low, key_schema)
    _check_value(f"{where}.max", high, key_schema)


def _check_value(where: str, value: Any, key_schema: Mapping[str, Any]) -> None:
    """`value` must be valid where the `train` key's schema allows it (type, bounds, enum)."""
    from jsonschema import Draft202012Validator  # here: the ranking step's environment has no jsonschema

    errors = list(Draft202012Validator(key_schema).iter_errors(value))
    if errors:
        hint = " ".join(key_schema.get("description", "").split())
        raise PipelineError(
            f"config key '{where}' = {value!r} is invalid: {errors[0].message}"
            + (f" ({hint})" if hint else "")
        )


def _grid(parameters: Mapping[str, list]) -> list[dict[str, Any]]:
    keys = sorted(parameters)
    return [
        dict(zip(keys, values, strict=True)) for values in itertools.product(*(parameters[k] for k in keys))
    ]


def _grid_name(sweep: str, settings: Mapping[str, Any], swept: tuple[str, ...]) -> str:
    return "-".join([sweep, *(_name_part(key, settings[key]) for key in swept)])


def _name_part(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return key if value else f"no{key}"
    if isinstance(value, str):
        return value
    # repr: the shortest text that reads back as the same number, so distinct values, distinct names
    text = "x".join(str(v) for v in value) if isinstance(value, list) else repr(value)
    return ABBREVIATIONS.get(key, key) + text


def _uniform(seed: int, number: int, key: str) -> float:
    """A number in [0, 1) determined by (seed, trial number, key) alone."""
    digest = hashlib.sha256(f"{seed}:{number}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _draw(seed: int, number: int, parameters: Mapping[str, Any], train: Mapping[str, Any]) -> dict[str, Any]:
    settings = {}
    for key in sorted(parameters):
        spec, u = parameters[key], _uniform(seed, number, key)
        if not isinstance(spec, Mapping):
            settings[key] = spec[min(int(u * len(spec)), len(spec) - 1)]
            continue
        low, high = spec["min"], spec["max"]
        if train[key]["type"] == "integer":
            if spec.get("scale", "linear") == "log":  # uniform in log space over [low, high + 1)
                value = math.floor(math.exp(math.log(low) + u * (math.log(high + 1) - math.log(low))))
            else:
                value = low + math.floor(u * (high - low + 1))
        else:
            if spec.get("scale", "linear") == "log":
                value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
            else:
                value = low + u * (high - low)
            value = float(f"{value:.{SIGNIFICANT_DIGITS}g}")
        settings[key] = min(max(value, low), high)
    return settings


def _tag(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _settings_text(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={_tag(value)}" for key, value in settings.items()) or "base recipe"


# -- Ranking ---------------------------------------------------------------------------------------


def outcome(metrics: Mapping[str, Any]) -> str:
    """ok, or what stopped the training (diverged, failed): training's metrics.json says which.
    A metrics.json written before trainings recorded their outcome is ok when it has a result."""
    return str(
        metrics.get("outcome") or ("ok" if isinstance(metrics.get(SELECTED_ON), int | float) else "failed")
    )


def rank(sweep: Sweep, results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The ranking of a sweep's trials by validation accuracy (ties: lower validation loss, then
    name), the trials that did not finish after them with their reason, and the best `promote`.

    `results`: trial name -> its training's metrics.json. Test accuracy is carried along for the
    report, never looked at. PipelineError when no trial finished.
    """
    missing = [name for name in sweep.trials if name not in results]
    if missing:
        raise PipelineError(f"sweep '{sweep.name}': no training result for trial(s) {', '.join(missing)}")
    rows = []
    for name, settings in sweep.trials.items():
        metrics = results[name]
        rows.append(
            {
                "trial": name,
                "outcome": outcome(metrics),
                "reason": metrics.get("reason"),
                "settings": dict(settings),
                **{
                    key: metrics.get(key)
                    for key in ("val_accuracy", "val_loss", "test_accuracy", "train_seconds", "epochs")
                },
                **({"stopped_at_rung": metrics.get("stopped_at_rung")} if sweep.halving else {}),
            }
        )
    finished = sorted(
        (row for row in rows if row["outcome"] == "ok"),
        key=_by_merit,
    )
    if not finished:
        reasons = "\n  ".join(f"{row['trial']}: {row['outcome']}: {row['reason']}" for row in rows)
        raise PipelineError(
            f"sweep '{sweep.name}': none of its {len(rows)} trials finished training, so there is nothing to "
            f"promote:\n  {reasons}\nChange sweep.parameters (e.g. lower learning rates) and rerun."
        )
    stopped = [row for row in rows if row["outcome"] != "ok"]
    if sweep.halving:  # those that went furthest first, then by their accuracy where they stopped
        stopped.sort(key=lambda row: (-_or_minus_one(row["stopped_at_rung"]), -(row["val_accuracy"] or 0)))
    promoted = [row["trial"] for row in finished[: sweep.promote]]
    for position, row in enumerate(finished, start=1):
        row["rank"] = position
    for row in stopped:
        row["rank"] = None
    for row in rows:
        row["promoted"] = row["trial"] in promoted
    halving = {"rungs": list(sweep.rungs), "eta": sweep.eta} if sweep.halving else {}
    return {
        "sweep": sweep.name,
        "method": sweep.method,
        **halving,
        "swept": list(sweep.swept),
        "selected_on": SELECTED_ON,
        "promote": sweep.promote,
        "promoted": promoted,
        "trials": finished + stopped,
    }


def ranking_metrics(ranking: Mapping[str, Any]) -> dict[str, float]:
    """The sweep's figures for metrics.json (the MLflow hook logs them on the ranking's run)."""
    rows = ranking["trials"]
    best = rows[0]
    figures = {
        "trials": len(rows),
        "trials_finished": sum(row["outcome"] == "ok" for row in rows),
        "trials_stopped": sum(row["outcome"] != "ok" for row in rows),
        "best_val_accuracy": best["val_accuracy"],
        "best_test_accuracy": best["test_accuracy"],
    }
    if "rungs" in ranking:  # the compute the sweep spent, in epochs trained by all its trials
        figures["trial_epochs"] = sum(row["epochs"] or 0 for row in rows)
    return figures


# -- Successive halving ----------------------------------------------------------------------------


def entering(sweep: Sweep, rung: int, before: Mapping[str, Any] | None) -> list[str]:
    """The trials that train rung `rung`: all of them at rung 0, else those that rung - 1's decision
    (`before`, promote_rung's decision.json) promoted, in trial order."""
    if rung == 0:
        return list(sweep.trials)
    promoted = set(before["promoted"])
    return [name for name in sweep.trials if name in promoted]


def promote_rung(sweep: Sweep, rung: int, results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The decision after rung `rung` (not the last): the trials that entered it ranked by validation
    accuracy at the rung's epoch (ties: lower validation loss, then name), the best
    max(1, entered // eta) of those that trained without fault promoted to the next rung.

    `results`: trial name -> its rung's metrics (training.train with stop_after). PipelineError
    when none of them trained without fault: the sweep has nothing to go on with.
    """
    if not 0 <= rung < len(sweep.rungs) - 1:
        raise PipelineError(
            f"sweep '{sweep.name}' has rungs 0 to {len(sweep.rungs) - 2} before its last; no decision "
            f"after rung {rung}"
        )
    rows = [
        {
            "trial": name,
            "outcome": outcome(metrics),
            "reason": metrics.get("reason"),
            "settings": dict(sweep.trials[name]),
            **{key: metrics.get(key) for key in ("val_accuracy", "val_loss", "train_seconds", "epochs")},
        }
        for name, metrics in results.items()
    ]
    ranked = sorted(
        (row for row in rows if row["outcome"] == "ok"),
        key=_by_merit,
    )
    if not ranked:
        reasons = "\n  ".join(f"{row['trial']}: {row['outcome']}: {row['reason']}" for row in rows)
        raise PipelineError(
            f"sweep '{sweep.name}': none of the {len(rows)} trials of rung {rung} trained without fault, so "
            f"none goes on:\n  {reasons}\nChange sweep.parameters (e.g. lower learning rates) and rerun."
        )
    keep = max(1, len(rows) // sweep.eta)
    promoted = [row["trial"] for row in ranked[:keep]]
    for position, row in enumerate(ranked, start=1):
        row["rank"] = position
    faulted = [row for row in rows if row["outcome"] != "ok"]
    for row in faulted:
        row["rank"] = None
    for row in rows:
        row["promoted"] = row["trial"] in promoted
    return {
        "sweep": sweep.name,
        "rung": rung,
        "epochs": sweep.rungs[rung],
        "next_epochs": sweep.rungs[rung + 1],
        "selected_on": SELECTED_ON,
        "entered": len(rows),
        "keep": keep,
        "promoted": promoted,
        "trials": ranked + faulted,
    }


def rung_metrics(decision: Mapping[str, Any]) -> dict[str, float]:
    """A rung decision's figures for its metrics.json (the MLflow hook logs them on its run)."""
    best = decision["trials"][0]
    return {
        "rung": decision["rung"],
        "epochs": decision["epochs"],
        "entered": decision["entered"],
        "promoted": len(decision["promoted"]),
        "best_val_accuracy": best["val_accuracy"],
    }


def stopped_at(trial: str, decisions: list[Mapping[str, Any]]) -> int | None:
    """The rung after which `trial` stopped, from the decisions of the rungs it entered in order
    (promote_rung's), or None when every one of them promoted it (it trains to the end)."""
    for decision in decisions:
        if trial not in {row["trial"] for row in decision["trials"]}:
            raise PipelineError(
                f"trial {trial!r} did not enter rung {decision['rung']} of sweep '{decision['sweep']}': "
                "the decisions given are not the rungs it trained"
            )
        if trial not in decision["promoted"]:
            return decision["rung"]
    return None


def epochs_text(epochs: int) -> str:
    """'1 epoch', '3 epochs'."""
    return f"{epochs} epoch{'' if epochs == 1 else 's'}"


def stop_reason(trial: str, decision: Mapping[str, Any]) -> str:
    """Why a trial stopped after a rung, for its metrics.json (a tag in MLflow) and the ranking."""
    row = next(row for row in decision["trials"] if row["trial"] == trial)
    if row["outcome"] != "ok":
        return str(row["reason"])
    return (
        f"stopped by successive halving after rung {decision['rung']} ({epochs_text(decision['epochs'])}): "
        f"validation accuracy {row['val_accuracy']:.4f}, rank {row['rank']} of {decision['entered']}; "
        f"the best {decision['keep']} went on"
    )


def _or_minus_one(value: Any) -> float:
    return value if isinstance(value, int | float) else -1


def _by_merit(row: dict) -> tuple:
    """The order of trials that trained: validation accuracy, then the lower validation loss, then
    the name (the ranking and every rung's decision)."""
    return (-row["val_accuracy"], _or_inf(row["val_loss"]), row["trial"])


def _or_inf(value: Any) -> float:
    return value if isinstance(value, int | float) else math.inf
