"""Fixtures of the infra tests: the program's resources for each stack file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.infra.stack_harness import STACK_FILES, Deployment, run_program, stack_name

_CACHE: dict[Path, Deployment] = {}


@pytest.fixture(params=STACK_FILES, ids=[stack_name(p) for p in STACK_FILES])
def deployment(request: pytest.FixtureRequest) -> Deployment:
    """The program's resources for each ``Pulumi.<stack>.yaml`` of the repository.

    Each stack runs once per session (a run takes about a second under the mocks).
    """
    path: Path = request.param
    if path not in _CACHE:
        _CACHE[path] = run_program(path)
    return _CACHE[path]
