"""The Hugging Face hub, for the two steps that read from it when base_model is a hub id.

- The base model's files, for mlx_lm.convert (quantize_base.py): huggingface_hub's progress bars,
  shown although a job's output is a pipe.
- Its tokenizer alone (tokenizer.json, tokenizer_config.json; never weights), so validation can
  count tokens as training will (validate_dataset.py).

Both land in the Hugging Face cache (HF_HOME, HF_HUB_CACHE), once. HF_HUB_OFFLINE=1 uses the
cache only. The token for a gated or private model is huggingface_hub's own (HF_TOKEN, or
`hf auth login`): the pipeline never reads, passes, logs or writes it. A failure is a HubError
that says why in the user's words.

    python scripts/hub.py tokenizer Qwen/Qwen2.5-32B      (prints the folder holding it)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils import tqdm as hf_tqdm

from lora_style.fileio import UserError

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json"]

# A download's bars refresh at most this often.
BAR_SECONDS = 5.0

# What a download can raise: the hub's answers, but also its HTTP client's and its Xet
# client's errors, the disk's. Each is a reason to say why, with its type, never a traceback.
HUB_FAILURES = Exception


class HubError(UserError):
    """A hub download failed; the message says why and what to do."""


class ProgressBar(hf_tqdm):
    """huggingface_hub's progress bars, shown in a job. tqdm hides a bar whose stream is not a
    terminal, and a job's stderr is a pipe (to the terminal and the log, scripts/logged.sh), so
    a 65 GB download would be silent for an hour. Shown here, refreshed at most every
    BAR_SECONDS: a few hundred updates in the log, not tqdm's ten a second.
    HF_HUB_DISABLE_PROGRESS_BARS=1 still hides them."""

    def __init__(self, *args, **kwargs):
        if kwargs.get("disable") is None:  # None: tqdm's "only on a terminal"
            kwargs["disable"] = False
        kwargs.setdefault("mininterval", BAR_SECONDS)
        super().__init__(*args, **kwargs)


def why(exc: BaseException, repo_id: str) -> str:
    """A hub failure in the user's words."""
    said = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, GatedRepoError):
        return (
            f"{repo_id} is gated: accept its conditions on https://huggingface.co/{repo_id} "
            "and set HF_TOKEN (or run `hf auth login`)"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return (
            f"{repo_id} is not on the Hugging Face hub, or is private (check base_model; "
            "for a private model set HF_TOKEN)"
        )
    if isinstance(exc, LocalEntryNotFoundError):
        if constants.HF_HUB_OFFLINE:
            return f"HF_HUB_OFFLINE is set and {repo_id} is not in the Hugging Face cache"
        cause = exc.__cause__  # what the network said
        said = f" ({type(cause).__name__}: {cause})" if cause else ""
        return (
            f"the Hugging Face hub cannot be reached (no network?) and {repo_id} is not in "
            f"the Hugging Face cache{said}"
        )
    return f"downloading {repo_id} failed: {type(exc).__name__}: {said}"


def download_model(repo_id: str, allow_patterns: list[str]) -> Path:
    """The model's files that match allow_patterns, with progress bars; the snapshot folder."""
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, tqdm_class=ProgressBar))
    except HUB_FAILURES as exc:
        raise HubError(why(exc, repo_id)) from None


def download_tokenizer(repo_id: str) -> Path:
    """A folder holding the model's tokenizer.json (and tokenizer_config.json), no weights."""
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=TOKENIZER_FILES))
    except HUB_FAILURES as exc:
        raise HubError(why(exc, repo_id)) from None
    if not (folder / "tokenizer.json").is_file():
        raise HubError(
            f"{repo_id} has no tokenizer.json (only a slow tokenizer's files), which token counts need"
        )
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["tokenizer"])
    parser.add_argument("repo_id", help="a hub id, e.g. Qwen/Qwen2.5-32B")
    args = parser.parse_args(argv)
    try:
        print(download_tokenizer(args.repo_id))
    except HubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
