"""cifarflow: the library behind the workflow's rules, from the dataset to the served, registered model."""

__version__ = "0.1.0"
