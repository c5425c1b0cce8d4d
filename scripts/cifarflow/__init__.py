"""cifarflow: the library behind the workflow's rules (data, config, and later training, export, serving)."""

__version__ = "0.1.0"
