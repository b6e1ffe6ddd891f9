"""The mutation corpus's log (test_verify.build_log), shared by the tests that tamper
with it and those that prune it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.trust.audit.test_verify import Keys, build_log


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Keys]:
    keys = Keys()
    path = tmp_path_factory.mktemp("audit") / "audit.sqlite3"
    build_log(path, keys)
    return path, keys


@pytest.fixture
def copy(pristine: tuple[Path, Keys], tmp_path: Path) -> Path:
    path = tmp_path / "audit.sqlite3"
    shutil.copyfile(pristine[0], path)
    return path
