"""Public JSON shapes of jobs, with download URLs filled in at read time."""

from __future__ import annotations

from typing import Any

from ecliptic.models import Job
from ecliptic.storage import MediaStore


def job_view(job: Job, store: MediaStore | None = None) -> dict[str, Any]:
    """Return the `GET /jobs/{jobId}` body. URLs are made now so they never go stale."""
    view = job.model_dump(mode="json", exclude_none=True)
    if job.output is not None:
        store = store or MediaStore()
        output = view["output"]
        output["videoUrl"] = store.object_url(job.output.key)
        if job.output.posterKey:
            output["posterUrl"] = store.object_url(job.output.posterKey)
        if job.output.storyboardKey:
            output["storyboardUrl"] = store.object_url(job.output.storyboardKey)
        for key_field in ("key", "posterKey", "storyboardKey"):
            output.pop(key_field, None)
    return view
