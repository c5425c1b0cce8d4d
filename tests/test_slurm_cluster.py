"""tests/slurm_cluster.py's own checks, without starting a cluster: not being root skips the Slurm
tests, except in CI (CI set), where it fails them, as a missing Debian part does."""

import pytest
import slurm_cluster
from slurm_cluster import NOT_ROOT, require_root


def test_not_root_skips_outside_ci_and_fails_in_ci(monkeypatch):
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 1000)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="run the Slurm tests as root"):
        require_root()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as failed:
        require_root()
    assert str(failed.value) == NOT_ROOT


def test_root_passes_in_and_outside_ci(monkeypatch):
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 0)
    for ci in (None, "true"):
        if ci is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", ci)
        assert require_root() is None
