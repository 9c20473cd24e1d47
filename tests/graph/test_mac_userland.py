"""The laptop side on macOS's tools as they ship (issue 11: the Mac's userland).

macOS 15 and later ship openrsync as `rsync`: it lacks --info, --mkpath and --append-verify. macOS
has no setsid, no GNU sha256sum (shasum -a 256), and BSD stat/date. So the exact options the
laptop side passes to rsync and ssh are pinned here, rsync's checked against openrsync's own option
table (tests/fixtures/openrsync_options.txt), and GNU-only tools stay in the pod-side scripts.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from lora_style.training.executor import SSHExecutor
from lora_style.training.settings import PodSettings

from helpers.workflow import REPO

FIXTURE = REPO / "tests" / "fixtures" / "openrsync_options.txt"


def openrsync_options() -> tuple[set[str], set[str], set[str]]:
    """(short flags, short options that take a value, long options) of openrsync."""
    lines = [line for line in FIXTURE.read_text().splitlines() if line and not line.startswith("#")]
    short = lines[0].split()[1]
    flags = {c for i, c in enumerate(short) if c != ":"}
    valued = {short[i - 1] for i, c in enumerate(short) if c == ":"}
    return flags, valued, set(lines[1:])


def unsupported(argv: list[str]) -> list[str]:
    """The options of an rsync command line that openrsync does not know."""
    flags, valued, longs = openrsync_options()
    bad, args = [], iter(argv[1:])
    for arg in args:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0]
            if name not in longs:
                bad.append(arg)
        elif arg.startswith("-") and len(arg) > 1:
            for i, c in enumerate(arg[1:]):
                if c not in flags:
                    bad.append(f"-{c}")
                if c in valued:
                    if i == len(arg) - 2:
                        next(args)  # the value is the next argument
                    break
    return bad


def executor(tmp_path) -> SSHExecutor:
    return SSHExecutor(
        PodSettings(
            name="runpod",
            executor="ssh",
            host="203.0.113.7",
            port=22022,
            user="root",
            identity_file="~/.ssh/id_ed25519",
            known_hosts=".state/known_hosts",
        ),
        tmp_path,
    )


def test_the_fixture_is_openrsyncs_table_without_the_gnu_only_options():
    flags, valued, longs = openrsync_options()
    assert {"archive", "partial", "progress", "stats", "bwlimit", "copy-dest", "rsh", "ignore-times"} <= longs
    assert not {"info", "mkpath", "append-verify"} & longs
    assert {"a", "e"} <= flags and "e" in valued


def test_rsync_options_are_pinned_and_openrsync_knows_every_one(tmp_path):
    ex = executor(tmp_path)
    for argv in (
        ex.rsync_argv("stage/", "root@203.0.113.7:/workspace/run/"),
        ex.rsync_argv(
            "stage/",
            "root@203.0.113.7:/workspace/run/",
            bwlimit_kib=512,
            basis="/workspace/lora-runs/style-0123456789ab",
            ignore_times=True,
        ),
        ex.rsync_argv("root@203.0.113.7:/workspace/run/output/x", str(tmp_path / "x")),
    ):
        assert unsupported(argv) == [], argv
    argv = ex.rsync_argv("stage/", "root@203.0.113.7:/w/", bwlimit_kib=512, basis="/w/old", ignore_times=True)
    ssh_command = argv[argv.index("-e") + 1]
    assert argv[: argv.index("-e")] == ["rsync", "-a", "--partial", "--progress", "--stats"]
    assert argv[argv.index("-e") + 2 :] == [
        "--ignore-times",
        "--bwlimit=512",
        "--copy-dest=/w/old",
        "stage/",
        "root@203.0.113.7:/w/",
    ]
    # The checker itself refuses what openrsync lacks.
    assert unsupported(["rsync", "--info=progress2", "--mkpath", "-a"]) == ["--info=progress2", "--mkpath"]
    assert shlex.split(ssh_command) == ["ssh", *ex.ssh_options()]


def test_ssh_options_are_pinned(tmp_path):
    ex = executor(tmp_path)
    opts = ex.ssh_options()
    control = ex.control_path()
    assert opts == [
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        f"UserKnownHostsFile={tmp_path}/.state/known_hosts",
        "-o",
        "ConnectTimeout=20",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
        "-o",
        "ControlMaster=auto",
        "-o",
        f"ControlPath={control}",
        "-o",
        "ControlPersist=120",
        "-p",
        "22022",
        "-i",
        str(Path("~/.ssh/id_ed25519").expanduser()),
        "-o",
        "IdentitiesOnly=yes",
    ]
    # A unix socket's path is at most 104 bytes on macOS, and ssh adds 17 while creating it.
    assert len(control) + 17 < 104
    assert oct(Path(control).parent.stat().st_mode & 0o777) == "0o700"
    # Every option parses for the OpenSSH client here (`ssh -G` prints the configuration only).
    proc = subprocess.run(["ssh", "-G", *opts, "root@203.0.113.7"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ex.close()
    assert not Path(control).parent.exists()


# GNU-only tools (or their GNU-only options), which a Mac does not have as such: in shell, and as
# the first word of an argv list in a Python file.
GNU_SHELL = re.compile(
    r"(^|[;&|(]\s*|\$\()\s*(setsid|sha256sum|flock|nproc|timeout|readlink -f|"
    r"stat -c|date -d|sed -i|sort -V)\b"
)
GNU_PYTHON = re.compile(r"""\[\s*["'](setsid|sha256sum|flock|nproc|timeout|readlink|stat|date|sed)["' ]""")
# Pod-side scripts may use them, each behind a `command -v` check or on the pod only.
POD_SIDE = "src/lora_style/training/"


def test_the_laptop_side_calls_no_gnu_only_tool():
    """What runs on the laptop: the Python (the commands it runs) and scripts/*.sh (logged.sh)."""
    found = []
    for path in sorted([*(REPO / "scripts").rglob("*"), *(REPO / "src").rglob("*")]):
        rel = str(path.relative_to(REPO))
        if path.suffix == ".py":
            pattern = GNU_PYTHON
        elif path.suffix == ".sh" and not rel.startswith(POD_SIDE):
            pattern = GNU_SHELL
        else:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0] if path.suffix == ".sh" else line
            if pattern.search(code):
                found.append(f"{rel}:{number}: {line.strip()}")
    assert found == []
    # The checker finds what it looks for.
    assert GNU_SHELL.search("x=$(sha256sum f)") and GNU_PYTHON.search('run(["setsid", "sh"])')


def test_pod_side_gnu_tools_have_a_fallback_where_they_may_run_on_a_mac():
    """The local executor runs the pod-side scripts on this machine, which may be a Mac: every
    GNU-only tool there is behind `command -v` with a portable fallback."""
    for name in ("launch.sh", "hashes.sh", "guard_start.sh"):
        text = (REPO / POD_SIDE / name).read_text()
        for tool in ("setsid", "sha256sum"):
            if re.search(rf"^\s*[^#]*\b{tool}\b", text, re.M):
                assert f"command -v {tool}" in text, (name, tool)
    assert "shasum -a 256" in (REPO / POD_SIDE / "hashes.sh").read_text()
