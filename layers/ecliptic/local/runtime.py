"""The local runtime: the deployed template and state machine on moto, in this process.

`LocalRuntime` reads `template.yaml`, creates the DynamoDB table and the media bucket in
moto, registers every Lambda function of the template with moto's Lambda service, and runs
`statemachine/montage.asl.json` on moto's Step Functions engine. moto's Lambda backend only
echoes its input when Docker is off, so its `invoke` is replaced by one that calls the
handler the template names, in process, and reports exceptions the way Lambda does
(`x-amz-function-error: Unhandled` and an `{errorType, errorMessage}` body). Retry and Catch
in the state machine therefore see the same errors as in AWS.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
TABLE_NAME = "ecliptic-local-jobs"
BUCKET_NAME = "ecliptic-local-media"
STATE_MACHINE_NAME = "ecliptic-local-montage"
ROLE_NAME = "ecliptic-local-role"
TERMINAL_STATUSES = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}


def project_root() -> Path:
    """Return the repository root (the folder that contains template.yaml)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "template.yaml").is_file():
            return parent
    raise FileNotFoundError(
        "template.yaml not found above the ecliptic package; run from a clone of the repository."
    )


@dataclass
class _LambdaContext:
    """The attributes of the Lambda context object that Powertools reads."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int = 1024
    function_version: str = "$LATEST"
    timeout_seconds: float = 900.0

    def __post_init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + self.timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class LocalRuntime:
    """Start with `start()` (or use as a context manager); stop with `stop()`."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        public_base_url: str | None = None,
        output_max_side: int | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.root = root or project_root()
        self.public_base_url = public_base_url
        self.output_max_side = output_max_side
        self.extra_env = extra_env or {}
        self.handlers: dict[str, Callable[[dict[str, Any], Any], Any]] = {}
        self.timeouts: dict[str, float] = {}
        self.state_machine_arn = ""
        self._mock: Any = None
        self._saved_env: dict[str, str | None] = {}
        self._original_invoke: Any = None
        self._modules: dict[Path, ModuleType] = {}
        # Powertools keeps the current request on a class attribute, so one API handler
        # serves one request at a time, as one Lambda container does.
        self._api_lock = threading.Lock()
        self._dynamodb_originals: dict[str, Any] = {}

    # ----- set-up ---------------------------------------------------------------------

    def __enter__(self) -> LocalRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def environment(self) -> dict[str, str]:
        env = {
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "ECLIPTIC_TABLE_NAME": TABLE_NAME,
            "ECLIPTIC_MEDIA_BUCKET": BUCKET_NAME,
            "ECLIPTIC_R2_ENDPOINT_URL": "",
            "ECLIPTIC_PUBLIC_BASE_URL": self.public_base_url or "",
            # Local runs fetch media from loopback servers and pay with a throwaway key:
            # both settings exist only here and are never set by the template.
            "ECLIPTIC_ALLOW_LOOPBACK_URLS": "true",
            "ECLIPTIC_FACILITATOR_MODE": "offline",
            # A fixed, public key, so local receivers can check webhook signatures. The
            # template reads the deployed key from Secrets Manager instead.
            "ECLIPTIC_WEBHOOK_SECRET": "local-webhook-secret",
            "POWERTOOLS_SERVICE_NAME": "ecliptic-local",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_METRICS_NAMESPACE": "EclipticLocal",
        }
        if self.output_max_side:
            env["ECLIPTIC_OUTPUT_MAX_SIDE"] = str(self.output_max_side)
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        from moto import mock_aws

        from ecliptic.aws import reset_clients
        from ecliptic.local.template import function_specs, load_template, state_machine_spec

        self._set_env(self.environment())
        self._mock = mock_aws(
            config={
                "stepfunctions": {"execute_state_machine": True},
                "lambda": {"use_docker": False},
            }
        )
        self._mock.start()
        self._make_dynamodb_atomic()
        reset_clients()

        template = load_template(self.root / "template.yaml")
        self._create_table(template)
        self._create_bucket()
        role_arn = self._create_role()
        function_arns = self._register_functions(template, function_specs(template), role_arn)
        self._patch_lambda_invoke()
        definition_path, substitutions = state_machine_spec(template)
        definition = self._substitute(
            (self.root / definition_path).read_text(), substitutions, function_arns
        )
        self.state_machine_arn = self._create_state_machine(definition, role_arn)
        self._set_env({"ECLIPTIC_STATE_MACHINE_ARN": self.state_machine_arn})
        reset_clients()
        logger.info("local runtime started", extra={"state_machine": self.state_machine_arn})

    def stop(self) -> None:
        """Wait for running executions, then undo the mock and the environment."""
        if self._mock is None:
            return
        self.wait_for_executions()
        from moto.awslambda_simple.models import LambdaSimpleBackend

        from ecliptic.aws import reset_clients

        if self._original_invoke is not None:
            LambdaSimpleBackend.invoke = self._original_invoke
        self._restore_dynamodb()
        self._mock.stop()
        self._mock = None
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_clients()
        logger.info("local runtime stopped")

    def _set_env(self, values: dict[str, str]) -> None:
        for name, value in values.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def _make_dynamodb_atomic(self) -> None:
        """Serialize moto's DynamoDB operations, which DynamoDB applies atomically.

        moto checks a condition and writes in separate Python steps, and rolls back a failed
        transaction by restoring a copy of the whole table. API requests and executions run
        on separate threads here, so without a lock two conditional puts could both pass, or
        a rollback could undo a state machine's concurrent status write.
        """
        from moto.dynamodb.models import DynamoDBBackend

        lock = threading.RLock()
        names = [
            "put_item", "get_item", "update_item", "delete_item", "transact_write_items",
            "query", "scan",
        ]  # fmt: skip

        def locked(original: Callable[..., Any]) -> Callable[..., Any]:
            def call(backend: Any, *args: Any, **kwargs: Any) -> Any:
                with lock:
                    return original(backend, *args, **kwargs)

            return call

        for name in names:
            self._dynamodb_originals[name] = getattr(DynamoDBBackend, name)
            setattr(DynamoDBBackend, name, locked(self._dynamodb_originals[name]))

    def _restore_dynamodb(self) -> None:
        from moto.dynamodb.models import DynamoDBBackend

        for name, original in self._dynamodb_originals.items():
            setattr(DynamoDBBackend, name, original)
        self._dynamodb_originals.clear()

    def _create_table(self, template: dict[str, Any]) -> None:
        import boto3

        properties = template["Resources"]["JobsTable"]["Properties"]
        client = boto3.client("dynamodb")
        indexes = [
            {key: value for key, value in index.items() if key != "ProvisionedThroughput"}
            for index in properties.get("GlobalSecondaryIndexes", [])
        ]
        client.create_table(
            TableName=TABLE_NAME,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=properties["AttributeDefinitions"],
            KeySchema=properties["KeySchema"],
            GlobalSecondaryIndexes=indexes,
        )

    def _create_bucket(self) -> None:
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET_NAME)

    def _create_role(self) -> str:
        import boto3

        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com"]},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        response = boto3.client("iam").create_role(
            RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust)
        )
        return response["Role"]["Arn"]

    def _register_functions(
        self, template: dict[str, Any], specs: dict[str, Any], role_arn: str
    ) -> dict[str, str]:
        """Create each template function in moto and load its handler from its module."""
        import boto3

        client = boto3.client("lambda")
        default_timeout = ((template.get("Globals") or {}).get("Function") or {}).get("Timeout")
        arns: dict[str, str] = {}
        for logical_id, spec in specs.items():
            module = self._load_module(self.root / spec.module_file)
            handler = getattr(module, spec.handler_name)
            self.handlers[logical_id] = handler
            properties = template["Resources"][logical_id].get("Properties") or {}
            self.timeouts[logical_id] = float(properties.get("Timeout", default_timeout or 3))
            response = client.create_function(
                FunctionName=logical_id,
                Runtime="python3.12",
                Role=role_arn,
                Handler=f"app.{spec.handler_name}",
                Code={"ZipFile": b"local"},
            )
            arns[logical_id] = response["FunctionArn"]
        return arns

    def _load_module(self, path: Path) -> ModuleType:
        if path in self._modules:
            return self._modules[path]
        name = "ecliptic_function_" + re.sub(r"\W", "_", path.parent.name)
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load handler module {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        self._modules[path] = module
        return module

    def _substitute(
        self, definition: str, substitutions: dict[str, Any], function_arns: dict[str, str]
    ) -> str:
        """Fill `${Name}` placeholders from the template's DefinitionSubstitutions."""
        values: dict[str, str] = {}
        for name, source in substitutions.items():
            if isinstance(source, dict) and "Fn::GetAtt" in source:
                target = source["Fn::GetAtt"]
                logical_id = target[0] if isinstance(target, list) else target.split(".")[0]
                values[name] = function_arns[logical_id]
            elif isinstance(source, dict) and source.get("Ref") == "JobsTable":
                values[name] = TABLE_NAME
            elif isinstance(source, str):
                values[name] = source
            else:
                raise ValueError(f"unsupported DefinitionSubstitutions value for {name}: {source}")

        def replace(match: re.Match[str]) -> str:
            return values[match.group(1)]

        return re.sub(r"\$\{(\w+)\}", replace, definition)

    def _create_state_machine(self, definition: str, role_arn: str) -> str:
        import boto3

        response = boto3.client("stepfunctions").create_state_machine(
            name=STATE_MACHINE_NAME, definition=definition, roleArn=role_arn
        )
        return response["stateMachineArn"]

    # ----- Lambda invocation ------------------------------------------------------------

    def _patch_lambda_invoke(self) -> None:
        from moto.awslambda_simple.models import LambdaSimpleBackend

        runtime = self
        self._original_invoke = LambdaSimpleBackend.invoke

        def invoke(
            backend: Any,
            function_name: str,
            qualifier: str | None,
            body: Any,
            headers: Any,
            response_headers: Any,
        ) -> bytes:
            return runtime.invoke(function_name, body, response_headers)

        LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign]

    def invoke(self, function_name: str, body: Any, response_headers: dict[str, str]) -> bytes:
        """Run the handler of `function_name` (a name or ARN) the way Lambda would."""
        logical_id = function_name.rsplit(":", 1)[-1]
        handler = self.handlers.get(logical_id)
        if handler is None:
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps(
                {"errorType": "ResourceNotFound", "errorMessage": f"no function {logical_id}"}
            ).encode()
        event = json.loads(body) if body else {}
        context = _LambdaContext(
            function_name=logical_id,
            invoked_function_arn=(
                f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{logical_id}"
            ),
            timeout_seconds=self.timeouts.get(logical_id, 900.0),
        )
        try:
            result = handler(event, context)
        except Exception as error:  # noqa: BLE001 (Lambda reports every exception this way)
            response_headers["x-amz-function-error"] = "Unhandled"
            message = getattr(error, "message", None) or str(error)
            logger.info(
                "local function raised",
                extra={"function": logical_id, "error": type(error).__name__},
            )
            return json.dumps(
                {
                    "errorType": type(error).__name__,
                    "errorMessage": message,
                    "stackTrace": traceback.format_tb(error.__traceback__),
                }
            ).encode()
        return json.dumps(result).encode()

    # ----- executions -----------------------------------------------------------------

    def describe_execution(self, job_id: str) -> dict[str, Any]:
        import boto3

        execution_arn = self.state_machine_arn.replace(":stateMachine:", ":execution:")
        return boto3.client("stepfunctions").describe_execution(
            executionArn=f"{execution_arn}:{job_id}"
        )

    def wait_for_execution(self, job_id: str, timeout: float = 600.0) -> dict[str, Any]:
        """Poll the job's execution until it ends; raise TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            description = self.describe_execution(job_id)
            if description["status"] in TERMINAL_STATUSES:
                return description
            time.sleep(0.2)
        raise TimeoutError(f"execution {job_id} did not finish within {timeout:.0f} s")

    def execution_history(self, job_id: str) -> list[dict[str, Any]]:
        import boto3

        execution_arn = self.state_machine_arn.replace(":stateMachine:", ":execution:")
        response = boto3.client("stepfunctions").get_execution_history(
            executionArn=f"{execution_arn}:{job_id}", maxResults=1000
        )
        return response["events"]

    def wait_for_executions(self, timeout: float = 900.0) -> None:
        """Wait until no execution is running (executions run on moto's threads)."""
        import boto3

        if not self.state_machine_arn:
            return
        client = boto3.client("stepfunctions")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = client.list_executions(
                stateMachineArn=self.state_machine_arn, statusFilter="RUNNING"
            )["executions"]
            if not running:
                return
            time.sleep(0.2)
        logger.warning("executions still running at shutdown")

    # ----- API and bucket access for the local server -------------------------------------

    def invoke_api(self, event: dict[str, Any]) -> dict[str, Any]:
        """Call the API function's handler with an API Gateway event, as API Gateway does."""
        context = _LambdaContext(
            function_name="ApiFunction",
            invoked_function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:ApiFunction",
            timeout_seconds=self.timeouts.get("ApiFunction", 29.0),
        )
        try:
            with self._api_lock:
                return self.handlers["ApiFunction"](event, context)
        except Exception:
            # API Gateway returns 500 with this body when the integration fails.
            logger.exception("API handler raised")
            return {
                "statusCode": 500,
                "headers": {"content-type": "application/json"},
                "body": '{"message":"Internal Server Error"}',
            }

    def read_object(self, key: str) -> tuple[bytes, str] | None:
        """Return an object of the media bucket and its content type, or None."""
        import boto3
        from botocore.exceptions import ClientError

        try:
            response = boto3.client("s3").get_object(Bucket=BUCKET_NAME, Key=key)
        except ClientError:
            return None
        return response["Body"].read(), response.get("ContentType", "application/octet-stream")
