"""Token counts of SFT examples as training renders them, counted in batches as the data streams
past, with bounded memory whatever the data holds.

Examples are rendered in the run's chat template (prompt_format.py) and tokenised in batches of
a few MB of text (the tokenizer's own threads share a batch). One example longer than
CHUNK_CHARS (a pasted book on one line) is tokenised a chunk at a time, cut between two words,
where a byte-level BPE tokenizer such as Qwen's cuts its words anyway, so the chunks' counts add
up to the whole's; and once it is over cutoff_len the counting of it stops there: an example over
cutoff_len is known after its first cutoff_len tokens, and training truncates it anyway. Its
count is then a lower bound, and the report lists its line (`tokens.counted_to_cutoff_lines`).

`Tokens` is what validate.py drives while it streams the file: the tokenizer is loaded (a hub id's
files fetched, hub.py) at the first valid example, and the counting dropped at the first problem.
"""

from __future__ import annotations

import re
from array import array
from pathlib import Path

from lora_style.config.train_yaml import HUB_ID, is_local_model
from lora_style.prompt_format import load_template, render_training_text

NO_TOKENIZER = {"counted": False, "why": "no tokenizer given (--tokenizer)"}

BATCH_CHARS = 4_000_000  # text per encode_batch call: ~200 MB of the tokenizer's encodings
BATCH_EXAMPLES = 5_000
CHUNK_CHARS = 1_000_000  # one example longer than this is tokenised a chunk at a time
# A cut between two words: a letter, one space, a letter. Qwen2's pre-tokenizer (and GPT-2's)
# starts a new piece at that space, so no token spans the cut.
_WORD_GAP = re.compile(r"(?<=\w) (?=\w)")


def load_tokenizer(tokenizer_dir: str):
    from tokenizers import Tokenizer

    tokenizer_file = Path(tokenizer_dir) / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(
            f"{tokenizer_file}: no tokenizer.json; pass the base model's directory to --tokenizer"
        )
    return Tokenizer.from_file(str(tokenizer_file))


class TokenCounter:
    """Feed it (line, example) in file order; `lines` and `lengths` come out in the same order."""

    def __init__(self, tokenizer_dir: str, template: str = "qwen", cutoff_len: int | None = None):
        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.chat = load_template(template)
        self.cutoff_len = cutoff_len
        # encode_batch (its threads share a batch); encode_batch_fast, which skips the offsets,
        # measured no faster here and used more CPU time.
        self._encode = self.tokenizer.encode_batch
        self.lines, self.lengths = array("q"), array("q")
        self.counted_to_cutoff: list[int] = []
        self._texts: list[str] = []
        self._pending_lines: list[int] = []
        self._chars = 0

    def add(self, line: int, example: dict) -> None:
        text = render_training_text(example["instruction"], example["input"], example["output"], self.chat)
        if len(text) > CHUNK_CHARS:
            self.flush()
            self.lines.append(line)
            self.lengths.append(self._count_long(line, text))
            return
        self._texts.append(text)
        self._pending_lines.append(line)
        self._chars += len(text)
        if self._chars >= BATCH_CHARS or len(self._texts) >= BATCH_EXAMPLES:
            self.flush()

    def flush(self) -> None:
        if not self._texts:
            return
        encodings = self._encode(self._texts, add_special_tokens=False)
        self.lengths.extend(len(enc.ids) for enc in encodings)
        self.lines.extend(self._pending_lines)
        self._texts, self._pending_lines, self._chars = [], [], 0

    def _count_long(self, line: int, text: str) -> int:
        total, start = 0, 0
        while start < len(text):
            end = start + CHUNK_CHARS
            if end < len(text):
                gap = _WORD_GAP.search(text, end, end + CHUNK_CHARS)
                end = gap.start() if gap else len(text)  # no word gap in a whole chunk: as one
            total += len(self.tokenizer.encode(text[start:end], add_special_tokens=False).ids)
            start = end
            if self.cutoff_len is not None and total > self.cutoff_len and start < len(text):
                self.counted_to_cutoff.append(line)
                break
        return total

    def finish(self) -> list[int]:
        self.flush()
        return list(self.lengths)


def token_lengths(examples: list[dict], tokenizer_dir: str, template: str = "qwen") -> list[int]:
    """Tokens per example as training sees it: rendered in the run's chat template."""
    counter = TokenCounter(tokenizer_dir, template)
    for number, example in enumerate(examples, start=1):
        counter.add(number, example)
    return counter.finish()


class Tokens:
    """The report's token counting, started at the first valid example (a tokenizer is loaded,
    maybe fetched, only for a file that has one) and dropped at the first problem."""

    def __init__(self, tokenizer: str | None, template: str, cutoff_len: int | None):
        self.spec, self.template, self.cutoff_len = tokenizer, template, cutoff_len
        self.counter = None
        self.answer: dict | None = None if tokenizer else dict(NO_TOKENIZER)
        self.error: Exception | None = None  # raised after the pass, if the file is valid

    def add(self, line: int, example: dict) -> None:
        if self.answer is not None or self.error is not None:
            return
        if self.counter is None:
            try:
                self._start()
            except FileNotFoundError as exc:
                self.error = exc
                return
            if self.counter is None:
                return
        self.counter.add(line, example)

    def _start(self) -> None:
        folder = Path(self.spec).expanduser()
        if not folder.is_dir() and not is_local_model(self.spec) and HUB_ID.match(self.spec):
            from lora_style import hub  # huggingface_hub: a quarter of a second, for hub ids only

            try:
                folder = hub.download_tokenizer(self.spec)
            except hub.HubError as exc:
                self.answer = {
                    "counted": False,
                    "why": f"{exc}; character counts only (to count tokens, run the step again "
                    "where the hub answers: snakemake --forcerun validate_dataset)",
                }
                return
        self.counter = TokenCounter(str(folder), self.template, self.cutoff_len)

    def stop(self) -> None:
        self.counter = None
        self.answer = self.answer or {"counted": False, "why": "the data has problems"}

    def report(self) -> tuple[dict, list[int] | None, list[int]]:
        """(tokens part of the report, lengths or None, line numbers)."""
        if self.error is not None:
            raise self.error
        if self.counter is None:
            return dict(self.answer or NO_TOKENIZER), None, []
        lengths = self.counter.finish()
        tokens = {"counted": True, "tokenizer": self.spec, "template": self.template}
        if self.counter.counted_to_cutoff:
            tokens["counted_to_cutoff_lines"] = self.counter.counted_to_cutoff
        return tokens, lengths, list(self.counter.lines)
