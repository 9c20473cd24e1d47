"""The executors (lora_style/training/executor.py) and pod settings (settings.py)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from lora_style.training.executor import SSHExecutor
from lora_style.training.machines import make_executor
from lora_style.training.messages import PodError
from lora_style.training.settings import PodSettings, load_settings

from helpers.workflow import REPO

# ---------------------------------------------------------------------------- the executors


def test_ssh_checks_host_keys_and_quotes_every_command(tmp_path):
    ex = SSHExecutor(
        PodSettings(
            name="runpod",
            executor="ssh",
            host="203.0.113.7",
            port=22022,
            user="root",
            identity_file="~/.ssh/id_ed25519",
            known_hosts="known hosts/pods",
        ),
        tmp_path,
    )
    opts = ex.ssh_options()
    assert "StrictHostKeyChecking=accept-new" in opts
    assert not any("StrictHostKeyChecking=no" in o for o in opts)
    assert f'UserKnownHostsFile="{tmp_path}/known hosts/pods"' in opts
    assert opts[opts.index("-p") + 1] == "22022"
    assert "IdentitiesOnly=yes" in opts and "BatchMode=yes" in opts
    hostile = "x'; rm -rf / #"
    argv = ex.ssh_argv(shlex.join(["sh", "-c", f"echo {shlex.quote(hostile)}"]))
    assert argv[-2] == "root@203.0.113.7"
    # What the pod's login shell receives parses back to exactly one echo of the hostile value.
    assert shlex.split(argv[-1]) == ["sh", "-c", f"echo {shlex.quote(hostile)}"]
    out = subprocess.run(shlex.split(argv[-1]), capture_output=True, text=True).stdout
    assert out == hostile + "\n"


def test_ssh_leaves_port_user_and_key_to_ssh_config_when_unset(tmp_path):
    ex = SSHExecutor(PodSettings(name="p", executor="ssh", host="mypod"), tmp_path)
    opts = ex.ssh_options()
    assert "-p" not in opts and "-i" not in opts and ex.destination() == "mypod"


def test_executor_kinds(tmp_path):
    assert make_executor(PodSettings(executor="local"), tmp_path).kind == "local"
    with pytest.raises(PodError, match="pods.p.host is missing"):
        make_executor(PodSettings(name="p", executor="ssh"), tmp_path)
    with pytest.raises(PodError, match="identity_file: .*does not exist"):
        make_executor(
            PodSettings(name="p", executor="ssh", host="h", identity_file=str(tmp_path / "nokey")), tmp_path
        ).sh("true")


def test_no_ssh_or_rsync_here_is_a_clear_error_not_a_traceback(tmp_path, monkeypatch):
    """The executor's CLI with an empty PATH: one line saying what to install, exit status 1."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    settings = json.dumps({"name": "runpod", "executor": "ssh", "host": "203.0.113.7"})
    proc = subprocess.run(
        [sys.executable, "-m", "lora_style.training.machines", "--pod-settings", settings, "true"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": str(empty)},
    )
    assert proc.returncode == 1
    assert proc.stderr == "error: ssh not found on this machine: install the OpenSSH client\n"
    monkeypatch.setenv("PATH", str(empty))
    ex = SSHExecutor(load_settings(settings), tmp_path)
    with pytest.raises(PodError, match="^rsync not found on this machine: install rsync$"):
        ex.get("/remote/file", tmp_path / "file")


def test_unreadable_pod_settings_name_the_file(tmp_path):
    with pytest.raises(PodError, match=f"--pod-settings file {tmp_path}/nope.json: cannot read it"):
        load_settings(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text('{"name": "p",')
    with pytest.raises(PodError, match=f"--pod-settings file {tmp_path}/bad.json is not valid JSON"):
        load_settings(str(tmp_path / "bad.json"))
    with pytest.raises(PodError, match=r"--pod-settings \(JSON text\) is not valid JSON"):
        load_settings('{"name": ')
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(PodError, match="is not a JSON object"):
        load_settings(str(tmp_path / "list.json"))
    assert load_settings('{"name": "p", "executor": "local"}') == PodSettings(name="p", executor="local")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "remote_train.py"),
            "fetch",
            "--run",
            "style",
            "--pod-settings",
            str(tmp_path / "nope.json"),
            *(f"--{o}=x" for o in ("launch", "finished", "adapter-dir", "summary", "trainer-state")),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"error: --pod-settings file {tmp_path}/nope.json: cannot read it" in proc.stderr
