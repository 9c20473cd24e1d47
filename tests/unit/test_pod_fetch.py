"""Fetch (scripts/pod/fetch.py) and what Ctrl-C says at each step (scripts/remote_train.py)."""

from __future__ import annotations

import json

import pytest

from lora_style.training import fetch, follow, launch, preflight, remote_train
from lora_style.training.executor import LocalExecutor
from lora_style.training.messages import PodError, Say
from lora_style.training.settings import PodSettings

# ---------------------------------------------------------------------------- fetch and stop


def _finished_run(tmp_path):
    """A finished run folder as the local executor sees it, with one checkpoint."""
    run = tmp_path / "pod" / "style-abc"
    ckpt = run / "output" / "checkpoint-5"
    ckpt.mkdir(parents=True)
    state = json.dumps({"log_history": [{"step": 5, "loss": 1.0}, {"step": 5, "eval_loss": 0.9}]})
    for name, text in {
        "adapter_model.safetensors": "weights",
        "adapter_config.json": "{}",
        "trainer_state.json": state,
    }.items():
        (ckpt / name).write_text(text)
    (run / "output" / "trainer_state.json").write_text(state)
    (run / "output" / "trainer_log.jsonl").write_text('{"current_steps": 5, "loss": 1.0}\n')
    (run / "run.sh").write_text("")
    (run / "exit_code").write_text("0\n")
    settings = PodSettings(name="here", executor="local", remote_dir=str(tmp_path / "pod"))
    return settings, LocalExecutor(settings, tmp_path)


def _fetch(tmp_path, settings, ex):
    out = tmp_path / "work"
    return fetch.fetch(
        "style",
        settings,
        ex,
        {"run_id": "style-abc"},
        {},
        out / "style_peft",
        out / "summary.json",
        out / "trainer_state.json",
        Say("style"),
    )


def test_fetch_lands_the_adapter_then_the_summary(tmp_path):
    settings, ex = _finished_run(tmp_path)
    summary = _fetch(tmp_path, settings, ex)
    assert summary["best_step"] == 5
    work = tmp_path / "work"
    assert {p.name for p in (work / "style_peft").iterdir()} == {
        "adapter_model.safetensors",
        "adapter_config.json",
        "trainer_state.json",
        "trainer_log.jsonl",
        "training_summary.json",
    }
    assert sorted(p.name for p in work.iterdir()) == ["style_peft", "summary.json", "trainer_state.json"]


def test_fetch_refuses_a_non_empty_adapter_folder_before_anything_else(tmp_path):
    settings, ex = _finished_run(tmp_path)
    adapter = tmp_path / "work" / "style_peft"
    adapter.mkdir(parents=True)
    (adapter / "old.txt").write_text("mine")
    with pytest.raises(PodError, match="style_peft already exists and is not empty.*remove it"):
        _fetch(tmp_path, settings, ex)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["style_peft"]
    assert [p.name for p in adapter.iterdir()] == ["old.txt"]


def test_fetch_writes_no_summary_when_the_adapter_cannot_land(tmp_path, monkeypatch):
    settings, ex = _finished_run(tmp_path)

    def land(src, dst):  # the adapter's staging folder cannot be renamed into place
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(fetch, "land", land)
    with pytest.raises(PodError, match="cannot move the downloaded adapter into .*style_peft"):
        _fetch(tmp_path, settings, ex)
    assert list((tmp_path / "work").iterdir()) == []  # no summary, state or staging left


@pytest.mark.parametrize(
    "command,cut,message",
    [
        ("submit", "preflight", "stopped before the launch; nothing was launched on the pod"),
        (
            "submit",
            "launch",
            "stopped during the launch, which may be incomplete on the pod. Run "
            "snakemake again: it re-attaches to the training if it started",
        ),
        ("wait", "wait", "stopped following; the training goes on on the pod"),
        ("fetch", "download", "download stopped; nothing landed. Run snakemake again: it fetches again"),
    ],
)
def test_ctrl_c_says_what_it_stopped(tmp_path, monkeypatch, capsys, command, cut, message):
    settings, ex = _finished_run(tmp_path)
    monkeypatch.setattr(remote_train, "_stop_on_signals", lambda: None)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    report = preflight.Report(remote_dir=str(tmp_path / "pod"), cli_path="/x/llamafactory-cli")
    if cut == "preflight":
        monkeypatch.setattr(preflight, "run_preflight", interrupt)
    elif cut == "launch":
        monkeypatch.setattr(preflight, "run_preflight", lambda *a: report)
        monkeypatch.setattr(launch, "upload", lambda *a: None)
        monkeypatch.setattr(launch, "start_detached", interrupt)
    elif cut == "wait":
        monkeypatch.setattr(follow, "wait", interrupt)
    else:
        monkeypatch.setattr(fetch, "download_verified", interrupt)
    for name, text in {
        "train.yaml": "model_name_or_path: someone/model\n",
        "train.jsonl": "{}\n",
        "info.json": "{}",
    }.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "launch.json").write_text(json.dumps({"run_id": "style-abc"}))
    (tmp_path / "finished.json").write_text("{}")
    files = [
        "--train-yaml",
        str(tmp_path / "train.yaml"),
        "--data",
        str(tmp_path / "train.jsonl"),
        "--dataset-info",
        str(tmp_path / "info.json"),
    ]
    args = {
        "submit": [*files, "--output", str(tmp_path / "out.json")],
        "wait": [
            *files,
            "--launch",
            str(tmp_path / "launch.json"),
            "--output",
            str(tmp_path / "out.json"),
            "--remote-log",
            str(tmp_path / "remote.log"),
        ],
        "fetch": [
            "--launch",
            str(tmp_path / "launch.json"),
            "--finished",
            str(tmp_path / "finished.json"),
            "--adapter-dir",
            str(tmp_path / "work/style_peft"),
            "--summary",
            str(tmp_path / "work/s.json"),
            "--trainer-state",
            str(tmp_path / "work/t.json"),
        ],
    }[command]
    monkeypatch.setattr(remote_train, "make_executor", lambda settings: ex)
    rc = remote_train.main(
        [command, "--run", "style", "--pod-settings", json.dumps(settings.as_entry()), *args]
    )
    err = capsys.readouterr().err
    assert rc == 130
    assert f"[style] {message}" in err, err
    assert not (tmp_path / "out.json").exists()
    assert not (tmp_path / "work").exists() or list((tmp_path / "work").iterdir()) == []
