"""Fixtures for the container tests: the built image (``scripts/build-image``), run with buildah.

When the image cannot be run here (no buildah, not root, or not built) the tests skip, or fail when
``NXP2_CDS_REQUIRE_CONTAINER=1`` (CI sets it, after building the image). ``NXP2_CDS_IMAGE`` names another image
than ``localhost/nxp2-cds:test``. The image's size is printed at the end of the run.
"""

from __future__ import annotations

import os

import pytest

from tests.container.buildah import DEFAULT_IMAGE, IMAGE_ENV, REQUIRE_CONTAINER, image_problem

IMAGE_SIZE = pytest.StashKey[tuple[str, int]]()


@pytest.fixture(scope="session")
def image() -> str:
    """The name of the built image, present in buildah's vfs storage."""
    name = os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE
    problem = image_problem(name)
    if problem is not None:
        message = f"container image {name}: {problem} (scripts/build-image builds it)"
        if os.environ.get(REQUIRE_CONTAINER) == "1":
            pytest.fail(f"{message} ({REQUIRE_CONTAINER}=1)", pytrace=False)
        pytest.skip(message)
    return name


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if IMAGE_SIZE in config.stash:
        name, size = config.stash[IMAGE_SIZE]
        terminalreporter.write_sep("-", "container image")
        terminalreporter.write_line(f"{name}: {size / 1e6:.1f} MB ({size} bytes, layers uncompressed)")
