"""One logging set-up for every program: a rule script's log file and stderr, and the serving image's
server, which carries cifarflow.serving.logs without the pipeline's dependencies."""

import json
import os
import re
import subprocess
import sys
import textwrap

from cifarflow.engines import assemble_context
from conftest import ROOT

LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|ERROR) (\S+) (.*)$")

# A rule CLI as the scripts/ ones are: argparse -> run_cli(main) with a library logger's lines.
RULE_CLI = textwrap.dedent(
    """
    import argparse, logging, sys
    from cifarflow.errors import PipelineError
    from cifarflow.runtime import run_cli

    def main(args):
        logging.getLogger("cifarflow").info("working on %s", args.what)
        logging.getLogger("somelib").warning("a third-party warning")
        if args.what == "bad":
            raise PipelineError("bad input: pass a good one")

    parser = argparse.ArgumentParser()
    parser.add_argument("--what")
    run_cli(main, parser)
    """
)


def run_rule_cli(tmp_path, what: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = tmp_path / "logs" / "rule" / f"{what}.log"  # its folder does not exist yet
    run = subprocess.run(
        [sys.executable, "-c", RULE_CLI, "--what", what, "--log", str(log)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "scripts")},
    )
    return run, log.read_text().splitlines()


def test_a_rule_cli_logs_every_line_to_its_log_file_and_stderr_in_one_format(tmp_path):
    run, lines = run_rule_cli(tmp_path, "good")
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == lines  # the same lines in both places
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [(m[1], m[2]) for m in parsed] == [
        ("INFO", "cifarflow"),  # where the job runs
        ("INFO", "cifarflow"),  # the software versions it runs with
        ("INFO", "cifarflow"),
        ("WARNING", "somelib"),  # another library's record, under its own name
        ("INFO", "cifarflow"),  # done in ...
    ]
    assert parsed[1][3].startswith("software versions: {") and parsed[2][3] == "working on good"
    assert parsed[-1][3].startswith("done in ")


def test_a_failing_rule_cli_logs_the_error_and_overwrites_the_old_log(tmp_path):
    run_rule_cli(tmp_path, "bad")
    run, lines = run_rule_cli(tmp_path, "bad")  # a rerun: one run's lines, not two
    assert run.returncode == 1
    assert sum("working on bad" in line for line in lines) == 1
    assert LINE.match(lines[-1]).groups() == ("ERROR", "cifarflow", "bad input: pass a good one")
    assert "Traceback" not in run.stderr


def test_the_serving_image_code_sets_up_logging_without_the_pipeline_dependencies(tmp_path):
    """What build_serving_image puts in the image imports and logs on its own: no tqdm (runtime.py's),
    no torch, and every cifarflow module it loads is one the image carries."""
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read here")
    context = tmp_path / "context"
    context.mkdir()
    assemble_context(model, context)
    probe = textwrap.dedent(
        f"""
        import json, logging, sys
        sys.path.insert(0, {str(context)!r})  # as serve.py does in the image: /app first
        from cifarflow.serving.logs import setup_logging
        import cifarflow.serving.server
        setup_logging()
        logging.getLogger("cifarflow").info("ready")
        print(json.dumps({{
            "modules": sorted(m.__file__ for n, m in sys.modules.items() if n.split(".")[0] == "cifarflow"),
            "third_party": sorted(n for n in ("tqdm", "torch", "mlflow") if n in sys.modules),
        }}))
        """
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout)
    carried = {str(path) for path in context.rglob("*.py")}
    assert str(context / "cifarflow" / "serving" / "logs.py") in carried
    assert loaded["modules"] and set(loaded["modules"]) <= carried, loaded["modules"]
    assert loaded["third_party"] == []
    assert LINE.match(run.stderr.splitlines()[-1]).groups() == ("INFO", "cifarflow", "ready")
