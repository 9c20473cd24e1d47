"""RunPod's REST API v2 (``https://api.runpod.io/v2``), the calls this project makes.

Checked against RunPod's published spec, version 2.0.0 (runpod/docs at a900806, vendored as
tests/fixtures/runpod_openapi_v2.json). v1 (``https://rest.runpod.io/v1``) was retired on
2026-11-15: a settings entry that still names it is refused before any request.

Retries are urllib3's (``Retry``, under requests): an idempotent call (GET, PUT of the key set,
DELETE, and a pod action whose effect the caller reads back) is retried on 429 and 5xx and on a
lost connection, honouring ``Retry-After``, for ``api_retry_minutes`` in all, with a line for the
user at every retry. Creating a pod is never retried here: rent() looks for the pod by its name
before it asks again (runpod.py), so a create whose answer was lost never leaves two pods.

Errors are RFC 9457 problems (``title``, ``status``, ``detail``, ``errors``): RunPodError keeps the
status code and the words, and the advice is chosen by the code alone.

The API key is read from the environment variable ``api_key_env`` names and sent only in the
Authorization header; it is never written anywhere.
"""

from __future__ import annotations

import os
import time

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from lora_style.config.checks import V1_GONE, retired_v1

from .messages import PodError, Say
from .settings import PodSettings

RETRY_STATUSES = (429, 500, 502, 503, 504)


class RunPodError(PodError):
    """RunPod said no (or did not answer: status None); the message says what to change."""

    def __init__(
        self, message: str, status: int | None = None, detail: str = "", errors: tuple[str, ...] = ()
    ):
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.errors = errors


class _Retry(Retry):
    """urllib3's Retry with a time limit instead of a count, and a line for the user at each
    retry (an outage is waited out for minutes, not in silence)."""

    def __init__(self, *args, say: Say | None = None, deadline: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.say = say
        self.deadline = deadline

    def new(self, **kwargs):
        fresh = super().new(**kwargs)
        fresh.say, fresh.deadline = self.say, self.deadline
        return fresh

    def _left(self) -> float | None:
        return self.deadline - time.monotonic() if self.deadline is not None else None

    def get_backoff_time(self) -> float:
        left = self._left()
        wait = super().get_backoff_time()
        return min(wait, max(left, 0.0)) if left is not None else wait

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        fresh = super().increment(method, url, response, error, _pool, _stacktrace)
        told = fresh.get_retry_after(response) if response is not None else None
        wait = told if told is not None else fresh.get_backoff_time()
        left = self._left()
        what = (
            f"answered {response.status}"
            if response is not None
            else f"did not answer ({type(error).__name__})"
        )
        if left is not None and (left <= 0.5 or (told is not None and told > left)):
            raise MaxRetryError(_pool, url, error or Exception(what))
        if self.say is not None:
            self.say(
                f"RunPod's API {what} to {method} {url.split('?')[0]}; retrying in "
                f"{max(wait, 0.1):.0f} s"
                + (f" (giving up in {left / 60:.1f} min)" if left is not None else "")
            )
        return fresh


def _advice(status: int | None, settings: PodSettings, what: str) -> str:
    name, env = settings.name or "?", settings.api_key_env
    at = f"pods.{name}"
    if status is None or status >= 500:
        return "RunPod's API is failing; run again later (status.runpod.io)"
    return {
        401: f"RunPod refused the API key in ${env}: check it (RunPod: Settings -> API Keys)",
        402: "your RunPod balance is too low for this pod: add credit (RunPod: Billing)",
        403: (
            f"the API key in ${env} may not do this: give it read and write access to pods "
            "(RunPod: Settings -> API Keys)"
        ),
        404: "RunPod knows no such thing: a pod terminated meanwhile, or a wrong id",
        409: "RunPod refused that action in the pod's current state",
        422: (f"RunPod found the request malformed: check {at} (gpu_type, image or template_id, disk sizes)"),
        429: "RunPod's rate limit: wait a minute and run again",
        400: (
            f"RunPod could not do it while {what}: no capacity for {at}.gpu_type in its "
            f"cloud_type, or a rule of the request (see RunPod's words above)"
        ),
    }.get(status, f"check {at}")


class RunPodAPI:
    """One account's session with RunPod's API v2."""

    def __init__(self, settings: PodSettings, say: Say | None = None):
        self.settings = settings
        self.say = say
        name, env = settings.name or "?", settings.api_key_env
        self.url = settings.api_url.rstrip("/")
        if retired_v1(self.url):
            raise RunPodError(f"pods.{name}.api_url {self.url} {V1_GONE}; nothing was rented")
        key = os.environ.get(env, "").strip()
        if not key:
            raise RunPodError(
                f"pods.{name}: the RunPod API key is read from ${env}, which is not "
                "set. Export it in the shell that runs snakemake (RunPod: Settings "
                "-> API Keys); nothing was rented"
            )
        self.patience = 60 * float(settings.api_retry_minutes or 5)
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
        self.retried = requests.Session()
        self.retried.headers.update(headers)
        self.once = requests.Session()
        self.once.headers.update(headers)
        self.once.mount("http://", HTTPAdapter(max_retries=Retry(total=0, raise_on_status=False)))
        self.once.mount("https://", HTTPAdapter(max_retries=Retry(total=0, raise_on_status=False)))

    def _mount_retries(self) -> None:
        retry = _Retry(
            total=None,
            connect=None,
            read=None,
            status=None,
            other=0,
            backoff_factor=1.0,
            backoff_max=30.0,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET", "PUT", "DELETE", "POST"}),
            respect_retry_after_header=True,
            raise_on_status=False,
            say=self.say,
            deadline=time.monotonic() + self.patience,
        )
        for scheme in ("http://", "https://"):
            self.retried.mount(scheme, HTTPAdapter(max_retries=retry))

    def call(self, method: str, path: str, what: str, retry: bool = True, **kwargs):
        """The JSON answer (None for an empty one); RunPodError with RunPod's words otherwise."""
        if retry:
            self._mount_retries()  # each call has the whole patience
        session = self.retried if retry else self.once
        try:
            response = session.request(method, f"{self.url}{path}", timeout=60, **kwargs)
        except requests.RequestException as exc:
            reason = getattr(exc, "args", [None])[0]
            reason = getattr(reason, "reason", reason)
            raise RunPodError(
                f"RunPod's API at {self.url} did not answer while {what} "
                f"({type(reason).__name__ if reason else type(exc).__name__}); "
                f"{_advice(None, self.settings, what)}"
            ) from None
        if response.status_code < 400:
            return response.json() if response.content else None
        title, detail, errors = _problem(response)
        said = f"{title}: {detail}" if detail and detail != title else (detail or title)
        lines = [f"RunPod said {response.status_code} while {what}: {said}"]
        lines += [f"  {error}" for error in errors]
        lines.append(_advice(response.status_code, self.settings, what))
        error = RunPodError("\n".join(lines), response.status_code, detail, errors)
        error.retry_after = _retry_after(response)
        raise error

    # --- pods ---

    def get(self, pod_id: str) -> dict | None:
        try:
            return self.call("GET", f"/pods/{pod_id}", "looking up the pod")
        except RunPodError as exc:
            if exc.status == 404:
                return None
            raise

    def find(self, name: str) -> list[dict]:
        """Pods with this name (v2's list has no name filter), the terminated ones left out."""
        pods = (self.call("GET", "/pods", "looking for the pod by name") or {}).get("pods", [])
        return [p for p in pods if p.get("name") == name and p.get("status") != "TERMINATED"]

    def create(self, body: dict) -> dict:
        """One attempt, never retried here (rent() looks for the pod by name first)."""
        return self.call("POST", "/pods", "renting a pod", retry=False, json=body)

    def action(self, pod_id: str, action: str) -> dict | None:
        """start, stop or terminate. A 409 (not valid in the pod's state) is read back: a stop of
        a pod already stopped, or a retried action whose first answer was lost, is done."""
        done = {
            "stop": ("EXITED", "TERMINATED"),
            "terminate": ("TERMINATED",),
            "start": ("PROVISIONING", "STARTING", "RUNNING"),
        }[action]
        try:
            return self.call(
                "POST",
                f"/pods/{pod_id}/action",
                f"asking RunPod to {action} the pod",
                json={"action": action},
            )
        except RunPodError as exc:
            if exc.status not in (404, 409):
                raise
            pod = self.get(pod_id)
            if (pod or {"status": "TERMINATED"})["status"] in done:
                return pod
            raise

    def terminate(self, pod_id: str) -> None:
        try:
            self.call("DELETE", f"/pods/{pod_id}", "terminating the pod")
        except RunPodError as exc:
            if exc.status != 404:  # gone already
                raise

    # --- account, catalog, billing, volumes ---

    def ssh_keys(self) -> list[str]:
        return (self.call("GET", "/account/ssh-keys", "reading the account's SSH keys") or {}).get("keys", [])

    def set_ssh_keys(self, keys: list[str]) -> list[str]:
        return (
            self.call("PUT", "/account/ssh-keys", "registering the SSH key", json={"keys": keys}) or {}
        ).get("keys", [])

    def gpu_catalog(self, cloud: str, count: int) -> list[dict]:
        params = {"include": "AVAILABILITY", "product": "POD", "cloud": cloud, "count": count}
        return (self.call("GET", "/catalog/gpus", "reading RunPod's GPU catalog", params=params) or {}).get(
            "gpus", []
        )

    def pod_billing(self, pod_id: str, start: str, end: str | None = None) -> dict:
        params = {"podId": pod_id, "startTime": start, "bucketSize": "hour"}
        if end:
            params["endTime"] = end
        return self.call("GET", "/billing/pods", "reading the pod's bill", params=params) or {}

    def network_volume(self, volume_id: str) -> dict:
        return self.call("GET", f"/network-volumes/{volume_id}", "looking up the network volume")


def _problem(response) -> tuple[str, str, tuple[str, ...]]:
    """(title, detail, errors) of an RFC 9457 problem; the reason phrase and text otherwise."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and ("detail" in body or "title" in body):
        errors = tuple(str(e) for e in body.get("errors") or [])
        return (str(body.get("title") or response.reason), str(body.get("detail") or "")[:500], errors)
    return response.reason or "", response.text.strip()[:500], ()


def _retry_after(response) -> float | None:
    try:
        return float(response.headers.get("Retry-After"))
    except (TypeError, ValueError):
        return None
