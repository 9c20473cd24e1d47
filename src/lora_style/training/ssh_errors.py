"""What ssh says when it fails, turned into what it means and what to change (executor.py)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .messages import PodError, Unreachable

if TYPE_CHECKING:
    from .executor import SSHExecutor


# What ssh says on stderr -> what it means and what to change. First match wins.
SSH_PROBLEMS = [
    (
        r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed",
        "the pod's host key is not the one remembered in {known_hosts}. If you replaced the pod "
        "(a new pod often reuses the address), forget the old key with "
        "`ssh-keygen -R '{hostport}' -f {known_hosts}` and run again; otherwise stop: someone may "
        "be in the middle",
    ),
    (
        r"Permission denied \(|Too many authentication failures",
        "the pod refused the key{key}. Add the matching public key to the pod (RunPod: Settings -> "
        "SSH Public Keys, then restart the pod, or append it to ~/.ssh/authorized_keys there), or "
        "set pods.{name}.identity_file / pods.{name}.user",
    ),
    (
        r"Could not resolve hostname|Name or service not known|nodename nor servname",
        "the host name does not resolve. Check pods.{name}.host (RunPod: Connect -> "
        "'SSH over exposed TCP' shows the IP and port)",
    ),
    (
        r"Connection refused|Connection timed out|No route to host|Network is unreachable"
        r"|Operation timed out|Connection closed|Connection reset|kex_exchange_identification"
        r"|timed out",
        "the pod does not answer. Is it running? Check pods.{name}.host and pods.{name}.port "
        "against RunPod's Connect -> 'SSH over exposed TCP' (the port changes when a pod restarts)",
    ),
]


# Failures that waiting cannot mend: retried for reconnect_minutes, they would only hide the advice.
SSH_REFUSALS = (
    r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed"
    r"|Permission denied \(|Too many authentication failures"
)


def ssh_failure(stderr: str, executor: SSHExecutor) -> PodError:
    """ssh's failure as the error to raise: Unreachable (retried through a dropped connection)
    unless the pod refused us (a changed host key, a key it does not accept), which stops at once."""
    explained = explain_ssh_failure(stderr, executor)
    if re.search(SSH_REFUSALS, stderr, re.IGNORECASE):
        return PodError(explained)
    return Unreachable(explained, ssh_said(stderr))


def ssh_said(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return " / ".join(lines[-3:]) or "no message"


def explain_ssh_failure(stderr: str, executor: SSHExecutor) -> str:
    port = executor.settings.port
    host = executor.settings.host
    key = executor.identity_file()
    fields = {
        "known_hosts": executor.known_hosts,
        "hostport": executor.settings.host_key_alias or (f"[{host}]:{port}" if port and port != 22 else host),
        "name": executor.name,
        "key": f" {key}" if key else "s offered (ssh-agent, ~/.ssh/config)",
    }
    said = ssh_said(stderr)
    for pattern, advice in SSH_PROBLEMS:
        if re.search(pattern, stderr, re.IGNORECASE):
            return f"{executor.where()}: {advice.format(**fields)} (ssh: {said})"
    return f"{executor.where()}: ssh failed (ssh: {said})"
