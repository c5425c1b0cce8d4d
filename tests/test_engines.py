"""`serving.engine: auto` on a machine with Podman: it takes Podman when the base image is at hand,
and the process engine, saying why in one log line, when the base image is neither here nor
pullable (offline, or Docker Hub out of reach), so that the offline demo still finishes."""

import logging

from cifarflow.engines import choose

# A registry on loopback that refuses connections: the pull fails at once, online or offline.
UNPULLABLE = "localhost/cifarflow-no-such-base:never"


def test_auto_takes_podman_when_the_base_image_is_here(podman):
    assert choose("auto", podman["base_image"]) == "podman"


def test_auto_falls_back_to_the_process_engine_without_a_base_image_saying_why(podman, caplog):
    caplog.set_level(logging.INFO, logger="cifarflow")
    assert choose("auto", UNPULLABLE) == "process"
    (line,) = [r.getMessage() for r in caplog.records if "serving engine:" in r.getMessage()]
    assert line.startswith("serving engine: auto took process (")
    assert f"not podman: its base image {UNPULLABLE} is not here and cannot be pulled" in line
    assert "containers/base/make-local-base.sh" in line
    # an explicit engine is taken at its word: the build then fails on the missing image itself
    assert choose("podman", UNPULLABLE) == "podman"
