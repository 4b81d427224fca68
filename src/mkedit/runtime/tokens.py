"""Character spans of token ids, so text matches can be mapped back to token positions."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase


def token_char_spans(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text of ``ids`` and, per token, the ``(start, end)`` characters it completes.

    Decoding growing prefixes handles every tokenizer the same way. A token that ends inside a
    multi-byte character gets an empty span; the token completing the character gets the character,
    as with a fast tokenizer's offset mapping, so edit positions agree with those used while editing.
    """
    text = tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    spans: list[tuple[int, int]] = []
    done = 0
    for i in range(1, len(ids) + 1):
        prefix = tokenizer.decode(list(ids[:i]), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if len(prefix) >= done and text.startswith(prefix):
            spans.append((done, len(prefix)))
            done = len(prefix)
        else:
            spans.append((done, done))
    return text, spans
