"""How a question and its answer become token ids: one rule shared by editing and evaluation.

The prompt and the answer are tokenised separately and concatenated (as ROME/MEMIT and the zsRE
evaluation do), so the answer's tokens are the same whatever precedes them and "answer positions" are
unambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from mkedit.languages import get_language


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of ``prompt + sep + answer``; ``answer_start`` is the first answer token's index."""

    input_ids: list[int]
    answer_start: int

    @property
    def answer_ids(self) -> list[int]:
        return self.input_ids[self.answer_start :]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Prompt ids, with the special tokens (BOS) the model expects at the start."""
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def encode_answer(tokenizer: PreTrainedTokenizerBase, answer: str, lang: str) -> list[int]:
    """Answer ids as they follow a prompt in ``lang`` (with a leading space where words are spaced)."""
    sep = get_language(lang).word_sep
    ids = list(tokenizer(sep + answer.strip(), add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"answer {answer!r} encodes to no tokens")
    return ids


def encode_prompt_answer(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str, lang: str) -> EncodedPair:
    """Ids of the prompt followed by the answer."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    return EncodedPair(prompt_ids + encode_answer(tokenizer, answer, lang), len(prompt_ids))
