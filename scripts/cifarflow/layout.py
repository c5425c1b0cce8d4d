"""Where the workflow's files are, for the Snakefile while it parses (rules/common.smk).

The standard library only: parsing imports none of the pipeline's dependencies (tests/test_style.py).
- a prepared dataset's array files, which cifarflow.dataset writes and reads;
- what the serving image is made of, which cifarflow.engines assembles into its build context: the
  entry point scripts/serve.py, the package cifarflow.serving whole, the recipe files in
  containers/serving/ and the lock.
"""

from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1]
ROOT = SCRIPTS.parent

SPLITS = ("train", "val", "test")


def array_files(split: str) -> tuple[str, str]:
    return f"{split}_images.npy", f"{split}_labels.npy"


SERVE = SCRIPTS / "serve.py"
SERVING_PACKAGE = SCRIPTS / "cifarflow" / "serving"
CONTAINERS = ROOT / "containers" / "serving"
RECIPE_FILES = ("Dockerfile", "serving.def", "requirements.txt")
# The lock (make lock): the exact versions requirements.txt installs at, direct and transitive.
LOCK = ROOT / "constraints.txt"


def serving_code() -> list[Path]:
    """The code the serving image carries, under scripts/: its entry point, cifarflow/__init__.py (so
    that cifarflow.serving is found as a subpackage) and every module of cifarflow.serving."""
    return [SERVE, SCRIPTS / "cifarflow" / "__init__.py", *sorted(SERVING_PACKAGE.rglob("*.py"))]


def serving_sources() -> list[Path]:
    """Everything the serving image is built from but the model: a change to any of these rebuilds it."""
    return [*serving_code(), *(CONTAINERS / name for name in RECIPE_FILES), LOCK]
