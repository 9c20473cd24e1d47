"""RunPod's REST API v1 on 127.0.0.1, with a real sshd behind every running pod.

The published OpenAPI spec (tests/fixtures/runpod_openapi.json) is the contract, read at run time:
every request is checked against its operation's parameters and body schema, and every body the
fake answers with against the response schema, so neither our client nor the fake can drift from
the spec unnoticed. Request bodies are stricter than the spec (which never says
`additionalProperties: false`): a misspelt field fails here instead of being ignored on a paid pod.

Pods behave as RunPod documents them: the address (publicIp, portMappings) appears only after the
pod has booted; every login sees RUNPOD_POD_ID, RUNPOD_PUBLIC_IP, RUNPOD_TCP_PORT_22 and a
pod-scoped RUNPOD_API_KEY that may stop its own pod; stop keeps the volume and loses the container
disk (so the host key and the port change at every start, and the pod's processes die); terminate
wipes the volume.

    with FakeRunPod(tmp_path / "runpod", user_key="rpa_TEST") as runpod:
        pod = requests.post(f"{runpod.url}/pods", json={...},
                            headers={"Authorization": "Bearer rpa_TEST"}).json()
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import os
import re
import secrets
import shutil
import signal
import string
import threading
import time
import traceback
from collections import namedtuple
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import jsonschema

from helpers.sshd import Sshd, free_port, keygen

SPEC_PATH = Path(__file__).resolve().parent.parent / "fixtures" / "runpod_openapi.json"

# Bodies RunPod answers with, for fail_next(...) in tests.
UNAUTHORIZED = "Unauthorized"
NO_INSTANCES = ("There are no longer any instances available with the requested specifications. "
                "Please refresh and try again.")
# The start of a stopped pod whose host has re-rented its GPUs (reported as a 500 by others).
NO_FREE_GPUS = "start pod: There are not enough free GPUs on the host machine to start this pod."
INSUFFICIENT_FUNDS = "Insufficient funds: add credit to your account to rent this pod."
TOO_MANY_REQUESTS = "Too many requests"

# $/hour per GPU (per pod for a CPU flavor); anything else costs `default_price`.
PRICES = {
    "NVIDIA A100-SXM4-80GB": 1.89,
    "NVIDIA A100 80GB PCIe": 1.64,
    "NVIDIA H100 80GB HBM3": 2.99,
    "NVIDIA H100 PCIe": 2.39,
    "NVIDIA H200": 3.99,
    "NVIDIA L40S": 0.86,
    "NVIDIA RTX A6000": 0.49,
    "NVIDIA GeForce RTX 4090": 0.69,
}

LOCALHOST = "127.0.0.1"

Request = namedtuple("Request", "method path query body auth")
Request.__doc__ = """One request as the fake saw it: path under /v1 ("/pods/<id>/stop"); query a
dict of str (a list when repeated); body the parsed JSON or None; auth "user", "pod" or "none"
(no key, or a key that is no longer or never was valid)."""


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def error_body(status: int, message: str) -> dict:
    return {"error": message, "status": status}


# --- the spec ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def load_spec(path: Path = SPEC_PATH) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def resolve(spec: dict, ref: str) -> dict:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $refs are supported, not {ref}")
    node = spec
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


_ANNOTATIONS = {"nullable", "example", "description", "default", "format", "readOnly", "writeOnly",
                "deprecated", "xml", "externalDocs", "discriminator", "title"}


def json_schema(node, spec: dict, strict: bool):
    """An OpenAPI 3.0 schema object as a JSON Schema, $refs inlined.

    `nullable: true` becomes a "null" type; `items` on an object (the spec's way of typing the
    values of `env` and `portMappings`) becomes `additionalProperties`; with `strict`, an object
    with declared properties admits no others. Formats are annotations only, as in jsonschema.
    """
    if isinstance(node, list):
        return [json_schema(item, spec, strict) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return json_schema(resolve(spec, node["$ref"]), spec, strict)
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: json_schema(sub, spec, strict) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = json_schema(value, spec, strict)
        elif key not in _ANNOTATIONS:
            out[key] = value
    if out.get("type") == "object" and "items" in out:
        out.setdefault("additionalProperties", out.pop("items"))
    if strict and out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


class Spec:
    """The operations of the spec, found by method and path, with validators for their parts."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.routes = []
        for template, item in spec["paths"].items():
            parts = [f"(?P<{seg[1:-1]}>[^/]+)" if seg.startswith("{") and seg.endswith("}")
                     else re.escape(seg) for seg in template.strip("/").split("/")]
            ops = {method.upper(): op for method, op in item.items()
                   if method in ("get", "post", "put", "patch", "delete")}
            self.routes.append((re.compile("/" + "/".join(parts)), template, ops))
        self._validators: dict[str, jsonschema.Draft7Validator] = {}

    def match(self, path: str):
        for regex, template, ops in self.routes:
            m = regex.fullmatch(path)
            if m:
                return template, {k: unquote(v) for k, v in m.groupdict().items()}, ops
        return None

    def validator(self, schema: dict, strict: bool) -> jsonschema.Draft7Validator:
        key = json.dumps([schema, strict], sort_keys=True)
        if key not in self._validators:
            converted = json_schema(schema, self.spec, strict)
            jsonschema.Draft7Validator.check_schema(converted)
            self._validators[key] = jsonschema.Draft7Validator(converted)
        return self._validators[key]

    def problems(self, instance, schema: dict, strict: bool, what: str) -> list[str]:
        """Every way `instance` breaks `schema`, each as `where: what is wrong`."""
        errors = sorted(self.validator(schema, strict).iter_errors(instance),
                        key=lambda e: [str(p) for p in e.absolute_path])
        return [f"{'/'.join(str(p) for p in e.absolute_path) or what}: {e.message}"
                for e in errors]

    @staticmethod
    def schema_name(schema: dict, default: str) -> str:
        return schema.get("$ref", default).rsplit("/", 1)[-1]

    def defaults(self, schema: dict) -> dict:
        """The spec's defaults of an input object; a list's default written as "a,b" is split."""
        out = {}
        for name, prop in resolve_props(self.spec, schema).items():
            if "default" in prop:
                value = copy.deepcopy(prop["default"])
                if prop.get("type") == "array" and isinstance(value, str):
                    value = value.split(",")
                out[name] = value
        return out


def resolve_props(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = resolve(spec, schema["$ref"])
    return schema.get("properties", {})


# --- pods ----------------------------------------------------------------------------------------

def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def random_id(length: int = 14) -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(length))


def pod_processes(pod_id: str) -> list[int]:
    """Processes a login on the pod started: they carry its RUNPOD_POD_ID (Linux's /proc)."""
    marker = f"RUNPOD_POD_ID={pod_id}".encode()
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_pod_processes(pod_id: str, grace: float = 2.0) -> None:
    """What stopping the container does to what runs in it: SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        pids = pod_processes(pod_id)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and pod_processes(pod_id):
            time.sleep(0.05)


@dataclass
class FakePod:
    id: str
    name: str
    created_body: dict           # the POST /pods body as sent
    settings: dict               # that body over the spec's defaults
    pod_key: str                 # the pod-scoped RUNPOD_API_KEY
    env: dict                    # the body's env, as the API echoes it
    root: Path                   # where the pod's sshd folders go (one per start)
    cost_per_hr: float
    gpu_type: str | None
    machine_id: str
    data_center: str
    status: str = "RUNNING"      # desiredStatus: RUNNING, EXITED, TERMINATED
    sshd: Sshd | None = None
    start_count: int = 0
    boot_polls_left: int = 0
    last_started_at: str = ""
    last_status_change: str = ""
    login_env: dict = field(default_factory=dict)
    _run_closed: float = 0.0
    _running_since: float | None = None

    @property
    def port(self) -> int | None:
        return self.sshd.port if self.sshd else None

    @property
    def run_seconds(self) -> float:
        open_interval = time.monotonic() - self._running_since if self._running_since else 0.0
        return self._run_closed + open_interval

    @property
    def cost_usd(self) -> float:
        return self.run_seconds / 3600 * self.cost_per_hr

    @property
    def has_volume(self) -> bool:
        return bool(self.settings.get("volumeInGb"))


class FakeRunPod:
    """RunPod's REST API v1 on 127.0.0.1 (`.url`), pods played by real sshd servers.

    `user_key` may do everything; each pod's `pod_key` may only GET and stop that pod.
    `client_key` is authorized on every pod (made in `root` when None); every pod mounts its volume
    at `workspace` (default root/"workspace"), like RunPod's /workspace.
    """

    def __init__(self, root: Path, user_key: str, client_key: Path | None = None,
                 workspace: Path | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.user_key = user_key
        self.client_key = Path(client_key) if client_key else keygen(self.root / "client_key")
        self.workspace = Path(workspace) if workspace else self.root / "workspace"
        self.boot_polls = 1            # GET /pods/{id} that still show no address after a start
        self.booting_fields = {"publicIp": "", "portMappings": {}}   # how "no address" reads
        self.prices = dict(PRICES)
        self.default_price = 1.0
        self.unavailable: set[str] = set()   # GPU types out of stock: creating on them fails
        self.pods: dict[str, FakePod] = {}   # every pod ever created, terminated ones included
        self.requests: list[Request] = []
        self.violations: list[str] = []      # the fake's own failures: a non-empty list is a bug
        self.spec = Spec(load_spec())
        self.lock = threading.RLock()
        self._faults: list[dict] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._handlers = {"ListPods": self._list, "CreatePod": self._create, "GetPod": self._get,
                          "DeletePod": self._delete, "StartPod": self._start,
                          "StopPod": self._stop_op, "GetOpenAPI": self._openapi}

    # --- server ---

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}/v1"

    def start(self) -> "FakeRunPod":
        self._server = ThreadingHTTPServer((LOCALHOST, 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, name="fake-runpod",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and stop every pod's sshd and processes (volumes stay for inspection)."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:
            for pod in self.pods.values():
                self._halt(pod)

    def __enter__(self) -> "FakeRunPod":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()
        if exc_type is None:
            self.assert_no_violations()

    def assert_no_violations(self) -> None:
        if self.violations:
            raise AssertionError("the fake RunPod broke its own spec:\n"
                                 + "\n".join(self.violations))

    # --- test controls ---

    def fail_next(self, method: str, path_regex: str, status: int, message: str,
                  times: int = 1) -> None:
        """The next `times` requests whose path under /v1 fullmatches `path_regex` get this error,
        before authentication and validation, and change nothing."""
        with self.lock:
            self._faults.append({"method": method.upper(), "regex": re.compile(path_regex),
                                 "status": status, "message": message, "times": times})

    def interrupt(self, pod_id: str) -> None:
        """RunPod stops the pod on its own (a spot pod outbid, a host failing)."""
        with self.lock:
            self._stop(self.pods[pod_id], "Interrupted by RunPod")

    def calls(self, method: str, path_regex: str) -> list[Request]:
        """The requests so far with this method and a path under /v1 that fullmatches."""
        with self.lock:
            return [r for r in self.requests
                    if r.method == method.upper() and re.fullmatch(path_regex, r.path)]

    # --- one request ---

    def serve(self, method: str, path: str, query: dict[str, list[str]], headers, raw_body: bytes):
        """(status, JSON-able body or None) for one request; never raises."""
        try:
            with self.lock:
                return self._serve(method, path, query, headers, raw_body)
        except Exception as exc:   # a bug in the fake: say so in the answer and in .violations
            self.violations.append(f"{method} {path}: {traceback.format_exc()}")
            return 500, error_body(500, f"fake RunPod failed: {exc!r}")

    def _serve(self, method, path, query, headers, raw_body):
        rel = path[len("/v1"):] if path == "/v1" or path.startswith("/v1/") else None
        body = None
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError:
                pass             # recorded as None; refused below if the operation takes a body
        auth, auth_pod = self._auth(headers)
        self.requests.append(Request(method, rel if rel is not None else path,
                                     {k: v[0] if len(v) == 1 else v for k, v in query.items()},
                                     body, auth))
        if rel is None:
            return 404, error_body(404, f"no such path {path}: RunPod's REST API lives under /v1")

        for fault in self._faults:
            if fault["method"] == method and fault["regex"].fullmatch(rel):
                fault["times"] -= 1
                if fault["times"] <= 0:
                    self._faults.remove(fault)
                return fault["status"], error_body(fault["status"], fault["message"])

        route = self.spec.match(rel)
        if route is None:
            return 404, error_body(404, f"no such path {rel}")
        template, path_params, ops = route
        op = ops.get(method)
        if op is None:
            return 405, error_body(405, f"{method} is not allowed on {template}; "
                                        f"allowed: {', '.join(sorted(ops))}")

        if op.get("security", self.spec.spec.get("security")):
            allowed = auth == "user" or (
                auth == "pod" and op["operationId"] in ("GetPod", "StopPod")
                and path_params.get("podId") == auth_pod)
            if not allowed:
                return 401, error_body(401, UNAUTHORIZED)

        try:
            params = self._check_parameters(op, path_params, query)
            body = self._check_body(op, raw_body, headers)
            handler = self._handlers.get(op["operationId"])
            if handler is None:
                return 501, error_body(501, f"the fake RunPod does not model {op['operationId']} "
                                            f"({method} {template})")
            status, payload = handler(params, body)
        except ApiError as exc:
            return exc.status, error_body(exc.status, exc.message)

        schema = (op["responses"].get(str(status), {}).get("content", {})
                  .get("application/json", {}).get("schema"))
        if schema is not None and op["operationId"] != "GetOpenAPI":
            problems = self.spec.problems(payload, schema, strict=True,
                                          what=Spec.schema_name(schema, "response"))
            if problems:
                self.violations.append(f"{method} {rel} answered {status} against the spec: "
                                       + "; ".join(problems))
                return 500, error_body(500, "fake RunPod answered against the spec: "
                                       + "; ".join(problems))
        return status, payload

    def _auth(self, headers) -> tuple[str, str | None]:
        value = headers.get("Authorization") or ""
        scheme, _, key = value.partition(" ")
        key = key.strip().encode()
        if scheme.lower() != "bearer" or not key:
            return "none", None
        if secrets.compare_digest(key, self.user_key.encode()):
            return "user", None
        for pod in self.pods.values():
            if pod.status != "TERMINATED" and secrets.compare_digest(key, pod.pod_key.encode()):
                return "pod", pod.id
        return "none", None

    def _check_parameters(self, op: dict, path_params: dict, query: dict) -> dict:
        declared = {(p["in"], p["name"]): p for p in op.get("parameters", [])}
        values = {}
        for name, raw in query.items():
            param = declared.get(("query", name))
            if param is None:
                known = sorted(n for where, n in declared if where == "query")
                raise ApiError(400, f"unknown query parameter {name!r}; {op['operationId']} takes "
                                    f"{', '.join(known) or 'none'}")
            values[name] = self._parameter_value(param, raw)
        for (where, name), param in declared.items():
            if where == "query" and param.get("required") and name not in query:
                raise ApiError(400, f"query parameter {name!r} is required")
            if where == "path":
                values[name] = self._parameter_value(param, [path_params[name]])
        for name, value in path_params.items():
            values.setdefault(name, value)
        return values

    def _parameter_value(self, param: dict, raw: list[str]):
        """A query or path value, typed as its schema says, then validated against it."""
        schema = json_schema(param["schema"], self.spec.spec, strict=True)
        name = param["name"]

        def typed(text: str, kind):
            if kind == "boolean":
                if text not in ("true", "false"):
                    raise ApiError(400, f"{param['in']} parameter {name}: {text!r} is not "
                                        "a boolean")
                return text == "true"
            if kind in ("integer", "number"):
                try:
                    return int(text) if kind == "integer" else float(text)
                except ValueError:
                    raise ApiError(400, f"{param['in']} parameter {name}: {text!r} is not "
                                        f"an {kind}") from None
            return text

        if schema.get("type") == "array":
            value = [typed(text, schema.get("items", {}).get("type")) for text in raw]
        elif len(raw) > 1:
            raise ApiError(400, f"{param['in']} parameter {name} is given {len(raw)} times")
        else:
            value = typed(raw[0], schema.get("type"))
        problems = self.spec.problems(value, param["schema"], strict=True, what=name)
        if problems:
            raise ApiError(400, f"{param['in']} parameter {name}: " + "; ".join(problems))
        return value

    def _check_body(self, op: dict, raw_body: bytes, headers):
        """The request body as JSON, valid against the operation's schema; None if it has none."""
        declared = op.get("requestBody")
        if declared is None:
            return None          # RunPod ignores what it did not ask for
        if not raw_body:
            if declared.get("required"):
                raise ApiError(400, f"{op['operationId']} needs a JSON request body")
            return None
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type != "application/json":
            raise ApiError(400, f"Content-Type must be application/json, not {content_type!r}")
        try:
            body = json.loads(raw_body)
        except ValueError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        schema = declared["content"]["application/json"]["schema"]
        problems = self.spec.problems(body, schema, strict=True,
                                      what=Spec.schema_name(schema, "body"))
        if problems:
            raise ApiError(400, "; ".join(problems))
        return body

    # --- operations ---

    def _openapi(self, params, body):
        return 200, self.spec.spec

    def _pod(self, params) -> FakePod:
        pod = self.pods.get(params["podId"])
        if pod is None or pod.status == "TERMINATED":
            raise ApiError(404, "pod not found")
        return pod

    def _list(self, params, body):
        filters = {
            "id": lambda p, v: p.id == v,
            "name": lambda p, v: p.name == v,
            "desiredStatus": lambda p, v: p.status == v,
            "imageName": lambda p, v: p.settings.get("imageName") == v,
            "templateId": lambda p, v: p.settings.get("templateId") == v,
            "computeType": lambda p, v: p.settings["computeType"] == v,
            "gpuTypeId": lambda p, v: p.gpu_type in v,
            "cpuFlavorId": lambda p, v: p.gpu_type is None
            and (p.settings.get("cpuFlavorIds") or ["cpu3c"])[0] in v,
            "dataCenterId": lambda p, v: p.data_center in v,
            "endpointId": lambda p, v: False,        # no serverless workers here
            "networkVolumeId": lambda p, v: False,   # no network volumes here
        }
        pods = [p for p in self.pods.values() if p.status != "TERMINATED"
                and all(test(p, params[name]) for name, test in filters.items() if name in params)]
        return 200, [self._pod_json(p, params) for p in pods]

    def _get(self, params, body):
        pod = self._pod(params)
        answer = self._pod_json(pod, params)
        if pod.status == "RUNNING" and pod.boot_polls_left > 0:
            pod.boot_polls_left -= 1
        return 200, answer

    def _create(self, params, body):
        settings = self.spec.defaults(self.spec.spec["paths"]["/pods"]["post"]["requestBody"]
                                      ["content"]["application/json"]["schema"])
        settings.update({k: v for k, v in body.items() if v is not None})
        if not settings.get("imageName") and not settings.get("templateId"):
            raise ApiError(400, "imageName or templateId is required")
        if settings.get("networkVolumeId"):
            raise ApiError(400, f"network volume {settings['networkVolumeId']} not found")
        if settings["computeType"] == "GPU":
            wanted = settings.get("gpuTypeIds") or []
            if not wanted:
                raise ApiError(400, "gpuTypeIds is required for a GPU pod")
            in_stock = [gpu for gpu in wanted if gpu not in self.unavailable]
            if not in_stock:
                raise ApiError(400, NO_INSTANCES)
            gpu_type = in_stock[0]
            cost = self.prices.get(gpu_type, self.default_price) * settings["gpuCount"]
        else:
            gpu_type = None
            flavor = (settings.get("cpuFlavorIds") or ["cpu3c"])[0]
            cost = self.prices.get(flavor, self.default_price)
        pod_id = random_id()
        pod = FakePod(
            id=pod_id, name=settings["name"], created_body=copy.deepcopy(body), settings=settings,
            pod_key="rpa_" + "".join(secrets.choice(string.ascii_uppercase + string.digits)
                                     for _ in range(40)),
            env=dict(settings.get("env") or {}), root=self.root / "pods" / pod_id,
            cost_per_hr=round(cost, 4), gpu_type=gpu_type, machine_id=random_id(12),
            data_center=(settings.get("dataCenterIds") or ["EU-RO-1"])[0])
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.pods[pod_id] = pod
        self._boot(pod, "Rented by User")
        return 201, self._pod_json(pod, {})

    def _start(self, params, body):
        pod = self._pod(params)
        if pod.status != "RUNNING":
            self._boot(pod, "Resumed by User")
        return 200, None         # the spec declares no body for 200

    def _stop_op(self, params, body):
        self._stop(self._pod(params), "Exited by User")
        return 200, None

    def _delete(self, params, body):
        pod = self._pod(params)
        pod.status = "TERMINATED"
        pod.last_status_change = f"Terminated by User: {now_iso()}"
        self._halt(pod)
        shutil.rmtree(self.workspace, ignore_errors=True)
        return 204, None

    # --- the pod's machine ---

    def _boot(self, pod: FakePod, reason: str) -> None:
        """A fresh container: a new sshd, on a new port, with a new host key."""
        pod.start_count += 1
        port = free_port()
        pod.login_env = {
            **pod.env,
            "RUNPOD_POD_ID": pod.id,
            "RUNPOD_API_KEY": pod.pod_key,
            "RUNPOD_PUBLIC_IP": LOCALHOST,
            "RUNPOD_TCP_PORT_22": str(port),
            "RUNPOD_GPU_COUNT": str(pod.settings["gpuCount"] if pod.gpu_type else 0),
            "RUNPOD_DC_ID": pod.data_center,
        }
        pod.sshd = Sshd(pod.root / f"boot-{pod.start_count}", client_key=self.client_key,
                        env=pod.login_env, port=port).start()
        pod.status = "RUNNING"
        pod._running_since = time.monotonic()
        pod.boot_polls_left = self.boot_polls
        pod.last_started_at = now_iso()
        pod.last_status_change = f"{reason}: {pod.last_started_at}"

    def _stop(self, pod: FakePod, reason: str) -> None:
        if pod.status != "RUNNING":
            return
        pod.status = "EXITED"    # first: a pod stopping itself dies in the middle of this
        pod.last_status_change = f"{reason}: {now_iso()}"
        self._halt(pod)
        if not pod.has_volume:       # /workspace was on the container disk, lost with it
            shutil.rmtree(self.workspace, ignore_errors=True)

    def _halt(self, pod: FakePod) -> None:
        """No more billing, no more logins, no more processes."""
        if pod._running_since is not None:
            pod._run_closed += time.monotonic() - pod._running_since
            pod._running_since = None
        if pod.sshd:
            pod.sshd.stop()
            pod.sshd = None
        kill_pod_processes(pod.id)

    def _pod_json(self, pod: FakePod, params: dict) -> dict:
        s = pod.settings
        out = {
            "id": pod.id,
            "name": pod.name,
            "desiredStatus": pod.status,
            "costPerHr": pod.cost_per_hr,
            "adjustedCostPerHr": pod.cost_per_hr,
            "consumerUserId": "user_fakerunpod",
            "machineId": pod.machine_id,
            "env": dict(pod.env),
            "ports": list(s["ports"]),
            "volumeInGb": s["volumeInGb"],
            "containerDiskInGb": s["containerDiskInGb"],
            "volumeMountPath": s["volumeMountPath"],
            "interruptible": s["interruptible"],
            "locked": s["locked"],
            "dockerEntrypoint": list(s["dockerEntrypoint"]),
            "dockerStartCmd": list(s["dockerStartCmd"]),
            "lastStartedAt": pod.last_started_at,
            "lastStatusChange": pod.last_status_change,
            "memoryInGb": 62 * (s["gpuCount"] if pod.gpu_type else 1),
            "vcpuCount": (8 * s["gpuCount"]) if pod.gpu_type else s["vcpuCount"],
        }
        if s.get("imageName"):
            out["image"] = s["imageName"]
        if s.get("templateId"):
            out["templateId"] = s["templateId"]
        if s.get("containerRegistryAuthId"):
            out["containerRegistryAuthId"] = s["containerRegistryAuthId"]
        if pod.gpu_type:
            display = pod.gpu_type.replace("NVIDIA ", "").replace("GeForce ", "")
            out["gpu"] = {"id": pod.gpu_type, "count": s["gpuCount"], "displayName": display}
        else:
            out["cpuFlavorId"] = (s.get("cpuFlavorIds") or ["cpu3c"])[0]
        if pod.status == "RUNNING" and pod.sshd and pod.boot_polls_left <= 0:
            out["publicIp"] = LOCALHOST
            out["portMappings"] = {"22": pod.sshd.port} if "22/tcp" in s["ports"] else {}
        else:
            out.update(copy.deepcopy(self.booting_fields))
        if params.get("includeMachine"):
            out["machine"] = {"gpuTypeId": pod.gpu_type or "", "dataCenterId": pod.data_center,
                              "location": pod.data_center,
                              "secureCloud": s["cloudType"] == "SECURE",
                              "supportPublicIp": True, "costPerHr": pod.cost_per_hr}
        if params.get("includeSavingsPlans"):
            out["savingsPlans"] = []
        return out


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeRunPod/1"

    def _handle(self) -> None:
        fake: FakeRunPod = self.server.fake
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        query = parse_qs(url.query, keep_blank_values=True)
        status, payload = fake.serve(self.command, url.path, query, self.headers, raw_body)
        data = b"" if payload is None else json.dumps(payload).encode()
        try:
            self.send_response(status)
            if payload is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass                 # the caller died, e.g. a pod process that stopped its own pod

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _handle

    def log_message(self, format, *args) -> None:
        with open(self.server.fake.root / "http.log", "a", encoding="utf-8") as log:
            log.write(f"{self.log_date_time_string()} {format % args}\n")
