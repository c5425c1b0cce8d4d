"""Rule promote_rung: after a rung of a halving sweep, rank the trials that trained it by validation
accuracy and name the best 1/eta that go on to the next rung (decision.json, which the workflow
reads as a checkpoint); the others stop there."""

import argparse
import json
from pathlib import Path

from cifarflow.errors import PipelineError
from cifarflow.runtime import log, run_cli, write_json, write_metrics
from cifarflow.sweep import Sweep, entering, epochs_text, promote_rung, rung_metrics


def main(args: argparse.Namespace) -> None:
    sweep = Sweep.from_json(args.sweep)
    before = json.loads(Path(args.previous).read_text()) if args.previous else None
    trials = entering(sweep, args.rung, before)
    if len(trials) != len(args.metrics):
        raise PipelineError(
            f"--metrics has {len(args.metrics)} files for the {len(trials)} trials of rung {args.rung}"
        )
    results = {
        name: json.loads(Path(path).read_text()) for name, path in zip(trials, args.metrics, strict=True)
    }
    decision = promote_rung(sweep, args.rung, results)
    for row in decision["trials"]:
        figure = f"val accuracy {row['val_accuracy']:.4f}" if row["outcome"] == "ok" else row["reason"]
        log.info("%s %s: %s, %s%s", row["rank"] or "-", row["trial"], row["outcome"], figure,
                 ", promoted" if row["promoted"] else "")  # fmt: skip
    write_json(args.decision, decision)
    write_metrics(args.summary, rung_metrics(decision))
    log.info(
        "sweep %s, rung %d (%s): %d of %d go on to %d epochs: %s",
        sweep.name, args.rung, epochs_text(decision["epochs"]), len(decision["promoted"]),
        decision["entered"], decision["next_epochs"], ", ".join(decision["promoted"]),
    )  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweep", required=True, help="the expanded sweep, JSON (cifarflow.sweep.Sweep)")
    parser.add_argument("--rung", type=int, required=True, help="the rung decided, from 0")
    parser.add_argument("--previous", help="the decision.json of the rung before (none at rung 0)")
    parser.add_argument(
        "--metrics",
        nargs="+",
        required=True,
        help="the rung's metrics.json of the trials that entered it, in trial order",
    )
    parser.add_argument("--decision", required=True, help="where to write decision.json")
    parser.add_argument("--summary", required=True, help="where to write the decision's metrics.json")
    run_cli(main, parser)
