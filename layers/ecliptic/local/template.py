"""Read the SAM template: functions, handlers, environment and the state machine wiring.

The local runtime and the template tests use this module, so both read the deployed
`template.yaml` instead of a copy of its facts. Intrinsic functions are kept unresolved
(`{"Ref": "JobsTable"}`), because only the caller knows what each one should stand for.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVERLESS_FUNCTION = "AWS::Serverless::Function"
SERVERLESS_STATE_MACHINE = "AWS::Serverless::StateMachine"


class CloudFormationLoader(yaml.SafeLoader):
    """YAML loader that turns CloudFormation short tags into their long JSON form.

    `!Ref X` becomes `{"Ref": "X"}`, `!Condition X` becomes `{"Condition": "X"}`,
    `!GetAtt A.B` becomes `{"Fn::GetAtt": ["A", "B"]}` and every other `!Name value`
    becomes `{"Fn::Name": value}`. Dates stay strings, as CloudFormation reads them.
    """


def _construct_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]

    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        # The attribute part may itself contain dots (`Endpoint.Address`).
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    return {f"Fn::{suffix}": value}


def _construct_plain_string(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    return str(loader.construct_scalar(node))  # type: ignore[arg-type]


CloudFormationLoader.add_multi_constructor("!", _construct_tag)
CloudFormationLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_plain_string)


def load_template(path: Path) -> dict[str, Any]:
    """Parse a CloudFormation or SAM template in YAML, short intrinsic tags included.

    Raises
    ------
    ValueError
        The file is not a YAML mapping with a `Resources` section.
    """
    with path.open(encoding="utf-8") as stream:
        template = yaml.load(stream, Loader=CloudFormationLoader)
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        raise ValueError(f"{path} is not a CloudFormation template: no Resources mapping")
    return template


@dataclass(frozen=True)
class FunctionSpec:
    """Description of one `AWS::Serverless::Function`, enough to call its handler in process.

    Paths are relative to the folder of the template.
    """

    logical_id: str
    package_type: str
    code_dir: Path
    module_file: Path
    handler_name: str
    environment: dict[str, Any]

    def import_handler(self, root: Path) -> Callable[..., Any]:
        """Import the handler module from `root / module_file` and return the handler.

        Each function gets its own module name (`sam_fn_<logical id>`), because every
        function folder has a module called `app`.

        Raises
        ------
        ImportError
            The module file is missing or cannot be loaded.
        AttributeError
            The module has no callable with the handler's name.
        """
        path = root / self.module_file
        module_name = f"sam_fn_{self.logical_id}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load the handler module of {self.logical_id} from {path}")
        module = importlib.util.module_from_spec(spec)
        # Registered before execution so pydantic and dataclasses can resolve the module.
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        handler = getattr(module, self.handler_name, None)
        if not callable(handler):
            raise AttributeError(
                f"{path} has no callable {self.handler_name!r}, the handler of {self.logical_id}"
            )
        return handler


def _global_function_properties(template: dict[str, Any]) -> dict[str, Any]:
    return (template.get("Globals") or {}).get("Function") or {}


def _environment(template: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    """Merge Globals and function variables the way SAM does: the function's value wins."""
    shared = (_global_function_properties(template).get("Environment") or {}).get("Variables")
    own = (properties.get("Environment") or {}).get("Variables")
    return {**(shared or {}), **(own or {})}


def _split_handler(logical_id: str, handler: Any) -> tuple[Path, str]:
    """Split `pkg.module.attribute` into the module's file path and the attribute name."""
    if not isinstance(handler, str) or "." not in handler:
        raise ValueError(f"{logical_id}: invalid handler {handler!r}, expected module.function")
    module, _, attribute = handler.rpartition(".")
    return Path(*module.split(".")).with_suffix(".py"), attribute


def _function_spec(
    template: dict[str, Any], logical_id: str, properties: dict[str, Any], metadata: dict[str, Any]
) -> FunctionSpec:
    shared = _global_function_properties(template)
    package_type = properties.get("PackageType", shared.get("PackageType", "Zip"))

    if package_type == "Image":
        command = (properties.get("ImageConfig") or {}).get("Command") or []
        if not command:
            raise ValueError(f"{logical_id}: an image function needs ImageConfig.Command")
        handler = command[0]
        dockerfile = metadata.get("Dockerfile", "Dockerfile")
        context = metadata.get("DockerContext", ".")
        code_dir = Path(os.path.normpath(Path(context) / Path(dockerfile).parent))
    else:
        handler = properties.get("Handler", shared.get("Handler"))
        code_uri = properties.get("CodeUri", shared.get("CodeUri"))
        if not isinstance(code_uri, str):
            raise ValueError(f"{logical_id}: CodeUri must be a local folder, not {code_uri!r}")
        code_dir = Path(os.path.normpath(code_uri))

    module_path, handler_name = _split_handler(logical_id, handler)
    return FunctionSpec(
        logical_id=logical_id,
        package_type=package_type,
        code_dir=code_dir,
        module_file=code_dir / module_path,
        handler_name=handler_name,
        environment=_environment(template, properties),
    )


def function_specs(template: dict[str, Any]) -> dict[str, FunctionSpec]:
    """Describe every `AWS::Serverless::Function` of a loaded template, by logical id.

    Raises
    ------
    ValueError
        A function has no usable handler or code location.
    """
    specs: dict[str, FunctionSpec] = {}
    for logical_id, resource in template["Resources"].items():
        if resource.get("Type") != SERVERLESS_FUNCTION:
            continue
        specs[logical_id] = _function_spec(
            template,
            logical_id,
            resource.get("Properties") or {},
            resource.get("Metadata") or {},
        )
    return specs


def state_machine_spec(template: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Return the definition file (relative to the template) and the raw substitutions.

    Raises
    ------
    ValueError
        The template does not have exactly one `AWS::Serverless::StateMachine` with a
        local `DefinitionUri`.
    """
    machines = {
        logical_id: resource.get("Properties") or {}
        for logical_id, resource in template["Resources"].items()
        if resource.get("Type") == SERVERLESS_STATE_MACHINE
    }
    if len(machines) != 1:
        raise ValueError(f"expected one {SERVERLESS_STATE_MACHINE}, found {sorted(machines)}")
    ((logical_id, properties),) = machines.items()
    definition_uri = properties.get("DefinitionUri")
    if not isinstance(definition_uri, str):
        raise ValueError(
            f"{logical_id}: DefinitionUri must be a local file, not {definition_uri!r}"
        )
    return Path(definition_uri), dict(properties.get("DefinitionSubstitutions") or {})
