"""Snakemake logger plugin `mlflow`: every job's params, metrics and files, logged to MLflow.

Found by Snakemake because the package is named `snakemake_logger_plugin_<name>` and lies on
`sys.path`; enabled with `--logger mlflow` (this project: `logger: [mlflow]` in
profiles/default/config.yaml). Its settings, as `--logger-mlflow-<field>` options, are in
`plugin.py`; the MLflow side lives in `hook.py`. What is logged where: docs/tracking.md.

- `plugin.py`: `LogHandler`, `LogHandlerSettings` (Snakemake's side; imports its plugin interface)
- `hook.py`: the run lifecycle (imports MLflow only once an invocation has jobs to run), helped by
  `capture.py` (what the logging thread hands over), `store.py` (opening it, batches), `runs.py`
  (what each run gets), `hashing.py`, `copies.py` (a job's files) and `failures.py`
- `content.py`: what is read from a job's files (plain data)
- `uri.py`, `experiment.py`: which store a workflow logs to and its experiment, found or created,
  for this hook and for the registry step alike

This module imports nothing itself. `uri.py` and `experiment.py` are imported where Snakemake is not
installed (the registry step runs in the pipeline image, which has MLflow but no Snakemake), so the
two classes Snakemake's plugin registry reads from this package (with getattr:
snakemake_interface_common's `PluginRegistryBase.validate_plugin` and
`LoggerPluginRegistry.load_plugin`) are loaded on first access, by the module-level `__getattr__`
below (PEP 562), not at import.
"""

__all__ = ["LogHandler", "LogHandlerSettings"]


def __getattr__(name: str):
    if name in __all__:
        from . import plugin

        return getattr(plugin, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
