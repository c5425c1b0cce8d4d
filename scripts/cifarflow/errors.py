"""The one exception type the rule CLIs turn into a clear message instead of a traceback."""


class PipelineError(Exception):
    """A failure the user can fix: the message names the cause and the fix."""
