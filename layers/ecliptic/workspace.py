"""Scratch folders under /tmp for one job step, removed when the step ends."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def job_workspace(job_id: str, step: str) -> Iterator[Path]:
    """Yield an empty folder for `step` of `job_id` and delete it afterwards, even on error.

    Lambda reuses /tmp across warm invocations, so leftovers would eat the next job's space.
    """
    path = Path(tempfile.mkdtemp(prefix=f"ecliptic-{step}-{job_id}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
