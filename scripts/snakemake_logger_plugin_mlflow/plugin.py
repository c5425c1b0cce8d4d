"""The plugin's Snakemake side: its settings (`--logger-mlflow-<field>` options) and the handler.

Loaded by the package's `__getattr__` when Snakemake's plugin registry asks for `LogHandler` or
`LogHandlerSettings`; the MLflow side lives in `hook.py`.
"""

# No `from __future__ import annotations` here: Snakemake reads the settings' field types at
# runtime (a string annotation such as 'bool' would not become a --flag).
import logging
from dataclasses import dataclass, field
from typing import Optional

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.settings import LogHandlerSettingsBase


@dataclass
class LogHandlerSettings(LogHandlerSettingsBase):
    tracking_uri: Optional[str] = field(  # noqa: UP045 - Snakemake parses Optional[...], not X | None
        default=None,
        metadata={
            "help": "MLflow tracking URI (default: config key mlflow.tracking_uri if set, else "
            "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory).",
        },
    )
    experiment: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={
            "help": "MLflow experiment name (default: config key mlflow.experiment if set, else the "
            "name of the working directory).",
        },
    )
    strict: bool = field(
        default=False,
        metadata={
            "help": "Fail the workflow when the tracking store cannot be used (default: one warning "
            "and the workflow carries on without tracking).",
        },
    )


class LogHandler(LogHandlerBase):
    """Feeds Snakemake's log events to `MlflowHook` (nothing at all in a dry run)."""

    def __post_init__(self) -> None:
        from snakemake.logging import logger

        from .hook import MlflowHook

        self._logger = logger
        self.hook = MlflowHook(
            self.settings or LogHandlerSettings(), logger, dryrun=self.common_settings.dryrun
        )
        if not self.common_settings.dryrun:
            logger.addFilter(self.hook.capture)

    def emit(self, record: logging.LogRecord) -> None:
        self.hook.handle(record)

    def close(self) -> None:
        self._logger.removeFilter(self.hook.capture)
        self.hook.close()
        super().close()

    @property
    def writes_to_stream(self) -> bool:
        return False

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        return True  # every event, whatever --quiet says: the default filter would drop some

    @property
    def has_formatter(self) -> bool:
        return True  # records are read, never formatted

    @property
    def needs_rulegraph(self) -> bool:
        return False
