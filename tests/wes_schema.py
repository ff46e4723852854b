"""
Checking responses against GA4GH WES 1.1.0 (../shared/specs/wes, beside the
project: the standard's OpenAPI document and the service-info document it
refers to, read where they are, never copied): the status must be documented
for the operation and a JSON body must match its schema (OpenAPI 3.0
schemas, with C{nullable}, checked by openapi-schema-validator).  Without
../shared the tests that need it skip, saying so; under CI they fail.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import referencing
import yaml
from openapi_schema_validator import OAS30Validator

SPECS = Path(__file__).resolve().parent.parent.parent / "shared" / "specs" / "wes"
if not (SPECS / "workflow_execution_service.openapi.yaml").is_file():
    if os.environ.get("CI"):
        pytest.fail(f"the WES 1.1.0 document is not at {SPECS} (../shared is needed under CI)",
                    pytrace=False)
    pytest.skip(f"the WES 1.1.0 document is not at {SPECS} (../shared/specs/wes)",
                allow_module_level=True)
PREFIX = "/ga4gh/wes/v1"
_BASE = "https://specs.invalid/wes/"
WES = yaml.safe_load((SPECS / "workflow_execution_service.openapi.yaml").read_text())
_SERVICE_INFO = yaml.safe_load((SPECS / "service-info.yaml").read_text())
_REGISTRY = referencing.Registry().with_resources([
    (_BASE + "workflow_execution_service.openapi.yaml",
     referencing.Resource.from_contents(WES, default_specification=referencing.jsonschema.DRAFT4)),
    (_BASE + "service-info.yaml",
     referencing.Resource.from_contents(_SERVICE_INFO,
                                        default_specification=referencing.jsonschema.DRAFT4)),
])


class SchemaMismatch(AssertionError):
    pass


def _operation(method: str, path: str) -> tuple[str, dict]:
    path = path.split("?")[0]
    assert path.startswith(PREFIX), path
    path = path[len(PREFIX):]
    for template, operations in WES["paths"].items():
        regex = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(regex, path) and method.lower() in operations:
            return template, operations[method.lower()]
    raise SchemaMismatch(f"{method} {path} is not in the WES document")


def validate(schema_name: str, body) -> None:
    schema = {"$ref": _BASE + "workflow_execution_service.openapi.yaml#/components/schemas/"
              + schema_name}
    validator = OAS30Validator(schema, registry=_REGISTRY)
    errors = list(validator.iter_errors(body))
    if errors:
        raise SchemaMismatch(f"{schema_name}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]))


def check_response(method: str, path: str, status: int, content_type: str,
                   body: bytes) -> None:
    template, operation = _operation(method, path)
    spec = operation["responses"].get(status) or operation["responses"].get(str(status))
    if spec is None:
        raise SchemaMismatch(f"{method} {template}: status {status} is not documented")
    media = content_type.split(";")[0].strip()
    content = spec.get("content", {})
    if media not in content:
        raise SchemaMismatch(f"{method} {template} {status}: media type {media} not documented")
    ref = content[media]["schema"]["$ref"]
    validate(ref.rsplit("/", 1)[-1], json.loads(body))
