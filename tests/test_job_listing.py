"""`GET /jobs`: newest first across pages, with an opaque cursor and a username filter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import requests

from ecliptic.ids import new_job_id
from ecliptic.jobs import JobStore
from ecliptic.models import Job, JobStatus

USERS = ["ana", "bo", None]


def _seed_jobs(count: int) -> list[Job]:
    """Write `count` jobs straight to the table; odd multiples of 5 reuse the previous stamp."""
    store = JobStore()
    start = datetime(2026, 11, 1, tzinfo=UTC)
    jobs = []
    for index in range(count):
        tie = 1 if index % 10 == 5 else 0
        created = start + timedelta(seconds=index - tie)
        stamp = created.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        job = Job(
            jobId=new_job_id(),
            status=JobStatus.SUCCEEDED,
            createdAt=stamp,
            updatedAt=stamp,
            username=USERS[index % len(USERS)],
            audioAssetId="aud_0123456789abcdefghij",
            videoAssetIds=["vid_0123456789abcdefghij"],
        )
        store.client.put_item(TableName=store.table, Item=store.job_item(job))
        jobs.append(job)
    return jobs


def _walk(url: str, limit: int, extra: str = "") -> list[dict]:
    seen: list[dict] = []
    cursor = None
    for _ in range(1000):
        query = f"?limit={limit}{extra}" + (f"&cursor={cursor}" if cursor else "")
        response = requests.get(f"{url}/jobs{query}", timeout=30)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["jobs"]) <= limit
        seen.extend(page["jobs"])
        cursor = page.get("cursor")
        if not cursor:
            return seen
    raise AssertionError("listing never ended")


def test_listing_pages_newest_first_without_gaps(stack):
    """250 jobs come back exactly once each, newest first, over pages of 37."""
    jobs = _seed_jobs(250)

    listed = _walk(stack.url, 37)

    ids = [item["jobId"] for item in listed]
    assert len(ids) == len(set(ids)) == 250
    assert set(ids) == {job.jobId for job in jobs}
    stamps = [item["createdAt"] for item in listed]
    assert stamps == sorted(stamps, reverse=True)


def test_listing_filters_by_username(stack):
    jobs = _seed_jobs(60)

    listed = _walk(stack.url, 7, "&username=ana")

    expected = {job.jobId for job in jobs if job.username == "ana"}
    assert [item["username"] for item in listed] == ["ana"] * len(expected)
    assert {item["jobId"] for item in listed} == expected


def test_cursor_of_other_filter_rejected(stack):
    _seed_jobs(5)
    cursor = requests.get(f"{stack.url}/jobs?limit=2", timeout=30).json()["cursor"]

    response = requests.get(f"{stack.url}/jobs?limit=2&username=ana&cursor={cursor}", timeout=30)

    assert response.status_code == 400
    assert response.json()["error"]["field"] == "cursor"
