"""RunPod's OpenAPI 3.1 spec as a contract: find an operation, check a request, check an answer.

OpenAPI 3.1 schemas are JSON Schema 2020-12, so the spec is validated natively: one
`referencing.Registry` holds the spec as a resource and every validator is a `$ref` into it
(`#/components/schemas/X`, `unevaluatedProperties`, `if`/`then` work as written).

Strictness beyond the spec: the spec rarely says `additionalProperties: false`, so a misspelt field
would be ignored on a paid pod. `strict_schema` closes every object the spec leaves open with
`unevaluatedProperties: false` where a value is used whole (a property's value, an array's items,
a request or response body), never inside `allOf`/`anyOf`/`oneOf`, whose parts compose one object.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from urllib.parse import unquote

import jsonschema
import referencing
from jsonschema.exceptions import best_match
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parent.parent / "fixtures" / "runpod_openapi_v2.json"
SPEC_URI = "urn:runpod:openapi-v2"
METHODS = ("get", "put", "post", "patch", "delete")

# Keywords whose schema is a value used whole, and keywords whose schemas are parts of one value.
_WHOLE_ONE = ("additionalProperties", "items", "unevaluatedItems", "contains")
_WHOLE_MAP = ("properties", "patternProperties")
_PART_ONE = ("not", "if", "then", "else")
_PART_LIST = ("allOf", "anyOf", "oneOf")


class Invalid(Exception):
    """A request the spec refuses: `status` (400 or 422), a `detail`, and `errors` for a 422."""

    def __init__(self, status: int, detail: str, errors: list[str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors


@functools.cache
def load_spec(path: Path = SPEC_PATH) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@functools.cache
def contract() -> Spec:
    """The spec, ready to check requests and answers (one per process: validators are cached)."""
    return Spec(load_spec())


def pointer(*parts: str) -> str:
    """A JSON pointer (RFC 6901) to `parts`."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _may_be_object(schema: dict) -> bool:
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    return (
        kind is None and any(k in schema for k in ("$ref", "properties", *_PART_LIST))
    ) or "object" in kinds


def strict_schema(schema, whole: bool = False):
    """`schema` with every object it uses whole closed by `unevaluatedProperties: false`."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _WHOLE_MAP:
            out[key] = {name: strict_schema(sub, True) for name, sub in value.items()}
        elif key in _WHOLE_ONE:
            out[key] = strict_schema(value, True)
        elif key == "prefixItems":
            out[key] = [strict_schema(sub, True) for sub in value]
        elif key in _PART_LIST:
            out[key] = [strict_schema(sub) for sub in value]
        elif key in _PART_ONE:
            out[key] = strict_schema(value)
        elif key == "dependentSchemas":
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        else:
            out[key] = value
    if whole and _may_be_object(out) and "unevaluatedProperties" not in out:
        return {"allOf": [out], "unevaluatedProperties": False}
    return out


def strict_spec(spec: dict) -> dict:
    """The spec with every schema in it made strict (the places a schema may stand in OpenAPI)."""
    out = copy.deepcopy(spec)

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("example", "examples"):
                    continue
                if key == "schema" and isinstance(value, dict):
                    node[key] = strict_schema(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(out["paths"])
    for name in ("parameters", "responses", "headers", "requestBodies"):
        walk(out["components"].get(name, {}))
    out["components"]["schemas"] = {
        name: strict_schema(schema) for name, schema in out["components"]["schemas"].items()
    }
    return out


class Operation:
    """One operation of the spec: method, path template, its declared parameters and bodies."""

    def __init__(self, spec: Spec, template: str, method: str):
        self.spec, self.template, self.method = spec, template, method.upper()
        item = spec.raw["paths"][template]
        self.op = item[method]
        self.id = self.op["operationId"]
        self.where = pointer("paths", template, method)
        params = {}
        for at, declared in (
            (pointer("paths", template, "parameters"), item.get("parameters", [])),
            (self.where + "/parameters", self.op.get("parameters", [])),
        ):
            for index, param in enumerate(declared):
                where = f"{at}/{index}"
                if "$ref" in param:
                    where = param["$ref"][1:]
                    param = spec.resolve(param["$ref"])
                params[(param["in"], param["name"])] = (param, where + "/schema")
        self.params = params

    def request_schema(self) -> str | None:
        body = self.op.get("requestBody")
        if body is None or "application/json" not in body.get("content", {}):
            return None
        return self.where + pointer("requestBody", "content", "application/json", "schema")

    def response(self, status: int) -> tuple[str, dict] | None:
        """(pointer, response object) declared for `status` (or `default`), $ref resolved."""
        for key in (str(status), "default"):
            declared = self.op["responses"].get(key)
            if declared is not None:
                if "$ref" in declared:
                    return declared["$ref"][1:], self.spec.resolve(declared["$ref"])
                return self.where + pointer("responses", key), declared
        return None


class Spec:
    """The spec's operations, found by method and path, with validators for their parts."""

    def __init__(self, raw: dict):
        self.raw = raw
        self.strict = strict_spec(raw)
        self.registry = referencing.Registry().with_resource(
            SPEC_URI, DRAFT202012.create_resource(self.strict)
        )
        self.routes = []
        for template, item in raw["paths"].items():
            parts = [
                f"(?P<{seg[1:-1]}>[^/]+)" if seg.startswith("{") and seg.endswith("}") else re.escape(seg)
                for seg in template.strip("/").split("/")
            ]
            ops = {m.upper(): Operation(self, template, m) for m in item if m in METHODS}
            self.routes.append((re.compile("/" + "/".join(parts)), template, ops))
        # Literal segments win over parameters: /v2/registries/delegations is not registry
        # "delegations".
        self.routes.sort(key=lambda route: route[1].count("{"))
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}
        self._declared_cache: dict[str, frozenset[str]] = {}

    def resolve(self, ref: str) -> dict:
        node = self.raw
        for part in ref.removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def operation(self, operation_id: str) -> Operation:
        for _, _, ops in self.routes:
            for op in ops.values():
                if op.id == operation_id:
                    return op
        raise KeyError(operation_id)

    def match(self, path: str):
        """(template, path parameters, {METHOD: Operation}) for a path, or None."""
        for regex, template, ops in self.routes:
            m = regex.fullmatch(path)
            if m:
                return template, {k: unquote(v) for k, v in m.groupdict().items()}, ops
        return None

    # --- validation ---

    def validator(self, where: str) -> jsonschema.Draft202012Validator:
        """A validator of the (strict) schema at JSON pointer `where`, used whole."""
        if where not in self._validators:
            root = strict_schema({"$ref": f"{SPEC_URI}#{where}"}, whole=True)
            self._validators[where] = jsonschema.Draft202012Validator(root, registry=self.registry)
        return self._validators[where]

    def problems(self, instance, where: str, prefix: str = "$") -> list[str]:
        """Every way `instance` breaks the schema at `where`, each as `location: what is wrong`."""
        out = []
        for error in self.validator(where).iter_errors(instance):
            if error.context:  # anyOf/oneOf: the branch that came closest
                error = best_match(error.context)
            message = error.message
            if error.validator == "unevaluatedProperties":
                message = self._unexpected(error)
                if message is None:
                    continue
            location = prefix + error.json_path[1:]
            out.append(f"{location}: {message}")
        return sorted(set(out))

    def _unexpected(self, error) -> str | None:
        """An `unevaluatedProperties` error names the valid properties of every failing `allOf`
        part too (a failed part evaluates nothing); keep only the names no part declares."""
        declared = self._declared(json.dumps(error.schema, sort_keys=True))
        extra = sorted(name for name in error.instance if name not in declared)
        if not extra:
            return None
        names = ", ".join(repr(name) for name in extra)
        verb = "was" if len(extra) == 1 else "were"
        return f"Unevaluated properties are not allowed ({names} {verb} unexpected)"

    def _declared(self, schema_json: str) -> frozenset[str]:
        if schema_json in self._declared_cache:
            return self._declared_cache[schema_json]
        names: set[str] = set()
        seen: set[str] = set()

        def collect(schema):
            if not isinstance(schema, dict):
                return
            names.update(schema.get("properties", {}))
            ref = schema.get("$ref")
            if ref and ref not in seen:
                seen.add(ref)
                collect(self._strict_at(ref.split("#", 1)[1]))
            for key in _PART_LIST:
                for sub in schema.get(key, []):
                    collect(sub)
            for key in ("if", "then", "else"):
                collect(schema.get(key))
            for sub in schema.get("dependentSchemas", {}).values():
                collect(sub)

        collect(json.loads(schema_json))
        self._declared_cache[schema_json] = frozenset(names)
        return self._declared_cache[schema_json]

    def _strict_at(self, where: str):
        node = self.strict
        for part in where.split("/")[1:]:
            node = node[unquote(part).replace("~1", "/").replace("~0", "~")]
        return node

    # --- requests ---

    def parameters(self, op: Operation, path_params: dict[str, str], query: dict[str, list[str]]) -> dict:
        """Path and query parameters typed as their schemas say and valid against them.

        A query parameter the operation does not declare is a 400; a value against its schema a
        422. Arrays are `style: form, explode: false` in this spec: one comma-separated value.
        """
        unknown = sorted(name for name in query if ("query", name) not in op.params)
        if unknown:
            known = sorted(name for where, name in op.params if where == "query")
            raise Invalid(
                400,
                f"Unknown query parameter {', '.join(map(repr, unknown))}: "
                f"{op.id} takes {', '.join(known) or 'none'}.",
            )
        values, errors = {}, []
        for (where, name), (param, schema_at) in op.params.items():
            if where == "path":
                raw = [path_params[name]]
            elif where == "query" and name in query:
                raw = query[name]
            else:  # absent: the handler knows its default
                if param.get("required"):
                    errors.append(f"{where}.{name}: required")
                continue
            schema = self._schema_of(param["schema"])
            if len(raw) > 1:
                errors.append(
                    f"{where}.{name}: given {len(raw)} times"
                    + ("; a list is one comma-separated value" if schema.get("type") == "array" else "")
                )
                continue
            if schema.get("type") == "array":
                item_type = self._schema_of(schema.get("items", {})).get("type")
                value = [_typed(text, item_type) for text in raw[0].split(",")]
            else:
                value = _typed(raw[0], schema.get("type"))
            problems = self.problems(value, schema_at, prefix=f"{where}.{name}")
            errors.extend(problems)
            values[name] = value
        if errors:
            raise Invalid(422, "Request validation failed.", errors)
        return values

    def _schema_of(self, schema: dict) -> dict:
        while "$ref" in schema:
            schema = self.resolve(schema["$ref"])
        return schema

    def body(self, op: Operation, raw: bytes, content_type: str):
        """The JSON request body, valid against the operation's schema; None if it takes none
        (RunPod ignores what it did not ask for)."""
        declared = op.op.get("requestBody")
        if declared is None:
            return None
        if not raw:
            if declared.get("required"):
                raise Invalid(400, f"{op.id} needs a JSON request body.")
            return None
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise Invalid(415, f"Content-Type must be application/json, not {content_type!r}.")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise Invalid(400, f"The request body is not valid JSON: {exc}.") from None
        problems = self.problems(body, op.request_schema())
        if problems:
            raise Invalid(422, "Request validation failed.", problems)
        return body

    # --- answers ---

    def answer_problems(
        self, op: Operation | None, status: int, payload, content_type: str | None
    ) -> list[str]:
        """How an answer breaks the spec: an undeclared status, a body where none is declared
        (or none where one is), a body against its schema."""
        if op is None:  # outside every operation: a problem body
            return self.problems(payload, pointer("components", "schemas", "ErrorResponse"))
        found = op.response(status)
        if found is None or (status < 400 and str(status) not in op.op["responses"]):
            return [f"{op.id} declares no {status} answer"]
        where, response = found
        content = response.get("content", {})
        if payload is None:
            return [f"{op.id} {status} declares a body ({', '.join(content)})"] if content else []
        if content_type not in content:
            return [(f"{op.id} {status} declares {', '.join(content) or 'no body'}, not {content_type}")]
        return self.problems(payload, where + pointer("content", content_type, "schema"))


def _typed(text: str, kind):
    """A query value as its schema's type, where it reads as one; otherwise the text, for the
    schema to refuse."""
    if kind == "integer" and re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if kind == "number":
        try:
            return float(text)
        except ValueError:
            return text
    if kind == "boolean" and text in ("true", "false"):
        return text == "true"
    return text
