"""Word-level caption vocabulary of the Transformer-decoder captioners (the report's recipe).

Captions are lower-cased and split into words and punctuation marks; words seen at least
``min_freq`` (2) times in the *training* captions get an id, every other word maps to ``<UNK>``.
Ids 0..3 are ``<PAD> <SOS> <EOS> <UNK>``; a caption is at most ``max_len`` (50) tokens including
``<SOS>`` and ``<EOS>``. Saved as ``vocab.json`` next to the weights.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PAD, SOS, EOS, UNK = "<PAD>", "<SOS>", "<EOS>", "<UNK>"
SPECIALS = (PAD, SOS, EOS, UNK)
PAD_ID, SOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
VOCAB_FILE = "vocab.json"

# A word (letters/digits, an inner apostrophe or hyphen allowed) or one punctuation mark. Flickr8k
# writes "a dog runs ." and Shapes "a red circle , small", so punctuation is a token of its own.
_TOKEN = re.compile(r"[0-9a-z]+(?:['-][0-9a-z]+)*|[^\s0-9a-z]")


def tokenize(caption: str) -> list[str]:
    return _TOKEN.findall(caption.lower())


@dataclass
class Vocabulary:
    """``itos``: id -> token (ids 0..3 are the specials); ``max_len``: tokens per caption incl. SOS/EOS."""

    itos: list[str]
    max_len: int = 50

    def __post_init__(self) -> None:
        if tuple(self.itos[:4]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {self.itos[:4]}")
        if self.max_len < 3:
            raise ValueError(f"max_len must be at least 3 (<SOS>, a word, <EOS>), got {self.max_len}")
        self.stoi = {token: index for index, token in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    @classmethod
    def build(cls, captions: Iterable[str], *, min_freq: int = 2, max_len: int = 50) -> Vocabulary:
        counts = Counter(token for caption in captions for token in tokenize(caption))
        # Most frequent first, ties alphabetical: the same captions always give the same ids.
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *words], max_len=max_len)

    def encode(self, caption: str) -> list[int]:
        """``<SOS> w1 .. wn <EOS>``, words cut so that the whole is at most ``max_len`` ids."""
        ids = [self.stoi.get(token, UNK_ID) for token in tokenize(caption)][: self.max_len - 2]
        return [SOS_ID, *ids, EOS_ID]

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first ``<EOS>``; ``<PAD>``/``<SOS>`` skipped, ``<UNK>`` kept as written."""
        words = []
        for index in ids:
            index = int(index)
            if index == EOS_ID:
                break
            if index in (PAD_ID, SOS_ID):
                continue
            words.append(self.itos[index] if 0 <= index < len(self.itos) else UNK)
        return " ".join(words)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / VOCAB_FILE
        path.write_text(json.dumps({"itos": self.itos, "max_len": self.max_len}, indent=0) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Vocabulary:
        path = Path(folder) / VOCAB_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"vocabulary file not found: {path}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"vocabulary file {path} is not valid JSON: {err}") from err
        return cls(list(data["itos"]), max_len=int(data["max_len"]))
