"""Per-step figures from inside `llamafactory-cli train`, with nothing in the command changed.

bench/gpu/check.py puts this folder on the training's PYTHONPATH and names a file in
GPU_CHECK_STEPS; Python imports this module at start-up. When transformers' trainer module is
imported, every Trainer gets one more callback (LLaMA-Factory's CLI takes none) and its
training_step counts the tokens it is given (all of input_ids, and those attention_mask does not mask out). One JSON
line per event:

    {"event": "step", "step": 3, "begin": t0, "end": t1, "tokens": 32768, "real_tokens": ...,
     "max_reserved": ..., "max_allocated": ..., "allocated": ...}

Times are time.monotonic() after torch.cuda.synchronize(), so a step's end is its work's end.
Memory is torch.cuda's, in bytes: the peaks since the process started (model loading included,
which is what a GPU must hold). On a CPU the peaks are the process's maximum RSS.
Without GPU_CHECK_STEPS this module does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
import time

PATH = os.environ.get("GPU_CHECK_STEPS")


def _cuda():
    torch = sys.modules.get("torch")
    return torch if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized() else None


def _memory() -> dict:
    torch = _cuda()
    if torch is None:
        import resource

        return {"max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    torch.cuda.synchronize()
    return {
        "max_reserved": torch.cuda.max_memory_reserved(),
        "max_allocated": torch.cuda.max_memory_allocated(),
        "allocated": torch.cuda.memory_allocated(),
    }


def _write(record: dict) -> None:
    if os.environ.get("RANK", "0") != "0":
        return
    with open(PATH, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _patch(module) -> None:
    from transformers import TrainerCallback

    trainer_class = module.Trainer
    counted = {"tokens": 0, "real_tokens": 0}

    class StepRecorder(TrainerCallback):
        def __init__(self):
            self.begin = None
            self.tokens_at_begin = self.real_at_begin = 0

        def on_train_begin(self, args, state, control, **kwargs):
            _write({"event": "train_begin", "t": time.monotonic(), **_memory()})

        def on_step_begin(self, args, state, control, **kwargs):
            _memory()  # synchronises: the step starts on an idle GPU
            self.begin = time.monotonic()
            self.tokens_at_begin, self.real_at_begin = counted["tokens"], counted["real_tokens"]

        def on_step_end(self, args, state, control, **kwargs):
            memory = _memory()  # synchronises first
            _write(
                {
                    "event": "step",
                    "step": state.global_step,
                    "begin": self.begin,
                    "end": time.monotonic(),
                    "tokens": counted["tokens"] - self.tokens_at_begin,
                    "real_tokens": int(counted["real_tokens"] - self.real_at_begin),
                    **memory,
                }
            )

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            _write(
                {
                    "event": "evaluate",
                    "step": state.global_step,
                    "t": time.monotonic(),
                    "metrics": metrics or {},
                    **_memory(),
                }
            )

        def on_save(self, args, state, control, **kwargs):
            _write({"event": "save", "step": state.global_step, "t": time.monotonic()})

        def on_train_end(self, args, state, control, **kwargs):
            _write({"event": "train_end", "t": time.monotonic(), **_memory()})

    init = trainer_class.__init__
    training_step = trainer_class.training_step

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(StepRecorder())

    def counting_step(self, model, inputs, *args, **kwargs):
        ids = inputs.get("input_ids") if hasattr(inputs, "get") else None
        if ids is not None:
            counted["tokens"] += int(ids.numel())
            mask = inputs.get("attention_mask")
            # a tensor, maybe on the GPU, read at the step's end (which synchronises anyway); added
            # out of place: on_step_begin keeps the old value
            real = (mask != 0).sum() if mask is not None else int(ids.numel())
            counted["real_tokens"] = counted["real_tokens"] + real
        return training_step(self, model, inputs, *args, **kwargs)

    trainer_class.__init__ = __init__
    trainer_class.training_step = counting_step
    _write({"event": "hooked", "t": time.monotonic(), "pid": os.getpid()})


class _TrainerFinder(importlib.abc.MetaPathFinder):
    """Finds transformers.trainer as usual, and patches it once it has run."""

    def find_spec(self, name, path, target=None):
        if name != "transformers.trainer":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if PATH:
    sys.meta_path.insert(0, _TrainerFinder())
