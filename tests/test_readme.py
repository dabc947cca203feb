"""README.md against the product: its curl examples and its configuration table.

Every shell line in the README that starts with `curl ` is an example, and it ends with a
comment `# -> <status>` that gives the HTTP status it gets from `ecliptic serve --port 8080`.
The test runs each example with the real curl binary against the local stack, in README
order, from a folder that contains the files the examples upload.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ecliptic.config import Settings
from ecliptic.local.template import function_specs, load_template

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
TEMPLATE = load_template(ROOT / "template.yaml")

# The README shows the URL of `ecliptic serve --port 8080`. The test stack listens on a free
# port instead, because a fixed port can collide with other test workers, so each example
# gets the stack's URL in its place. Nothing else in a command is rewritten.
README_BASE_URL = "http://127.0.0.1:8080"
SHELL_LANGUAGES = {"sh", "bash", "shell"}
STATUS_MARK = re.compile(r"\s+#\s*->\s*(\d{3})\s*$")
VARIABLE = re.compile(r"\$\{?([A-Z_][A-Z0-9_]*)\}?")
# Fields of JSON responses that later examples use as shell variables.
RESPONSE_VARIABLES = {"uploadUrl": "UPLOAD_URL"}
# The size the README's `POST /uploads` example declares for clip.mp4.
UPLOAD_EXAMPLE_BYTES = 7_340_032
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
CONFIG_ROW = re.compile(r"^\| `ECLIPTIC_([A-Z0-9_]+)` \| ([^|]*) \| ([^|]*) \|")


@dataclass(frozen=True)
class CurlExample:
    line: int
    command: str
    status: int | None


def curl_examples(markdown: str) -> list[CurlExample]:
    """Return the curl commands of the shell code blocks, continuation lines joined."""
    examples: list[CurlExample] = []
    in_block = is_shell = False
    parts: list[str] = []
    start = 0
    for number, line in enumerate(markdown.splitlines(), start=1):
        fence = line.strip()
        if fence.startswith("```"):
            is_shell = not in_block and fence[3:].strip() in SHELL_LANGUAGES
            in_block = not in_block
            continue
        if not (in_block and is_shell):
            continue
        if not parts:
            if not line.startswith("curl "):
                continue
            start = number
        parts.append(line.strip().removesuffix("\\").strip())
        if line.rstrip().endswith("\\"):
            continue
        command = " ".join(parts)
        parts = []
        mark = STATUS_MARK.search(command)
        status = int(mark.group(1)) if mark else None
        examples.append(CurlExample(start, STATUS_MARK.sub("", command), status))
    return examples


EXAMPLES = curl_examples(README)


def _expand(argument: str, variables: dict[str, str], example: CurlExample) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            pytest.fail(f"README line {example.line}: ${name} is set by no earlier example")
        return variables[name]

    return VARIABLE.sub(value, argument).replace(README_BASE_URL, variables["BASE_URL"])


def _response_body(output: str) -> Any:
    """Return the JSON body of curl's output (after the headers when `-i` shows them)."""
    body = output.split("\r\n\r\n", 1)[-1]
    try:
        return json.loads(body)
    except ValueError:
        return None


@pytest.fixture
def example_files(tmp_path: Path, small_media: dict[str, Path]) -> Path:
    """The files the examples name: a song, a clip and a file to upload."""
    shutil.copy(small_media["song"], tmp_path / "song.mp3")
    shutil.copy(small_media["wide"], tmp_path / "clip-1.mp4")
    with (tmp_path / "clip.mp4").open("wb") as handle:
        handle.truncate(UPLOAD_EXAMPLE_BYTES)
    return tmp_path


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names the server tried to resolve; the examples must not reach any other host."""
    original = socket.getaddrinfo
    refused: list[str] = []

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in LOOPBACK_NAMES:
            refused.append(name)
            raise socket.gaierror(socket.EAI_NONAME, f"{name} is not resolved in this test")
        return original(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    return refused


def test_readme_has_curl_examples():
    """The README shows curl examples, and each one states the status it gets."""
    assert len(EXAMPLES) >= 5
    for example in EXAMPLES:
        assert example.status is not None, f"README line {example.line}: no `# -> <status>`"
        assert README_BASE_URL in example.command or "$" in example.command, (
            f"README line {example.line} does not call {README_BASE_URL}"
        )


def test_curl_examples_run_against_local_server(stack, example_files, lookups):
    """Each curl example exits 0 and gets the status its `# -> <status>` mark gives."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("the curl binary is not on PATH")
    variables = {"BASE_URL": stack.url}

    for example in EXAMPLES:
        arguments = [_expand(part, variables, example) for part in shlex.split(example.command)]
        assert arguments[0] == "curl"
        result = subprocess.run(
            [curl, *arguments[1:], "--write-out", "\n%{http_code}"],
            cwd=example_files,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        output, _, status = result.stdout.rpartition("\n")

        assert result.returncode == 0, f"README line {example.line}: {result.stderr}"
        assert int(status) == example.status, f"README line {example.line}: {output[-2000:]}"
        body = _response_body(output)
        if isinstance(body, dict):
            for field, name in RESPONSE_VARIABLES.items():
                if field in body:
                    variables[name] = str(body[field])

    assert lookups == [], "an example made the server resolve a host name"


def _config_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in README.splitlines():
        match = CONFIG_ROW.match(line)
        if match:
            rows[match.group(1).lower()] = (match.group(2).strip(), match.group(3).strip())
    return rows


def _default_matches(cell: str, default: Any) -> bool:
    if default is None or default == "":
        return cell == "unset"
    shown = re.fullmatch(r"`([^`]*)`", cell)
    if shown is None:
        return False
    text = shown.group(1)
    if isinstance(default, bool):
        return text == str(default).lower()
    if isinstance(default, int | float):
        return float(text) == float(default)
    return text == str(default)


def test_configuration_table_lists_every_setting():
    """Every Settings field has a row `ECLIPTIC_<FIELD>` whose default is the field's default."""
    rows = _config_rows()

    assert set(Settings.model_fields) - set(rows) == set(), "settings missing from the README"
    assert set(rows) - set(Settings.model_fields) == set(), "README rows that are no setting"
    for name, field in Settings.model_fields.items():
        default_cell, _ = rows[name]
        assert _default_matches(default_cell, field.default), (
            f"ECLIPTIC_{name.upper()}: README default {default_cell}, code {field.default!r}"
        )


def _parameters_in(value: Any) -> set[str]:
    """Return the template parameters an environment value refers to."""
    parameters = set(TEMPLATE.get("Parameters", {}))
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref" and inner in parameters:
                found.add(inner)
            elif key == "Fn::Sub" and isinstance(inner, str):
                found |= set(re.findall(r"\$\{(\w+)\}", inner)) & parameters
            else:
                found |= _parameters_in(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= _parameters_in(inner)
    return found


def test_configuration_table_names_stack_parameters():
    """Every stack parameter is in the README, and each row names the parameters that set it."""
    rows = _config_rows()
    variables: dict[str, set[str]] = {}
    for spec in function_specs(TEMPLATE).values():
        for name, value in spec.environment.items():
            if name.startswith("ECLIPTIC_"):
                variables.setdefault(name, set()).update(_parameters_in(value))

    for parameter in TEMPLATE["Parameters"]:
        assert f"`{parameter}`" in README, f"stack parameter {parameter} is not in the README"
    for name, parameters in variables.items():
        _, set_by = rows[name.removeprefix("ECLIPTIC_").lower()]
        for parameter in parameters:
            assert f"`{parameter}`" in set_by, f"{name}: the README row does not name {parameter}"
