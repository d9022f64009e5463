"""Every corpus case through its reader, directly: a valid record or a project error naming the file, never
another exception, never a hang, good records beside a bad one kept (see :mod:`tests.fuzz.corpus`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.fuzz.conftest import IMAGE_IDS
from tests.fuzz.corpus import Base, Case, all_cases
from tests.fuzz.runner import check_outcome

ALL_CASES = all_cases(IMAGE_IDS)
#: the kinds with few cases run whole; of the others every second case (``FRCNN_FUZZ_FULL=1``: all of them)
_SMALL = {"image", "image_set", "classes_txt", "weights", "safetensors", "proposals"}
CASES = [c for n, c in enumerate(ALL_CASES)
         if os.environ.get("FRCNN_FUZZ_FULL") == "1" or c.kind in _SMALL or n % 2 == 0]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus")


def test_corpus_is_broad() -> None:
    kinds = {c.kind for c in CASES}
    assert len(CASES) >= 300 and len(kinds) >= 13, (len(CASES), kinds)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reader_corpus(case: Case, corpus_base: Base, scratch: Path) -> None:
    folder = Path(tempfile.mkdtemp(dir=scratch))
    problem = check_outcome(case, corpus_base, folder)
    assert problem is None, f"{case.id}: {problem}"
