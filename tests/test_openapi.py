"""The OpenAPI document against the running API, with requests that schemathesis generates.

The API runs under the local stack, as `ecliptic serve` runs it. Generated requests carry no
valid payment, so none of them settles, stages or fetches anything: the tests check that
through the offline facilitator and a name-resolution guard.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from ecliptic.jobs import JobStore
from ecliptic.local.cli import LocalStack
from ecliptic.openapi import DOCS_PATH, OPENAPI_PATH
from ecliptic.x402.client import LocalPayer
from ecliptic.x402.encoding import decode_json_header
from ecliptic.x402.facilitator import OfflineFacilitator

# One worker runs the whole module, so the stack starts once.
pytestmark = pytest.mark.xdist_group("openapi")

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
OPERATIONS = [
    ("POST", "/montages"),
    ("GET", "/jobs/{jobId}"),
    ("GET", "/jobs"),
    ("POST", "/uploads"),
    ("GET", "/assets/{assetId}"),
    ("GET", OPENAPI_PATH),
    ("GET", DOCS_PATH),
]
# Hosts a request handler may resolve. Generated callback URLs name random hosts, and the
# callback check resolves them; the guard turns those lookups into failures.
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


class Recorder:
    """Counts calls of a patched method."""

    def __init__(self, original: Callable[..., Any]) -> None:
        self.original = original
        self.calls = 0

    def wrap(self) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return self.original(*args, **kwargs)

        return recorded


@pytest.fixture(scope="module")
def settles() -> Iterator[Recorder]:
    recorder = Recorder(OfflineFacilitator.settle)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(OfflineFacilitator, "settle", recorder.wrap())
        yield recorder


@pytest.fixture(scope="module")
def lookups() -> Iterator[list[str]]:
    """Names that something tried to resolve; only loopback names resolve."""
    original = socket.getaddrinfo
    refused: list[str] = []

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in LOOPBACK_NAMES:
            refused.append(name)
            raise socket.gaierror(socket.EAI_NONAME, f"{name} is not resolved in this test")
        return original(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", loopback_only)
        yield refused


@pytest.fixture(scope="module")
def api(settles: Recorder, lookups: list[str]) -> Iterator[LocalStack]:
    with LocalStack(output_max_side=320) as stack:
        yield stack


@pytest.fixture(scope="module")
def document(api: LocalStack) -> dict[str, Any]:
    response = requests.get(api.url + OPENAPI_PATH, timeout=30)
    assert response.status_code == 200
    return response.json()


@pytest.fixture(scope="module")
def schema(document: dict[str, Any]) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_dict(document)


def test_document_is_valid_openapi(schema, document, api):
    """The served document passes the OpenAPI 3.1 meta-schema and names this server."""
    schema.validate()

    assert document["openapi"].startswith("3.1")
    assert document["servers"] == [{"url": api.url}]
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
    }
    assert documented == set(OPERATIONS)


def _examples(node: Any) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Yield (example, schema) for every example in a part of the document."""
    if isinstance(node, dict):
        examples = node.get("examples")
        if isinstance(examples, list) and "schema" not in node:
            schema = {key: value for key, value in node.items() if key != "examples"}
            for example in examples:
                yield example, schema
        if isinstance(examples, dict) and "schema" in node:
            for example in examples.values():
                yield example["value"], node["schema"]
        for value in node.values():
            yield from _examples(value)
    elif isinstance(node, list):
        for value in node:
            yield from _examples(value)


def test_examples_fit_schemas(document):
    """Every example in the document (requests, responses, models, fields) fits its schema."""
    components = document["components"]
    found = list(_examples({"paths": document["paths"], "components": components}))

    assert len(found) >= 10
    for example, schema in found:
        validator = Draft202012Validator({**schema, "components": components})
        errors = [error.message for error in validator.iter_errors(example)]
        assert errors == [], f"example {example!r} breaks its schema"


# Negative cases break the schema on purpose, so operations without inputs get none.
CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE or path not in (OPENAPI_PATH, DOCS_PATH)
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_generated_requests_conform(schema, api, settles, method, path, mode):
    """Generated requests get no 5xx, and every response matches the document."""
    operation = schema[path][method]
    settled_before = settles.calls
    jobs_before = _job_count()
    session = requests.Session()

    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=api.url, session=session, checks=CHECKS, timeout=30)

    run()

    assert settles.calls == settled_before, "a generated request settled a payment"
    assert _job_count() == jobs_before, "a generated request created a job"


def test_paid_job_conforms(schema, api, settles, media_server, small_media):
    """A paid request, its finished job, the listing and the assets match the document."""
    body = {
        "audio": {"url": media_server.add(small_media["song"])},
        "videos": [{"url": media_server.add(small_media["wide"]), "filename": "wide.mp4"}],
        "prompt": "Cut on every beat.",
        "username": "openapi-check",
        "format": "square",
        "durationSeconds": 4,
    }
    montage = schema["/montages"]["POST"]

    challenge = _call_and_check(montage.Case(body=body, media_type="application/json"), api)
    terms = decode_json_header(challenge.headers["payment-required"][0])
    name, value = LocalPayer().payment_header(terms, version=2)
    paid = montage.Case(body=body, media_type="application/json", headers={name: value})
    accepted = _call_and_check(paid, api)
    job_id = accepted.json()["jobId"]
    job = _wait_until_final(api, job_id)

    assert challenge.status_code == 402
    assert accepted.status_code == 202
    assert "payment-response" in accepted.headers
    assert settles.calls >= 1
    assert job["status"] == "succeeded", job.get("error")
    # The checks below cover the optional parts of the schema only if the job has them.
    assert {"output", "planSummary", "payment", "planner"} <= set(job)
    assert {"videoUrl", "posterUrl"} <= set(job["output"])

    reads = [
        schema["/jobs/{jobId}"]["GET"].Case(path_parameters={"jobId": job_id}),
        schema["/jobs"]["GET"].Case(query={"limit": 5, "username": "openapi-check"}),
        schema["/assets/{assetId}"]["GET"].Case(
            path_parameters={"assetId": accepted.json()["audioAssetId"]}
        ),
        schema["/assets/{assetId}"]["GET"].Case(
            path_parameters={"assetId": accepted.json()["videoAssetIds"][0]}
        ),
    ]
    for case in reads:
        response = _call_and_check(case, api)
        assert response.status_code == 200, (case.formatted_path, response.text)
    asset = _call_and_check(reads[3], api).json()
    assert asset["state"] == "staged"
    assert {"probe", "sha256", "size"} <= set(asset)


def test_pending_upload_conforms(schema, api):
    """An upload ticket and its pending asset (with `uploadReceived`) match the document."""
    ticket_request = {"kind": "video", "filename": "clip.mp4", "contentType": "video/mp4",
                      "size": 1024}
    upload = schema["/uploads"]["POST"].Case(body=ticket_request, media_type="application/json")

    ticket = _call_and_check(upload, api)
    asset_case = schema["/assets/{assetId}"]["GET"].Case(
        path_parameters={"assetId": ticket.json()["assetId"]}
    )
    asset = _call_and_check(asset_case, api)

    assert ticket.status_code == 201
    assert asset.status_code == 200
    assert asset.json()["state"] == "pending"
    assert asset.json()["uploadReceived"] is False


def test_docs_page_loads_document(api):
    """`GET /docs` is an HTML page that points Swagger UI at `/openapi.json`."""
    response = requests.get(api.url + DOCS_PATH, timeout=30)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert 'url: "/openapi.json"' in response.text
    assert "SwaggerUIBundle" in response.text


def _job_count() -> int:
    return len(JobStore().list_jobs(100)[0])


def _call_and_check(case: schemathesis.Case, api: LocalStack) -> schemathesis.Response:
    """Send `case` and run the checks on the response (its header names are lower case)."""
    response = case.call(base_url=api.url, timeout=60)
    case.validate_response(response, checks=CHECKS)
    return response


def _wait_until_final(api: LocalStack, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{api.url}/jobs/{job_id}", timeout=30).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish within {timeout} s")
