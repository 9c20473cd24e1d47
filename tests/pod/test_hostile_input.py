"""Hostile configuration and data: names, paths and values with spaces, quotes, `;`, `$(...)`,
backticks, newlines and non-ASCII either pass through intact, here and on the pod, or are refused
by the config schema with a message naming the key.

 - run and pod names: refused (they become paths, wildcards and tmux session names);
 - remote_dir: plain path characters only (rsync and LLaMA-Factory's launcher, which splits its
   arguments on spaces under torchrun, get it); refused naming pods.<pod>.remote_dir;
 - a path with a newline or another control character: refused naming its key;
 - every other path (the data, the base model's folder, the key, known_hosts, the
   llamafactory-cli) and every value (the author, the data's text): intact, through the real
   graph, over the real sshd, trained by the real LLaMA-Factory; no `$(...)` or backtick runs.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
from pathlib import Path

import pytest

from helpers.sshd import Sshd
from helpers.workflow import LLAMAFACTORY_CLI, REPO, SAMPLE_DATA, snakemake, write_config

# What each hostile value holds; `touch pwned-N` would leave a file if anything ran it.
HOSTILE = 'we\'ird "dir" ;$(touch pwned-1) `touch pwned-2` é日本'
AUTHOR = 'H. P. "Howard" O\'Lovecraft; $(touch pwned-3) `touch pwned-4`\nsecond line — Ñoño'
TEXT = "a 'quote' \"double\" ; $(touch pwned-5) `touch pwned-6` \\ back\nslash, é 日本 \U0001f419"


def run_entry(data="data/train_sft.jsonl", base="./models/tiny", pod="testpod", **extra) -> dict:
    return {"data": data, "base_model": base, "profile": "tiny_cpu", "pod": pod, **extra}


def pod_entry(**extra) -> dict:
    return {"executor": "ssh", "host": "127.0.0.1", "port": 2222, **extra}


def dry_run_problems(tmp_path: Path, config: dict) -> str:
    work = tmp_path / "work"
    proc = snakemake(
        work, "-n", configfile=write_config(tmp_path / "config.yaml", config), check=False, timeout=120
    )
    assert proc.returncode != 0
    return proc.stdout + proc.stderr


NAMES = ["a b", "x;y", "$(touch pwned-1)", "`touch pwned-2`", "a\nb", "é", "it's", 'say"hi"']
REMOTE_DIRS = ["lora runs", "it's", "a;b", "$(touch pwned-1)", "`touch pwned-2`", "a\nb", "lora-runs-é"]
RUN_PATHS = ["data", "heldout", "base_model"]
POD_PATHS = ["identity_file", "known_hosts", "llamafactory_cli"]
NEWLINE = "./some\npath"
KNOWN_HOSTS = ['kh "q"', "kh\\q", "kh-%h"]


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> str:
    """One dry run of a config holding every hostile name and value the schema refuses: it
    reports them all at once, one line each."""
    tmp = tmp_path_factory.mktemp("refused")
    runs = {name: run_entry() for name in NAMES}
    runs.update({f"r_{key}": run_entry(**{key: NEWLINE}) for key in RUN_PATHS})
    pods = {"testpod": pod_entry(), **{name: pod_entry() for name in NAMES}}
    pods.update({f"d{i}": pod_entry(remote_dir=value) for i, value in enumerate(REMOTE_DIRS)})
    pods.update({f"p_{key}": pod_entry(**{key: NEWLINE}) for key in POD_PATHS})
    pods.update({f"k{i}": pod_entry(known_hosts=value) for i, value in enumerate(KNOWN_HOSTS)})
    said = dry_run_problems(tmp, {"runs": runs, "pods": pods})
    assert not list(tmp.rglob("pwned-*")) and not list(REPO.glob("pwned-*"))
    return said


@pytest.mark.parametrize("name", NAMES)
def test_a_hostile_run_or_pod_name_is_refused_naming_the_key(refused, name):
    assert f"config: runs: name {name!r} may only use letters, digits, '_' and '-'" in refused, refused[
        -3000:
    ]
    assert f"config: pods: name {name!r} may only use letters, digits, '_' and '-'" in refused


@pytest.mark.parametrize("index", range(len(REMOTE_DIRS)))
def test_a_hostile_remote_dir_is_refused_naming_the_key(refused, index):
    """Also what keeps a space out of the run folder's path, which LLaMA-Factory's launcher would
    split under torchrun."""
    assert (
        f"config: pods.d{index}.remote_dir: {REMOTE_DIRS[index]!r} may only use letters, "
        "digits and '_./~+@-': no space or quote"
    ) in refused


@pytest.mark.parametrize("index", range(len(KNOWN_HOSTS)))
def test_what_ssh_would_read_in_known_hosts_is_refused_naming_the_key(refused, index):
    """ssh takes '"' and '\\' in an option's value for its quoting and '%h' for the host name:
    the key would be remembered in another file, or nowhere (and a changed one never noticed)."""
    assert (
        f"config: pods.k{index}.known_hosts: {KNOWN_HOSTS[index]!r} must be one line without "
        "'\"', '\\' or '%'"
    ) in refused


@pytest.mark.parametrize("key", RUN_PATHS + POD_PATHS)
def test_a_path_with_a_newline_is_refused_naming_the_key(refused, key):
    where = f"runs.r_{key}.{key}" if key in RUN_PATHS else f"pods.p_{key}.{key}"
    assert f"config: {where}: {NEWLINE!r} must be one line" in refused, refused[-3000:]


def test_a_base_model_folder_name_that_cannot_name_its_4bit_model_is_refused(tmp_path):
    said = dry_run_problems(
        tmp_path, {"runs": {"style": run_entry(base="./models/my model")}, "pods": {"testpod": pod_entry()}}
    )
    assert (
        "config: runs.style.base_model: its folder name 'my model' names models/my model-4bit-mlx"
    ) in said, said[-3000:]


def test_a_number_the_jobs_get_on_their_command_line_must_be_a_number(tmp_path):
    """cutoff_len, lora_rank and lora_alpha reach validate_dataset's and metadata's command lines."""
    said = dry_run_problems(
        tmp_path,
        {
            "runs": {"style": run_entry(overrides={"cutoff_len": "1; touch pwned-9"})},
            "pods": {"testpod": pod_entry()},
        },
    )
    assert "config: runs.style.overrides.cutoff_len: '1; touch pwned-9' is not a whole number" in said, said[
        -3000:
    ]
    assert not list(tmp_path.rglob("pwned-*")) and not list(REPO.glob("pwned-*"))


@pytest.mark.slow
@pytest.mark.pod
def test_hostile_paths_and_values_pass_intact_here_and_on_the_pod(tmp_path, tiny_model):
    hostile = tmp_path / HOSTILE
    hostile.mkdir()
    # The data: the sample plus an example whose every field is hostile text.
    rows = [json.loads(line) for line in SAMPLE_DATA.read_text(encoding="utf-8").splitlines()]
    rows.append({"instruction": f"Rewrite: {TEXT}", "input": TEXT, "output": TEXT})
    data = hostile / "train sft 'é'.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    base = hostile / "tiny-qwen2"  # a hostile parent folder, a plain name
    shutil.copytree(tiny_model, base)
    pod_home = tmp_path / "sshd"
    sshd = Sshd(pod_home).start()
    try:
        key = hostile / "key 'q' $(x)"
        shutil.copy(sshd.client_key, key)
        os.chmod(key, 0o600)
        cli = hostile / "bin `x` $(y)" / "llamafactory-cli"
        cli.parent.mkdir()
        cli.symlink_to(LLAMAFACTORY_CLI)
        # ssh reads '"', '\\' and '%' in known_hosts itself (refused below); the rest passes.
        known_hosts = tmp_path / "kh 'q' ;$(touch pwned-7) `touch pwned-8` é" / "known hosts"
        config = write_config(
            tmp_path / "config.yaml",
            {
                "runs": {
                    "style": {
                        "data": str(data),
                        "base_model": str(base),
                        "author": AUTHOR,
                        "profile": "tiny_cpu",
                        "pod": "testpod",
                        "fidelity": {"reference": False},  # no evaluation after training: not read here
                        "overrides": {"max_steps": 10},
                    }
                },
                "pods": {
                    "testpod": {
                        "executor": "ssh",
                        "host": "127.0.0.1",
                        "port": sshd.port,
                        "user": getpass.getuser(),
                        "identity_file": str(key),
                        "known_hosts": str(known_hosts),
                        "remote_dir": str(tmp_path / "pod"),
                        "llamafactory_cli": str(cli),
                        "poll_seconds": 1,
                        "reconnect_minutes": 1,
                    }
                },
            },
        )
        work = tmp_path / "work"
        snakemake(work, "lora_adapters/style_mlx/metadata.json", configfile=config)
    finally:
        sshd.stop()

    meta = json.loads((work / "lora_adapters/style_mlx/metadata.json").read_text(encoding="utf-8"))
    assert meta["author"] == AUTHOR
    validated = [
        json.loads(line)
        for line in (work / "results/style/data/train.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert validated[-1] == rows[-1]
    # On the pod: the same bytes, and LLaMA-Factory trained from them with the hostile-path cli.
    run_dir = next((tmp_path / "pod").glob("style-*"))
    assert (run_dir / "data/train.jsonl").read_bytes() == (
        work / "results/style/data/train.jsonl"
    ).read_bytes()
    assert (run_dir / "train.log").read_text().count("***** Running training *****") == 1
    assert (work / "lora_adapters/style_peft/adapter_model.safetensors").is_file()
    assert known_hosts.is_file() and " ssh-ed25519 " in known_hosts.read_text()  # remembered
    # Nothing in any of them ran as a command, here or on the pod.
    for where in (tmp_path, REPO, Path.home(), Path("/")):
        found = list(where.rglob("pwned-*")) if where == tmp_path else list(where.glob("pwned-*"))
        assert not found, found
