"""A grader for tests that hangs on chosen references (a module of its own, light to import, so that
spawned reward workers start fast). ASYMPO_TEST_HANG_REFS names a file of whitespace-separated references."""

from __future__ import annotations

import os
import time
from pathlib import Path


def hang_on_listed_references(completion: str, reference: str) -> float:
    path = os.environ.get("ASYMPO_TEST_HANG_REFS")
    if path and reference.strip() in Path(path).read_text().split():
        time.sleep(3600)
    return 1.0 if completion.strip() == reference.strip() else 0.0
