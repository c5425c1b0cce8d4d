"""The exception types the rule CLIs turn into a clear message instead of a traceback."""


class PipelineError(Exception):
    """A failure the user can fix: the message names the cause and the fix."""


class TrainingFailed(PipelineError):
    """Training cannot finish with this recipe on this data. For an experiment, a failure; for a
    sweep trial, its result (recorded as its `outcome`, the other trials carry on)."""

    outcome = "failed"


class TrainingDiverged(TrainingFailed):
    """The loss became NaN or infinite."""

    outcome = "diverged"
