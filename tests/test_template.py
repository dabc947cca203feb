"""Deployment artifacts: template.yaml, the state machine wiring, sample events and the image.

The linters run as the same executables a developer runs (next to this interpreter), and the
structural checks read the template through `ecliptic.local.template`, the loader the local
runtime uses, so both see the same functions, handlers and environment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ecliptic.config import Settings
from ecliptic.jobs import LIST_INDEX, USERNAME_INDEX
from ecliptic.local.template import (
    FunctionSpec,
    function_specs,
    load_template,
    state_machine_spec,
)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = ROOT / "template.yaml"
EVENTS_DIR = ROOT / "events"
TOOLS_DIR = Path(sys.executable).parent

# Variables that hold a Secrets Manager ARN: the code reads the secret itself, so the secret
# values never appear in the function configuration.
SECRET_ARN_VARIABLES = {
    "ECLIPTIC_R2_CREDENTIALS_SECRET_ARN",
    "ECLIPTIC_FACILITATOR_CREDENTIALS_SECRET_ARN",
    "ECLIPTIC_GEMINI_API_KEY_SECRET_ARN",
    "ECLIPTIC_WEBHOOK_SECRET_ARN",
}
MEDIA_FUNCTIONS = ("AnalyzeFunction", "RenderFunction")
ZIP_ONLY_PROPERTIES = ("Runtime", "Handler", "Layers")
# HTTP API stops waiting for a Lambda integration after 30 seconds.
HTTP_API_TIMEOUT_SECONDS = 30

# Sample events of the Lambda tasks, with the pydantic model each handler module parses.
STEP_EVENTS = {
    "StageAssetFunction": ("stage-asset.json", "StageRequest"),
    "AnalyzeFunction": ("analyze.json", "AnalyzeRequest"),
    "PlanFunction": ("plan.json", "PlanRequest"),
    "RenderFunction": ("render.json", "RenderRequest"),
    "NotifyFunction": ("notify.json", "NotifyRequest"),
}
API_EVENTS = (
    "api-post-montage.json",
    "api-get-job.json",
    "api-list-jobs.json",
    "api-post-upload.json",
    "api-get-asset.json",
    "api-get-openapi.json",
    "api-get-docs.json",
)

TEMPLATE = load_template(TEMPLATE_PATH)
SPECS = function_specs(TEMPLATE)


def _run_tool(name: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    executable = TOOLS_DIR / name
    if not executable.exists():
        pytest.fail(f"{executable} is missing; install the dev extras: pip install -e '.[dev]'")
    return subprocess.run(
        [str(executable), *args],
        cwd=ROOT,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _resources_of_type(resource_type: str) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource
        for logical_id, resource in TEMPLATE["Resources"].items()
        if resource["Type"] == resource_type
    }


def _walk(node: Any) -> Iterator[tuple[str | None, Any]]:
    """Yield every (key, value) pair of a nested template. List items have the key None."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield None, value
            yield from _walk(value)


def _handler_module(spec: FunctionSpec) -> ModuleType:
    spec.import_handler(ROOT)
    return sys.modules[f"sam_fn_{spec.logical_id}"]


@pytest.fixture(scope="module")
def definition() -> dict[str, Any]:
    path, _ = state_machine_spec(TEMPLATE)
    return json.loads((ROOT / path).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def substitutions() -> dict[str, Any]:
    _, values = state_machine_spec(TEMPLATE)
    return values


def _states(states: dict[str, Any], map_catch: bool = False) -> Iterator[tuple[str, dict, bool]]:
    """Yield (name, state, covered by an enclosing Map's Catch) for every state, nested too."""
    for name, state in states.items():
        yield name, state, map_catch
        if state["Type"] == "Map":
            processor = state.get("ItemProcessor") or state["Iterator"]
            yield from _states(processor["States"], map_catch or bool(state.get("Catch")))
        for branch in state.get("Branches", []):
            yield from _states(branch["States"], map_catch or bool(state.get("Catch")))


def _lambda_tasks(definition: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, state, _ in _states(definition["States"]):
        if state["Type"] == "Task" and state["Resource"] == "arn:aws:states:::lambda:invoke":
            yield name, state


def _function_of_task(state: dict[str, Any], substitutions: dict[str, Any]) -> str:
    placeholder = re.fullmatch(r"\$\{(\w+)\}", state["Parameters"]["FunctionName"])
    assert placeholder, f"FunctionName {state['Parameters']['FunctionName']!r} is no placeholder"
    return substitutions[placeholder.group(1)]["Fn::GetAtt"][0]


# ----- linters ------------------------------------------------------------------------


def test_sam_validate_lint() -> None:
    """`sam validate --lint` accepts the template offline."""
    result = _run_tool(
        "sam",
        "validate",
        "--lint",
        "--template",
        "template.yaml",
        "--region",
        "us-east-1",
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint() -> None:
    """cfn-lint reports no errors or warnings on the template."""
    result = _run_tool("cfn-lint", "template.yaml", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_statelint() -> None:
    """statelint accepts the state machine definition."""
    path, _ = state_machine_spec(TEMPLATE)
    result = _run_tool("statelint", str(path), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ----- state machine wiring -----------------------------------------------------------


def test_placeholders_match_substitutions(substitutions: dict[str, Any]) -> None:
    """Every ${Name} in the definition has a substitution, and every substitution is used."""
    path, _ = state_machine_spec(TEMPLATE)
    placeholders = set(re.findall(r"\$\{(\w+)\}", (ROOT / path).read_text(encoding="utf-8")))
    assert placeholders - substitutions.keys() == set(), "placeholders without a substitution"
    assert substitutions.keys() - placeholders == set(), "substitutions the definition never uses"


def test_function_substitutions_name_functions(substitutions: dict[str, Any]) -> None:
    """Each *FunctionArn substitution is the Arn of a function in this template."""
    function_keys = [key for key in substitutions if key.endswith("FunctionArn")]
    assert function_keys, "no function ARN substitutions found"
    for key in function_keys:
        value = substitutions[key]
        assert isinstance(value, dict) and "Fn::GetAtt" in value, f"{key} is not a !GetAtt"
        logical_id, attribute = value["Fn::GetAtt"]
        assert logical_id in SPECS, f"{key} points at {logical_id}, which is no function"
        assert attribute == "Arn", f"{key} uses {attribute}, not Arn"


def test_table_substitution_is_jobs_table(substitutions: dict[str, Any]) -> None:
    """The table placeholder resolves to the DynamoDB table that the functions use."""
    table_id = substitutions["JobsTableName"]["Ref"]
    assert TEMPLATE["Resources"][table_id]["Type"] == "AWS::DynamoDB::Table"
    shared = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert shared["ECLIPTIC_TABLE_NAME"] == {"Ref": table_id}


def test_tasks_have_timeout_retry_catch(definition: dict[str, Any]) -> None:
    """Every Task has TimeoutSeconds, a Retry and a Catch (its own or its Map's)."""
    tasks = [item for item in _states(definition["States"]) if item[1]["Type"] == "Task"]
    assert tasks, "the definition has no Task states"
    for name, state, map_catch in tasks:
        assert state.get("TimeoutSeconds"), f"{name}: no TimeoutSeconds"
        assert state.get("Retry"), f"{name}: no Retry"
        assert state.get("Catch") or map_catch, f"{name}: no Catch here or on its Map"


def test_task_timeouts_cover_functions(
    definition: dict[str, Any], substitutions: dict[str, Any]
) -> None:
    """A Lambda task waits at least as long as its function may run."""
    tasks = list(_lambda_tasks(definition))
    assert {_function_of_task(state, substitutions) for _, state in tasks} == set(STEP_EVENTS)
    for name, state in tasks:
        logical_id = _function_of_task(state, substitutions)
        function_timeout = TEMPLATE["Resources"][logical_id]["Properties"]["Timeout"]
        assert state["TimeoutSeconds"] >= function_timeout, f"{name} gives up before {logical_id}"


def test_step_events_match_task_payloads(
    definition: dict[str, Any], substitutions: dict[str, Any]
) -> None:
    """The sample event of each task function has the keys its Task sends."""
    for name, state in _lambda_tasks(definition):
        logical_id = _function_of_task(state, substitutions)
        event_file, _ = STEP_EVENTS[logical_id]
        event = json.loads((EVENTS_DIR / event_file).read_text(encoding="utf-8"))
        sent = {key.removesuffix(".$") for key in state["Parameters"]["Payload"]}
        assert set(event) == sent, f"{event_file} does not match the payload of {name}"


# ----- functions ----------------------------------------------------------------------


@pytest.mark.parametrize("logical_id", sorted(SPECS))
def test_handler_is_callable(logical_id: str) -> None:
    """The handler the template names exists in its module and is callable."""
    spec = SPECS[logical_id]
    assert (ROOT / spec.module_file).is_file(), f"{spec.module_file} is missing"
    assert callable(spec.import_handler(ROOT))


@pytest.mark.parametrize("logical_id", sorted(STEP_EVENTS))
def test_step_event_fits_handler_model(logical_id: str) -> None:
    """The sample event of a task function passes the request model of its handler."""
    event_file, model_name = STEP_EVENTS[logical_id]
    model = getattr(_handler_module(SPECS[logical_id]), model_name)
    model.model_validate_json((EVENTS_DIR / event_file).read_text(encoding="utf-8"))


@pytest.mark.parametrize("logical_id", MEDIA_FUNCTIONS)
def test_media_function_is_image(logical_id: str) -> None:
    """The media functions run the container image and pick the handler by Command."""
    resource = TEMPLATE["Resources"][logical_id]
    properties = resource["Properties"]
    assert properties["PackageType"] == "Image"
    assert len(properties["ImageConfig"]["Command"]) == 1
    for name in (*ZIP_ONLY_PROPERTIES, "CodeUri"):
        assert name not in properties, f"{logical_id} sets {name}, which images do not take"
    metadata = resource["Metadata"]
    dockerfile = ROOT / metadata["DockerContext"] / metadata["Dockerfile"]
    assert dockerfile.is_file(), f"{dockerfile} is missing"


def test_dockerfile_default_cmd_is_handler() -> None:
    """The image's default CMD names one of the media handlers."""
    dockerfile = (ROOT / "functions/media/Dockerfile").read_text(encoding="utf-8")
    commands = re.findall(r"^CMD\s+(\[.*\])\s*$", dockerfile, flags=re.MULTILINE)
    assert len(commands) == 1, "the Dockerfile needs one CMD in exec form"
    resources = TEMPLATE["Resources"]
    handlers = {resources[f]["Properties"]["ImageConfig"]["Command"][0] for f in MEDIA_FUNCTIONS}
    assert json.loads(commands[0])[0] in handlers


def test_globals_leave_out_zip_properties() -> None:
    """Globals set no Runtime, Handler or Layers, because image functions reject them."""
    shared = TEMPLATE["Globals"]["Function"]
    for name in ZIP_ONLY_PROPERTIES:
        assert name not in shared, f"Globals.Function sets {name}"


def test_api_timeout_under_http_api_limit() -> None:
    """The API function ends before API Gateway stops waiting for it."""
    timeout = TEMPLATE["Resources"]["ApiFunction"]["Properties"]["Timeout"]
    assert timeout < HTTP_API_TIMEOUT_SECONDS


# ----- configuration ------------------------------------------------------------------


def test_facilitator_mode_never_offline() -> None:
    """The template deploys only the http facilitator, because offline mode settles nothing."""
    assert all(value != "offline" for _, value in _walk(TEMPLATE)), "'offline' in template"
    modes = [value for key, value in _walk(TEMPLATE) if key == "ECLIPTIC_FACILITATOR_MODE"]
    assert modes == ["http"]
    api_variables = SPECS["ApiFunction"].environment
    assert api_variables["ECLIPTIC_FACILITATOR_MODE"] == "http"


def test_loopback_urls_never_allowed() -> None:
    """No function turns on loopback media URLs."""
    for spec in SPECS.values():
        assert spec.environment.get("ECLIPTIC_ALLOW_LOOPBACK_URLS", "false") == "false"


def test_variables_are_settings_fields() -> None:
    """Every ECLIPTIC_* variable is a Settings field, and every secret ARN reaches a function."""
    names = {
        name for spec in SPECS.values() for name in spec.environment if name.startswith("ECLIPTIC_")
    }
    unknown = {
        name
        for name in names
        if name.removeprefix("ECLIPTIC_").lower() not in Settings.model_fields
    }
    assert unknown == set(), "variables that Settings never reads"
    assert SECRET_ARN_VARIABLES - names == set(), "secret ARN variables no function receives"


def test_jobs_table_matches_job_store() -> None:
    """Table keys, the listing indexes and the TTL attribute are the ones JobStore uses."""
    (table,) = _resources_of_type("AWS::DynamoDB::Table").values()
    properties = table["Properties"]
    keys = {key["AttributeName"]: key["KeyType"] for key in properties["KeySchema"]}
    assert keys == {"pk": "HASH", "sk": "RANGE"}
    indexes = {
        index["IndexName"]: {key["AttributeName"]: key["KeyType"] for key in index["KeySchema"]}
        for index in properties["GlobalSecondaryIndexes"]
    }
    assert indexes == {
        LIST_INDEX: {"gsi1pk": "HASH", "createdAt": "RANGE"},
        USERNAME_INDEX: {"gsi2pk": "HASH", "createdAt": "RANGE"},
    }
    assert properties["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}


# ----- API events ---------------------------------------------------------------------


def _http_routes() -> set[str]:
    events = TEMPLATE["Resources"]["ApiFunction"]["Properties"]["Events"].values()
    return {
        f"{event['Properties']['Method']} {event['Properties']['Path']}"
        for event in events
        if event["Type"] == "HttpApi"
    }


def test_api_events_cover_routes() -> None:
    """Each HTTP API route has a sample event in payload format 2.0, and each event a route."""
    route_keys = set()
    for name in API_EVENTS:
        event = json.loads((EVENTS_DIR / name).read_text(encoding="utf-8"))
        assert event["version"] == "2.0", name
        assert event["requestContext"]["routeKey"] == event["routeKey"], name
        route_keys.add(event["routeKey"])
    assert route_keys == _http_routes()


# ----- requirements -------------------------------------------------------------------


def _requirement_lines(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "-r"))]


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower()


@pytest.mark.parametrize(
    "path",
    [
        "layers/requirements.txt",
        "functions/plan/requirements.txt",
        "functions/api/requirements.txt",
        "functions/stage_asset/requirements.txt",
        "functions/media/requirements.txt",
        "functions/notify/requirements.txt",
    ],
)
def test_requirements_match_pyproject(path: str) -> None:
    """Deployed requirements repeat the bounds of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared.extend(extra)
    by_name = {_requirement_name(item): item.replace(" ", "") for item in declared}
    for requirement in _requirement_lines(ROOT / path):
        name = _requirement_name(requirement)
        assert by_name.get(name) == requirement.replace(" ", ""), f"{path}: {requirement}"
