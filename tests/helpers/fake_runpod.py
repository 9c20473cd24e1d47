"""RunPod's REST API v2 on 127.0.0.1, with a real sshd behind every running pod.

It plays RunPod's REST API v2 as of runpod/docs commit a900806 (spec version 2.0.0, OpenAPI 3.1.0,
tests/fixtures/runpod_openapi_v2.json), read at run time as the contract (helpers/openapi.py):
every request is checked against its operation's parameters and body schema (422 with the
`errors` list, as RunPod answers), every answer against the response schema, so neither our client
nor the fake can drift from the spec unnoticed. Bodies are stricter than the spec: a misspelt field
fails instead of being ignored on a paid pod. Errors are RFC 9457 problems. RunPod's v1 paths are
gone (404: v1 is retired).

Pods behave as RunPod documents them: create answers PROVISIONING; GETs of the pod see STARTING,
then RUNNING (`boot_polls`); `ssh.direct` appears only when RUNNING with `22/tcp` in `ports`. The
sshd lets in exactly the account's registered keys (`ssh_keys`) as they were at create, and only if
the pod was created with `startSsh: true`. Every login sees RUNPOD_POD_ID, RUNPOD_PUBLIC_IP,
RUNPOD_TCP_PORT_22, RUNPOD_GPU_COUNT, RUNPOD_DC_ID and a pod-scoped RUNPOD_API_KEY that may read
and stop its own pod, nothing else. Stop kills the pod's processes and its sshd; every start is a
new container (new port, new host key). Storage: `mounts.persistent` survives stop and dies with
the pod; `mounts.network` is a network volume that outlives it; without a mount the workspace is
the container disk, wiped at every stop.

    with FakeRunPod(tmp_path / "runpod", user_key="rpa_TEST") as runpod:
        runpod.ssh_keys = [runpod.client_public_key]
        pod = requests.post(f"{runpod.url}/pods", json={...},
                            headers={"Authorization": "Bearer rpa_TEST"}).json()
"""

from __future__ import annotations

import datetime
import getpass
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
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from helpers import runpod_market as market
from helpers.openapi import Invalid, Operation, contract
from helpers.sshd import Sshd, free_port, keygen

# Details RunPod answers with, for fail_next(...) in tests.
NO_INSTANCES = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)
NO_FREE_GPUS = "There are not enough free GPUs on the host machine to start this pod."
INSUFFICIENT_BALANCE = "Insufficient balance: add credit to your account to rent this pod."
RATE_LIMITED = "rate limit exceeded for the minute window"
V1_RETIRED = "RunPod's REST API v1 is retired; the API is v2 and lives under /v2 (e.g. POST /v2/pods)."
POD_NOT_FOUND = "The requested Pod does not exist."

LOCALHOST = "127.0.0.1"
PROXY_HOST = "ssh.runpod.test"  # RunPod's SSH proxy: shown, never reachable (.test resolves not)
DEFAULT_DISK_GB = 20  # runpodctl's default container disk
ACTIONS = {
    "PROVISIONING": ["stop", "terminate"],
    "STARTING": ["stop", "terminate"],
    "RUNNING": ["stop", "restart", "terminate"],
    "EXITED": ["start", "terminate"],
    "ERROR": ["start", "terminate"],
    "TERMINATED": [],
}
BOOTING = ("PROVISIONING", "STARTING")
TITLES = {422: "Unprocessable Entity"}  # RFC 9457's example; Python 3.13 renames the phrase
HANDLED = {
    "getSshKeys",
    "updateSshKeys",
    "listPods",
    "createPod",
    "getPod",
    "deletePod",
    "podAction",
    "listGpuTypes",
    "getGpuType",
    "listPodBilling",
    "listNetworkVolumes",
    "getNetworkVolume",
}

Request = namedtuple("Request", "method path query body auth")
Request.__doc__ = """One request as the fake saw it: path under /v2 ("/pods/<id>/action"; the
full path when outside /v2); query a dict of str (a list when repeated); body the parsed JSON or
None; auth "user", "pod" or "none" (no key, or a key that is no longer or never was valid)."""

Answer = namedtuple("Answer", "status payload headers drop", defaults=({}, False))


class Problem(Exception):
    """An RFC 9457 problem answer."""

    def __init__(
        self, status: int, detail: str, errors: list[str] | None = None, headers: dict | None = None
    ):
        super().__init__(detail)
        self.status, self.detail, self.errors, self.headers = status, detail, errors, headers or {}

    def body(self) -> dict:
        out = {
            "title": TITLES.get(self.status) or HTTPStatus(self.status).phrase,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            out["errors"] = list(self.errors)
        return out


def now_iso() -> str:
    return market.iso(datetime.datetime.now(market.UTC))


def random_id(length: int = 14, alphabet: str = string.ascii_lowercase + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


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
class FakeVolume:
    id: str
    name: str
    size: int
    data_center: str
    path: Path

    def json(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "size": self.size,
            "dataCenter": self.data_center,
            "type": "STANDARD",
        }


@dataclass
class FakePod:
    id: str
    name: str
    created_body: dict  # the POST /pods body as sent
    pod_key: str  # the pod-scoped RUNPOD_API_KEY
    gpu_type: str | None  # None for a CPU pod
    gpu_count: int  # 0 for a CPU pod
    cpu: dict | None  # {"id", "vcpuCount", "memory"} for a CPU pod
    cloud: str
    cost_per_hr: float  # USD/h while billed
    machine_id: str
    data_center: str
    volume_id: str | None  # the network volume mounted, if any
    mount: str | None  # "persistent", "network" or None (the container disk)
    workspace: Path  # the local folder the pod's mount (or container disk) is
    authorized_keys: str  # what its sshd lets in ("" nobody)
    root: Path  # the pod's sshd folders, one per start
    status: str = "PROVISIONING"
    status_reason: str = ""
    error: str | None = None  # fail_pod's message
    sshd: Sshd | None = None
    start_count: int = 0
    boot_polls_left: int = 0
    host_gpus_taken: bool = False
    created_at: str = ""
    started_at: str | None = None
    login_env: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # [(unix time, status)], for billing
    proxy_user: str = ""
    _running_since: float | None = None

    @property
    def port(self) -> int | None:
        return self.sshd.port if self.sshd else None

    @property
    def run_seconds(self) -> float:
        """Seconds billed so far (PROVISIONING, STARTING, RUNNING, ERROR)."""
        return market.billed_seconds(self.history, time.time())

    @property
    def cost_usd(self) -> float:
        return self.run_seconds / 3600 * self.cost_per_hr


class FakeRunPod:
    """RunPod's REST API v2 on 127.0.0.1 (`.url`, ending in /v2), pods played by real sshd servers.

    `user_key` may do everything; each pod's `pod_key` may only GET that pod and stop it.
    `client_key` (made in `root` when None) is a key the tests own; it reaches pods only once
    registered (`ssh_keys`, or PUT /account/ssh-keys) before they are created with `startSsh`.
    As RunPod does it, `startSsh` hands the pod PUBLIC_KEY: the body's env PUBLIC_KEY if it sets
    one, else the registered keys; without `startSsh` the pod's sshd lets nobody in.

    Test controls (thread-safe): `ssh_keys`, `boot_polls`, `prices`, `unavailable`,
    `billing_lag_seconds`, `fail_next`, `drop_next`, `interrupt`, `take_host_gpus`,
    `release_host_gpus`, `fail_pod`, `add_network_volume`; what happened: `pods`, `requests`,
    `calls`, `violations`, `workspace` (the live pod's /workspace), `workspace_of`,
    `workspace_for_volume`.
    """

    def __init__(self, root: Path, user_key: str, client_key: Path | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.user_key = user_key
        self.client_key = Path(client_key) if client_key else keygen(self.root / "client_key")
        self.ssh_keys: list[str] = []  # the account's registered keys
        # A fixed path for the live pod's /workspace (configs name it before any pod exists): a
        # symlink to what the most recently booted pod mounts there.
        self.workspace = self.root / "workspace"
        self.boot_polls = 1  # GETs of a started pod that still show it booting
        self.prices = dict(market.PRICES)  # Secure Cloud $/h per GPU
        self.default_price = 1.0
        self.unavailable: set[str] = set()  # GPU ids out of stock: creating on them fails
        self.billing_lag_seconds = 0.0  # usage newer than this is not billed yet
        self.pods: dict[str, FakePod] = {}  # every pod ever created, terminated ones included
        self.volumes: dict[str, FakeVolume] = {}
        self.requests: list[Request] = []
        self.violations: list[str] = []  # the fake's own failures: a non-empty list is a bug
        self.spec = contract()
        self.lock = threading.RLock()
        self._faults: list[dict] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- server ---

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}/v2"

    @property
    def client_public_key(self) -> str:
        return Path(f"{self.client_key}.pub").read_text().strip()

    def start(self) -> FakeRunPod:
        self._server = ThreadingHTTPServer((LOCALHOST, 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="fake-runpod", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and stop every pod's sshd and processes (folders stay for inspection)."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:
            for pod in self.pods.values():
                self._halt(pod)

    def __enter__(self) -> FakeRunPod:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()
        if exc_type is None:
            self.assert_no_violations()

    def assert_no_violations(self) -> None:
        if self.violations:
            raise AssertionError("the fake RunPod broke its own spec:\n" + "\n".join(self.violations))

    # --- test controls ---

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int,
        detail: str,
        times: int = 1,
        retry_after: int | None = None,
    ) -> None:
        """The next `times` requests whose path under /v2 fullmatches `path_regex` get this
        problem (with a Retry-After header if given), before authentication and validation, and
        change nothing."""
        with self.lock:
            self._faults.append(
                {
                    "kind": "fail",
                    "method": method.upper(),
                    "regex": re.compile(path_regex),
                    "times": times,
                    "problem": Problem(
                        status,
                        detail,
                        headers=({"Retry-After": str(retry_after)} if retry_after is not None else {}),
                    ),
                }
            )

    def drop_next(self, method: str, path_regex: str, times: int = 1) -> None:
        """The next `times` matching requests are carried out, but the connection closes without
        an answer (the client sees the server disconnect)."""
        with self.lock:
            self._faults.append(
                {"kind": "drop", "method": method.upper(), "regex": re.compile(path_regex), "times": times}
            )

    def interrupt(self, pod_id: str, reason: str = "Stopped by RunPod") -> None:
        """RunPod stops the pod on its own (a host failing, maintenance)."""
        with self.lock:
            pod = self.pods[pod_id]
            if pod.status in (*BOOTING, "RUNNING", "ERROR"):
                self._stop(pod, reason)

    def take_host_gpus(self, pod_id: str) -> None:
        """Someone rents the GPUs of the pod's host: until `release_host_gpus`, starting the pod
        fails with NO_FREE_GPUS (RunPod's zero-GPU case)."""
        with self.lock:
            self.pods[pod_id].host_gpus_taken = True

    def release_host_gpus(self, pod_id: str) -> None:
        with self.lock:
            self.pods[pod_id].host_gpus_taken = False

    def fail_pod(self, pod_id: str, message: str) -> None:
        """The pod's container fails for good: status ERROR (still billed, the GPUs stay
        reserved), its processes and sshd gone; `start` or `terminate` only."""
        with self.lock:
            pod = self.pods[pod_id]
            if pod.status not in (*BOOTING, "RUNNING"):
                raise ValueError(f"only a booting or running pod can fail, not a {pod.status} one")
            pod.error = message
            self._set_status(pod, "ERROR", message)
            self._halt(pod)

    def add_network_volume(
        self, volume_id: str, data_center: str = "EU-RO-1", size: int = 50, name: str | None = None
    ) -> Path:
        """A network volume; its folder (returned) outlives every pod that mounts it."""
        with self.lock:
            path = self.root / "volumes" / volume_id
            path.mkdir(parents=True, exist_ok=True)
            self.volumes[volume_id] = FakeVolume(volume_id, name or volume_id, size, data_center, path)
            return path

    def workspace_of(self, pod_id: str) -> Path:
        """The local folder that is the pod's mount (its container disk without one)."""
        with self.lock:
            return self.pods[pod_id].workspace

    def workspace_for_volume(self, volume_id: str) -> Path:
        with self.lock:
            return self.volumes[volume_id].path

    def calls(self, method: str, path_regex: str) -> list[Request]:
        """The requests so far with this method and a path under /v2 that fullmatches."""
        with self.lock:
            return [
                r for r in self.requests if r.method == method.upper() and re.fullmatch(path_regex, r.path)
            ]

    def runpodctl_script(self, path: Path) -> Path:
        """An executable stand-in for RunPod's `runpodctl` that knows `runpodctl pod stop POD_ID`
        only, sending $RUNPOD_API_KEY to this fake in a header read from stdin (never on a
        command line); non-zero exit on failure."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(RUNPODCTL.replace("@URL@", self.url))
        path.chmod(0o755)
        return path

    # --- one request ---

    def serve(self, method: str, path: str, query: dict[str, list[str]], headers, raw_body: bytes) -> Answer:
        """The answer to one request; never raises."""
        try:
            with self.lock:
                return self._serve(method, path, query, headers, raw_body)
        except Exception as exc:  # a bug in the fake: say so in the answer and in .violations
            self.violations.append(f"{method} {path}: {traceback.format_exc()}")
            return Answer(500, Problem(500, f"fake RunPod failed: {exc!r}").body())

    def _serve(self, method, path, query, headers, raw_body) -> Answer:
        rel = path[len("/v2") :] if path == "/v2" or path.startswith("/v2/") else None
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = None  # recorded as None; refused below if the operation takes a body
        auth, auth_pod = self._auth(headers)
        self.requests.append(
            Request(
                method,
                rel if rel is not None else path,
                {k: v[0] if len(v) == 1 else v for k, v in query.items()},
                body,
                auth,
            )
        )
        if rel is None:
            return self._checked(None, method, path, Problem(404, V1_RETIRED))
        drop = False
        for fault in list(self._faults):
            if fault["method"] == method and fault["regex"].fullmatch(rel):
                fault["times"] -= 1
                if fault["times"] <= 0:
                    self._faults.remove(fault)
                if fault["kind"] == "fail":
                    problem = fault["problem"]
                    return self._checked(
                        None, method, path, Problem(problem.status, problem.detail, headers=problem.headers)
                    )
                drop = True
                break
        if method == "GET" and rel == "/openapi.json":
            return Answer(200, self.spec.raw)
        answer = self._operation(method, path, query, headers, raw_body, auth, auth_pod)
        return answer._replace(drop=drop)

    def _operation(self, method, path, query, headers, raw_body, auth, auth_pod) -> Answer:
        route = self.spec.match(path)
        if route is None:
            return self._checked(None, method, path, Problem(404, f"No such path {path}."))
        template, path_params, ops = route
        op = ops.get(method)
        if op is None:
            allowed = ", ".join(sorted(ops))
            return self._checked(
                None,
                method,
                path,
                Problem(
                    405,
                    f"{method} is not allowed on {template}; allowed: {allowed}.",
                    headers={"Allow": allowed},
                ),
            )
        try:
            if auth == "none":
                raise Problem(401, "missing or invalid bearer token")
            if auth == "pod" and not self._pod_key_may(op, path_params, auth_pod, raw_body):
                raise Problem(403, "access denied: a pod's key may only read and stop its pod")
            params = self.spec.parameters(op, path_params, query)
            content_type = headers.get("Content-Type") or ""
            body = self.spec.body(op, raw_body, content_type)
            if op.id not in HANDLED:
                raise Problem(501, f"The fake RunPod does not model {op.id} ({method} {template}).")
            status, payload = getattr(self, "_" + op.id)(params, body)
        except Invalid as exc:
            return self._checked(op, method, path, Problem(exc.status, exc.detail, exc.errors))
        except Problem as problem:
            return self._checked(op, method, path, problem)
        return self._checked(op, method, path, (status, payload))

    def _checked(self, op: Operation | None, method: str, path: str, answer) -> Answer:
        """The answer, once checked against the spec: one that breaks it is a 500 and a
        violation."""
        if isinstance(answer, Problem):
            status, payload, headers = answer.status, answer.body(), answer.headers
            content_type = "application/problem+json"
        else:
            (status, payload), headers = answer, {}
            content_type = "application/json" if payload is not None else None
        problems = self.spec.answer_problems(op, status, payload, content_type)
        if problems:
            self.violations.append(
                f"{method} {path} answered {status} against the spec: " + "; ".join(problems)
            )
            return Answer(
                500, Problem(500, "fake RunPod answered against the spec: " + "; ".join(problems)).body()
            )
        return Answer(status, payload, headers)

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

    @staticmethod
    def _pod_key_may(op: Operation, path_params: dict, pod_id: str, raw_body: bytes) -> bool:
        if path_params.get("id") != pod_id:
            return False
        if op.id == "getPod":
            return True
        if op.id != "podAction":
            return False
        try:
            return json.loads(raw_body).get("action") == "stop"
        except (ValueError, AttributeError):
            return False

    # --- operations (named _<operationId>) ---

    def _pod(self, pod_id: str) -> FakePod:
        pod = self.pods.get(pod_id)
        if pod is None or pod.status == "TERMINATED":
            raise Problem(404, POD_NOT_FOUND)
        return pod

    def _getSshKeys(self, params, body):
        return 200, {"keys": list(self.ssh_keys)}

    def _updateSshKeys(self, params, body):
        self.ssh_keys = list(body["keys"])
        return 200, {"keys": list(self.ssh_keys)}

    def _listPods(self, params, body):
        return 200, {"pods": [self._pod_json(p) for p in self.pods.values() if p.status != "TERMINATED"]}

    def _getPod(self, params, body):
        pod = self._pod(params["id"])
        if pod.status in BOOTING:
            if pod.boot_polls_left > 0:
                pod.boot_polls_left -= 1
                if pod.boot_polls_left == 0 and pod.status == "PROVISIONING":
                    self._set_status(pod, "STARTING", "container starting")
            else:
                self._set_status(pod, "RUNNING", "container healthy")
                pod.started_at = now_iso()
                pod._running_since = time.time()
        return 200, self._pod_json(pod)

    def _deletePod(self, params, body):
        self._terminate(self._pod(params["id"]))
        return 204, None

    def _podAction(self, params, body):
        pod = self._pod(params["id"])
        action = body["action"]
        if action not in ACTIONS[pod.status]:
            raise Problem(
                409, f"Cannot {action} a pod that is {pod.status}; allowed: {', '.join(ACTIONS[pod.status])}."
            )
        if action == "terminate":
            self._terminate(pod)
            return 204, None
        if action == "stop":
            self._stop(pod, "Exited by user")
        elif action == "start":
            if pod.host_gpus_taken and pod.gpu_type:
                raise Problem(400, NO_FREE_GPUS)
            self._boot(pod, "Started by user")
        else:  # restart: a new container on the same GPUs
            self._halt(pod, wipe_container=True)
            self._boot(pod, "Restarted by user")
        return 200, self._pod_json(pod)

    def _createPod(self, params, body):
        if ("gpu" in body) == ("cpu" in body):
            raise Problem(400, "Exactly one of gpu or cpu must be set.")
        mounts = body.get("mounts") or {}
        if "persistent" in mounts and "network" in mounts:
            raise Problem(400, "At most one of mounts.persistent and mounts.network may be set.")
        if "network" in mounts and not mounts["network"]:
            raise Problem(400, "mounts.network must name a network volume.")
        if "cpu" in body and "persistent" in mounts:
            raise Problem(400, "mounts.persistent is invalid when cpu is set.")
        if "templateId" in body:
            raise Problem(404, f"Template {body['templateId']} not found.")
        if body.get("globalNetworking"):
            raise Problem(501, "The fake RunPod does not model global networking.")
        env = body.get("env", {})
        if any("\n" in v or "\r" in v for v in env.values()):
            raise Problem(501, "The fake RunPod cannot carry a line break in an env value.")
        bad_ports = [p for p in body.get("ports", []) if not re.fullmatch(r"[1-9]\d{0,4}/(tcp|udp|http)", p)]
        if bad_ports:
            raise Problem(
                400, f"Ports must read PORT/tcp, PORT/udp or PORT/http, not {', '.join(bad_ports)}."
            )
        cloud = body.get("cloud", "SECURE")

        volume = None
        wanted = body.get("dataCenterIds") or list(market.DATA_CENTERS)
        if "network" in mounts:
            volume_id = mounts["network"][0]["volumeId"]
            volume = self.volumes.get(volume_id)
            if volume is None:
                raise Problem(404, f"Network volume {volume_id} not found.")
            if body.get("dataCenterIds") and volume.data_center not in wanted:
                raise Problem(
                    400,
                    f"Network volume {volume_id} is in {volume.data_center}, "
                    "which dataCenterIds does not include.",
                )
            wanted = [volume.data_center]
        centers = [dc for dc in wanted if dc in market.DATA_CENTERS]

        if "gpu" in body:
            gpu = body["gpu"]
            gpu_type, count, cpu = gpu["id"], gpu.get("count", 1), None
            if gpu.get("allowedCudaVersions") and gpu.get("minCudaVersion"):
                raise Problem(400, "allowedCudaVersions and minCudaVersion are exclusive.")
            if not (
                centers
                and market.in_stock(gpu_type, cloud, count, self.unavailable)
                and market.cuda_allowed(gpu.get("allowedCudaVersions"), gpu.get("minCudaVersion"))
            ):
                raise Problem(400, NO_INSTANCES)
            cost = market.price(self.prices, gpu_type, cloud, self.default_price) * count
        else:
            flavor, vcpus = body["cpu"]["id"], body["cpu"]["vcpuCount"]
            if vcpus & (vcpus - 1):
                raise Problem(400, "cpu.vcpuCount must be a power of two.")
            if flavor not in market.CPU_FLAVORS or not centers:
                raise Problem(400, NO_INSTANCES)
            gpu_type, count = None, 0
            cpu = {"id": flavor, "vcpuCount": vcpus, "memory": vcpus * market.CPU_FLAVORS[flavor]}
            cost = self.prices.get(flavor, self.default_price)

        pod_id, machine_id = random_id(), random_id(12)
        if volume is not None:
            mount, workspace = "network", volume.path
        elif "persistent" in mounts:
            mount, workspace = "persistent", self.root / "hosts" / machine_id / "workspace"
        else:
            mount, workspace = None, self.root / "containers" / pod_id / "workspace"
        workspace.mkdir(parents=True, exist_ok=True)
        if body.get("startSsh"):  # RunPod's PUBLIC_KEY, unless the body sets its own
            authorized = env.get("PUBLIC_KEY") or "".join(f"{k}\n" for k in self.ssh_keys)
        else:
            authorized = ""
        pod = FakePod(
            id=pod_id,
            name=body["name"],
            created_body=json.loads(json.dumps(body)),
            pod_key="rpa_" + random_id(40, string.ascii_uppercase + string.digits),
            gpu_type=gpu_type,
            gpu_count=count,
            cpu=cpu,
            cloud=cloud,
            cost_per_hr=round(cost, 4),
            machine_id=machine_id,
            data_center=centers[0],
            volume_id=volume.id if volume else None,
            mount=mount,
            workspace=workspace,
            authorized_keys=authorized,
            root=self.root / "pods" / pod_id,
            created_at=now_iso(),
            proxy_user=f"{pod_id}-{secrets.token_hex(4)}",
        )
        self.pods[pod_id] = pod
        self._boot(pod, "Rented by user", status="PROVISIONING")
        return 201, self._pod_json(pod)

    def _listGpuTypes(self, params, body):
        gpus = self._catalog(params)
        countries = set(params.get("countryCodes", []))
        if countries and not any(market.country(dc) in countries for dc in market.DATA_CENTERS):
            gpus = []  # every type is in every data center here
        return 200, {"gpus": gpus}

    def _getGpuType(self, params, body):
        if params["id"] not in market.GPUS:
            raise Problem(404, f"GPU type {params['id']} not found.")
        return 200, self._catalog(params, [params["id"]])[0]

    def _catalog(self, params, ids=None) -> list[dict]:
        filters = [
            n for n in ("count", "cloud", "countryCodes", "cudaVersions", "minCudaVersion") if n in params
        ]
        if "include" in params and "product" not in params:
            raise Problem(400, "include=AVAILABILITY requires product.")
        if "include" not in params and ("product" in params or filters):
            named = ["product"] if "product" in params else []
            raise Problem(400, f"{', '.join(named + filters)}: valid only with include=AVAILABILITY.")
        if "cudaVersions" in params and "minCudaVersion" in params:
            raise Problem(400, "cudaVersions and minCudaVersion are exclusive.")
        availability = None
        if "include" in params:
            availability = {
                "cloud": params.get("cloud", "SECURE"),
                "count": params.get("count", 1),
                "countries": set(params.get("countryCodes", [])),
                "cuda_ok": market.cuda_allowed(params.get("cudaVersions"), params.get("minCudaVersion")),
            }
        return [
            market.gpu_type_json(gpu_id, self.prices, self.default_price, self.unavailable, availability)
            for gpu_id in (ids or market.GPUS)
        ]

    def _listNetworkVolumes(self, params, body):
        return 200, {"networkVolumes": [v.json() for v in self.volumes.values()]}

    def _getNetworkVolume(self, params, body):
        volume = self.volumes.get(params["id"])
        if volume is None:
            raise Problem(404, f"Network volume {params['id']} not found.")
        return 200, volume.json()

    def _listPodBilling(self, params, body):
        size = params.get("bucketSize", "day")
        now = datetime.datetime.now(market.UTC)
        if "lastN" in params:
            if "startTime" in params or "endTime" in params:
                raise Problem(400, "lastN and startTime/endTime are exclusive.")
            start = market.bucket_start(now, size)
            end = market.next_bucket(start, size)
            for _ in range(params["lastN"] - 1):
                start = market.bucket_start(start - datetime.timedelta(microseconds=1), size)
        else:
            start = market.bucket_start(
                _moment(params, "startTime") or now - datetime.timedelta(days=30), size
            )
            end = _moment(params, "endTime") or now
            if market.bucket_start(end, size) != end:
                end = market.next_bucket(market.bucket_start(end, size), size)
            if start >= end:
                raise Problem(400, "startTime must be before endTime.")
        until = time.time() - self.billing_lag_seconds
        records = []
        for pod in self.pods.values():
            if params.get("podId") not in (None, pod.id) or not pod.history:
                continue
            born = datetime.datetime.fromtimestamp(pod.history[0][0], market.UTC)
            first = max(start, market.bucket_start(born, size))
            for begin, finish in market.buckets(first, end, size):
                if begin.timestamp() >= until:
                    break
                amounts = market.amounts(
                    pod.history,
                    until,
                    begin.timestamp(),
                    finish.timestamp(),
                    cost_per_hr=pod.cost_per_hr,
                    gpu=pod.gpu_type is not None,
                    disk_gb=pod.created_body.get("disk", DEFAULT_DISK_GB),
                    volume_gb=(
                        pod.created_body["mounts"]["persistent"]["size"] if pod.mount == "persistent" else 0
                    ),
                )
                if amounts["totalAmount"] > 0:
                    records.append(
                        {
                            "startTime": market.iso(begin),
                            "endTime": market.iso(finish),
                            "podId": pod.id,
                            **amounts,
                        }
                    )
        totals = {
            key: round(sum(r[key] for r in records), 6)
            for key in ("totalAmount", "gpuAmount", "cpuAmount", "diskAmount")
        }
        return 200, {
            "records": records,
            "metadata": {
                "query": {
                    "startTime": market.iso(start),
                    "endTime": market.iso(end),
                    "bucketSize": size,
                    "podId": params.get("podId"),
                },
                "recordCount": len(records),
                "uniquePodCount": len({r["podId"] for r in records}),
                "totals": totals,
            },
        }

    # --- the pod's machine ---

    def _set_status(self, pod: FakePod, status: str, reason: str) -> None:
        pod.status = status
        pod.status_reason = f"{reason}: {now_iso()}"
        pod.history.append((time.time(), status))

    def _boot(self, pod: FakePod, reason: str, status: str = "STARTING") -> None:
        """A fresh container: a new sshd, on a new port, with a new host key."""
        pod.start_count += 1
        pod.error = None
        pod.workspace.mkdir(parents=True, exist_ok=True)
        link = self.root / f".workspace-{pod.id}"
        link.unlink(missing_ok=True)
        link.symlink_to(pod.workspace, target_is_directory=True)
        link.replace(self.workspace)
        port = free_port()
        exposed = "22/tcp" in pod.created_body.get("ports", [])
        pod.login_env = {
            **pod.created_body.get("env", {}),
            "RUNPOD_POD_ID": pod.id,
            "RUNPOD_API_KEY": pod.pod_key,
            "RUNPOD_PUBLIC_IP": LOCALHOST,
            **({"RUNPOD_TCP_PORT_22": str(port)} if exposed else {}),
            "RUNPOD_GPU_COUNT": str(pod.gpu_count),
            "RUNPOD_DC_ID": pod.data_center,
        }
        pod.sshd = Sshd(
            pod.root / f"boot-{pod.start_count}",
            client_key=self.client_key,
            env=pod.login_env,
            port=port,
            authorized_keys=pod.authorized_keys,
        ).start()
        pod.boot_polls_left = self.boot_polls
        pod._running_since = None
        self._set_status(pod, status, reason)

    def _stop(self, pod: FakePod, reason: str) -> None:
        self._set_status(pod, "EXITED", reason)  # first: a pod stopping itself dies in _halt
        self._halt(pod, wipe_container=True)

    def _terminate(self, pod: FakePod) -> None:
        self._set_status(pod, "TERMINATED", "Terminated by user")
        self._halt(pod)
        if pod.mount != "network":  # a network volume is only detached
            shutil.rmtree(pod.workspace, ignore_errors=True)

    def _halt(self, pod: FakePod, wipe_container: bool = False) -> None:
        """No more logins, no more processes; without a mount, the container disk is lost."""
        pod._running_since = None
        if pod.sshd:
            pod.sshd.stop()
            pod.sshd = None
        kill_pod_processes(pod.id)
        if wipe_container and pod.mount is None:
            shutil.rmtree(pod.workspace, ignore_errors=True)

    def _pod_json(self, pod: FakePod) -> dict:
        body = pod.created_body
        ports = body.get("ports", [])
        running = pod.status == "RUNNING" and pod.sshd is not None
        direct = None
        if running and "22/tcp" in ports:
            user = getpass.getuser()
            direct = {
                "host": LOCALHOST,
                "port": pod.sshd.port,
                "username": user,
                "command": f"ssh {user}@{LOCALHOST} -p {pod.sshd.port}",
            }
        out = {
            "id": pod.id,
            "name": pod.name,
            "status": pod.status,
            "actions": list(ACTIONS[pod.status]),
            "image": body.get("image", ""),
            "args": body.get("args", ""),
            "disk": body.get("disk", DEFAULT_DISK_GB),
            "mounts": json.loads(json.dumps(body.get("mounts", {}))),
            "ports": list(ports),
            "env": dict(body.get("env", {})),
            "registry": body.get("registry"),
            "cloud": pod.cloud,
            "dataCenterId": pod.data_center,
            "cudaVersion": market.HOST_CUDA if pod.gpu_type else None,
            "ssh": {
                "proxy": {
                    "host": PROXY_HOST,
                    "port": 22,
                    "username": pod.proxy_user,
                    "command": f"ssh {pod.proxy_user}@{PROXY_HOST}",
                },
                "direct": direct,
            },
            "template": None,
            "cost": 0.0 if pod.status in ("EXITED", "TERMINATED") else pod.cost_per_hr,
            "locked": False,
            "globalNetworking": {"enabled": False},
            "runtime": self._runtime(pod, ports) if running else None,
            "createdAt": pod.created_at,
            "startedAt": pod.started_at,
        }
        if pod.gpu_type:
            out["gpu"] = {"id": pod.gpu_type, "count": pod.gpu_count}
        else:
            out["cpu"] = dict(pod.cpu)
        return out

    @staticmethod
    def _runtime(pod: FakePod, ports: list[str]) -> dict:
        published = []
        for entry in ports:
            number, kind = entry.split("/")
            public = pod.sshd.port if entry == "22/tcp" else None
            published.append(
                {"private": int(number), "public": public, "type": kind, "ip": LOCALHOST if public else None}
            )
        uptime = int(time.time() - pod._running_since) if pod._running_since else 0
        return {
            "uptime": uptime,
            "gpus": [{"util": 0, "memoryUtil": 0}] * pod.gpu_count,
            "cpu": {"util": 0},
            "memory": {"util": 0},
            "ports": published,
        }


def _moment(params: dict, name: str) -> datetime.datetime | None:
    """A date-time query parameter (RFC 3339, with a zone); a malformed one is a 422."""
    text = params.get(name)
    if text is None:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise Problem(
            422, "Request validation failed.", [f"query.{name}: {text!r} is not an RFC 3339 date-time"]
        )
    return moment


# The stand-in for `runpodctl pod stop`. printf is a shell builtin: the key is on no command line.
RUNPODCTL = r"""#!/bin/sh
# runpodctl stand-in (tests only): `runpodctl pod stop POD_ID`, via the fake RunPod's REST API v2.
if [ "$#" -ne 3 ] || [ "$1" != pod ] || [ "$2" != stop ]; then
    echo "runpodctl (test stand-in): only 'runpodctl pod stop POD_ID' is supported" >&2
    exit 2
fi
case "$3" in
    *[!A-Za-z0-9_-]* | "") echo "runpodctl: invalid pod id: $3" >&2; exit 2 ;;
esac
if [ -z "${RUNPOD_API_KEY:-}" ]; then
    echo "runpodctl: RUNPOD_API_KEY is not set" >&2
    exit 1
fi
printf 'Authorization: Bearer %s\n' "$RUNPOD_API_KEY" |
    curl --silent --show-error --fail --max-time 60 -X POST -H @- \
        -H 'Content-Type: application/json' --data '{"action":"stop"}' \
        -o /dev/null "@URL@/pods/$3/action" || exit 1
echo "pod \"$3\" stopped"
"""


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeRunPod/2"

    def _handle(self) -> None:
        fake: FakeRunPod = self.server.fake
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        query = parse_qs(url.query, keep_blank_values=True)
        answer = fake.serve(self.command, url.path, query, self.headers, raw_body)
        if answer.drop:  # carried out; the answer is lost on the way
            self.close_connection = True
            return
        data = b"" if answer.payload is None else json.dumps(answer.payload).encode()
        try:
            self.send_response(answer.status)
            if answer.payload is not None:
                self.send_header(
                    "Content-Type", "application/problem+json" if answer.status >= 400 else "application/json"
                )
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the caller died, e.g. a pod process that stopped its own pod

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _handle

    def log_message(self, format, *args) -> None:
        with open(self.server.fake.root / "http.log", "a", encoding="utf-8") as log:
            log.write(f"{self.log_date_time_string()} {format % args}\n")
