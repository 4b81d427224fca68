"""Scores of one edited model on benchmark test cases, following the Bi-ZsRE / MzsRE protocol.

**Teacher-forced scores** (what the paper's tables report). The prompt and the gold answer are joined
by :func:`mkedit.prompting.encode_prompt_answer`; at every answer position the prediction is the
argmax of the next-token logits given the prompt and the *gold* answer prefix. The predicted ids are
then compared with the gold ids:

- **F1**: token-level multiset overlap (``Counter`` intersection of predicted and target ids),
  precision = overlap / len(pred), recall = overlap / len(target), F1 = 2PR / (P + R); 0 when nothing
  overlaps; 1 when both are empty (as the reference code does).
  One public version of the benchmark's reference evaluation (``evaluate.py`` of Bi-ZsRE) computes
  ``overlap² / (len(pred) · len(target))``, i.e. P × R, and calls it F1. We use the true harmonic mean:
  it is what "F1" means in the papers that define the metric, and P × R is lower whenever P and R are
  below 1 (P = R = 0.5 gives 0.25 instead of 0.5), so it would understate partial matches. For
  teacher-forced predictions len(pred) == len(target), so P == R and F1 == P == R anyway; the two
  definitions differ only on the squared term (F1 = P vs P²).
- **EM**: the decoded prediction equals the decoded target (``.strip()``-ed; special tokens kept, so a
  predicted end-of-turn token never passes for an answer's whitespace token).
- **Locality** has no gold answer of its own: the post-edit predictions are compared with the
  *pre-edit* predictions of the same model on the same ``loc`` prompt + ``loc_ans`` (teacher-forced),
  so locality measures "did the edit change anything here", not "is the model right here".

**Generation-based scores** (reported beside, never mixed in): greedy generation of at most
len(target tokens) + ``extra_tokens`` new tokens, ending early once the first line is complete (nothing
after it is scored), normalised (:func:`normalize_answer`) and compared with the target by exact match
and by containment; for locality, with the pre-edit generation.

The model is seen only through callables (:data:`LogitsFn`, :data:`GenerateFn`), so the same code scores
an unedited HF model, a model with an edit cache applied, or a baseline.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria

from mkedit.prompting import encode_answer, encode_prompt, encode_prompt_answer

logger = logging.getLogger(__name__)

LogitsFn = Callable[[torch.Tensor, torch.Tensor, Sequence[int], torch.Tensor], torch.Tensor]
"""``(input_ids [b, s], attention_mask [b, s], prompt_lengths, keep [k]) -> logits [b, k, vocab]`` at the
positions ``keep``; see :meth:`EditedView.logits` (``logits_to_keep``)."""

GenerateFn = Callable[[torch.Tensor, torch.Tensor, int, StoppingCriteria, Sequence[int]], torch.Tensor]
"""``(input_ids [b, s] left-padded, attention_mask [b, s], max_new_tokens, stop, prompt_lengths) -> new ids [b, n]``,
greedy; ``stop`` is a Hugging Face stopping criterion (rows it marks done may be padded or go on: both are fine);
``prompt_lengths[row]`` is how many of the row's real tokens are the prompt, the rest being answer ids already known
(:func:`greedy_known`): as in :data:`LogitsFn`, a method that reacts to the prompt must look at those only."""

Case = tuple[str, str, str]
"""``(prompt, target, lang)``."""


@dataclass(frozen=True)
class TokenPrediction:
    """Teacher-forced argmax ids at each answer position, beside the gold answer ids (same length)."""

    pred_ids: list[int]
    target_ids: list[int]
    next_id: int | None = field(default=None, compare=False)
    """The argmax after the whole answer (None where it was not computed, e.g. outputs read back from a row)."""


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad id, else its EOS id: the value never matters (masked), only that it exists."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def _batch(
    seqs: Sequence[list[int]], pad_id: int, side: str, device: torch.device | str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``seqs`` to one length on ``side``; returns ``input_ids [b, s]`` and ``attention_mask [b, s]``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[i, span] = torch.tensor(seq, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


def _length_batches(lengths: Sequence[int], batch_size: int, forward_cost: int = 0) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding); results are put back in order.

    With ``forward_cost`` = 0, consecutive runs of ``batch_size`` in length order. Otherwise the split of the
    length order that costs least, counting each batch as ``forward_cost`` + rows x its longest length tokens:
    where a forward's cost grows with its tokens (a CPU), padding a short row to a long one costs as much as
    running that many real tokens, and a forward's fixed cost (reading every weight) is worth ``forward_cost``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if not forward_cost:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    sorted_lengths = [lengths[i] for i in order]
    best = [0] + [float("inf")] * len(order)  # best[j]: cheapest split of the first j rows
    start = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for begin in range(max(0, end - batch_size), end):
            cost = best[begin] + forward_cost + (end - begin) * sorted_lengths[end - 1]
            if cost < best[end]:
                best[end], start[end] = cost, begin
    batches, end = [], len(order)
    while end:
        batches.append(order[start[end] : end])
        end = start[end]
    return batches[::-1]


def forward_cost_tokens(device: torch.device | str | None) -> int:
    """A forward's fixed cost in tokens, for :func:`_length_batches`. On a CPU, reading the weights of
    ``qwen2.5-0.5b`` cost as much as computing 15 tokens on one thread and 37 on two
    (``benchmarks/forward_cost.py``, 2026-11-30); on an accelerator a forward of a few hundred tokens costs
    about the same as one of a few, so batches are not split there."""
    return 32 if torch.device(device or "cpu").type == "cpu" else 0


def teacher_forced(
    logits_fn: LogitsFn,
    tokenizer: PreTrainedTokenizerBase,
    cases: Sequence[Case],
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> list[TokenPrediction]:
    """Argmax predictions at each answer position given the prompt and the gold answer prefix.

    Sequences are right-padded, so the real tokens keep positions 0..len-1 and causal attention never
    sees the padding: batching does not change any prediction. The output head is applied only from the
    batch's first answer position on (``logits_fn``'s last argument): with a vocabulary of 150k tokens, the
    logits of every prompt position would fill most of the pass's memory for nothing.
    """
    encoded = [encode_prompt_answer(tokenizer, prompt, target, lang) for prompt, target, lang in cases]
    for (prompt, _, _), pair in zip(cases, encoded, strict=True):
        if pair.answer_start == 0:
            raise ValueError(f"prompt {prompt!r} encodes to no tokens: nothing predicts the first answer token")
    inputs = [list(pair.input_ids) for pair in encoded]  # the last answer token too: what follows it is read
    pad_id = _pad_id(tokenizer)
    out: list[TokenPrediction | None] = [None] * len(cases)
    with torch.no_grad():
        for idx in _length_batches([len(s) for s in inputs], batch_size, forward_cost_tokens(device)):
            ids, mask = _batch([inputs[i] for i in idx], pad_id, "right", device)
            prompt_lengths = [encoded[i].answer_start for i in idx]
            first = min(prompt_lengths) - 1
            keep = torch.arange(first, ids.shape[1], device=ids.device)
            argmax = logits_fn(ids, mask, prompt_lengths, keep).argmax(dim=-1).cpu()  # [b, s - first]
            for row, i in enumerate(idx):
                pair = encoded[i]
                # logits at position t predict token t + 1: answer token k is predicted at start - 1 + k.
                preds = argmax[row, pair.answer_start - 1 - first : len(pair.input_ids) - 1 - first].tolist()
                after = int(argmax[row, len(pair.input_ids) - 1 - first])
                out[i] = TokenPrediction(pred_ids=preds, target_ids=list(pair.answer_ids), next_id=after)
    return [p for p in out if p is not None]


def token_f1(pred_ids: Sequence[int], target_ids: Sequence[int]) -> float:
    """Harmonic-mean F1 of the multiset overlap of two id sequences (see the module docstring)."""
    if not pred_ids and not target_ids:
        return 1.0
    overlap = sum((Counter(pred_ids) & Counter(target_ids)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_ids)
    recall = overlap / len(target_ids)
    return 2 * precision * recall / (precision + recall)


def f1_em(pred: TokenPrediction, tokenizer: PreTrainedTokenizerBase) -> tuple[float, float]:
    """Teacher-forced ``(F1, EM)`` of one case, each in 0..1."""
    f1 = token_f1(pred.pred_ids, pred.target_ids)
    # Special tokens are kept: an answer holds none, and a predicted end-of-turn where the answer has a
    # whitespace token must not vanish in decoding and pass as a match.
    pred_text = tokenizer.decode(pred.pred_ids, skip_special_tokens=False).strip()
    target_text = tokenizer.decode(pred.target_ids, skip_special_tokens=False).strip()
    return f1, float(pred_text == target_text)


def locality_scores(
    pre: TokenPrediction, post: TokenPrediction, tokenizer: PreTrainedTokenizerBase | None = None
) -> tuple[float, float]:
    """Locality ``(F1, EM)``: post-edit predictions scored against the pre-edit predictions.

    Both are compared as ids (EM = identical id sequences), so ``tokenizer`` is not needed; it is
    accepted so that call sites look like :func:`f1_em`.
    """
    if pre.target_ids != post.target_ids:
        raise ValueError("locality_scores needs the pre- and post-edit predictions of the same case")
    return token_f1(post.pred_ids, pre.pred_ids), float(post.pred_ids == pre.pred_ids)


# --------------------------------------------------------------------------- generation-based scores


def max_new_tokens_for(tokenizer: PreTrainedTokenizerBase, target: str, lang: str, extra_tokens: int = 4) -> int:
    """Generation budget for a case: the target's token count (as teacher-forced) + ``extra_tokens``."""
    return len(encode_answer(tokenizer, target, lang)) + extra_tokens


def generation_decided(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], budget: int) -> bool:
    """True when a generation's first ``ids`` already fix what is scored of it: its budget is spent, it reached
    EOS, or its first answer line is complete (a line break after non-blank text)."""
    return (
        len(ids) >= budget
        or (tokenizer.eos_token_id is not None and tokenizer.eos_token_id in ids)
        or "\n" in tokenizer.decode(ids, skip_special_tokens=True).lstrip()
    )


class AnswerLineDone(StoppingCriteria):
    """Marks a generating row done once :func:`generation_decided` says so, counting the answer ids the row
    started with (``known``): nothing after that can change its score, so a batch's decoding loop ends when
    every row is done instead of running to the largest budget."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_length: int,
        budgets: Sequence[int],
        known: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.budgets = list(budgets)
        self.known = [list(k) for k in known] if known is not None else [[] for _ in self.budgets]
        self.done = [False] * len(self.budgets)  # a finished row is not decoded again

    def __call__(self, input_ids: torch.Tensor, scores: object, **kwargs: object) -> torch.Tensor:
        new = input_ids[:, self.prompt_length :].tolist()
        for row, (ids, known, budget) in enumerate(zip(new, self.known, self.budgets, strict=True)):
            self.done[row] = self.done[row] or generation_decided(self.tokenizer, known + ids, budget)
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


_FIRST_LINE_WITH_BREAK = re.compile(r"\s*\S[^\n]*\n")


def through_first_line(generated: str) -> str:
    """``generated`` up to and including the line break that ends its first non-blank line (all of it when
    there is none): what a generation is kept as, the same whether its batch stopped early or ran on."""
    match = _FIRST_LINE_WITH_BREAK.match(generated)
    return match.group(0) if match else generated


def greedy_known(pred: TokenPrediction) -> list[int]:
    """The first ids that greedy decoding generates after the prompt, as far as a teacher-forced pass shows them.

    Each predicted id is the argmax given the prompt and the answer ids before it. So while the predictions
    equal the answer, greedy decoding generates the answer; at the first one that differs it generates that
    prediction instead, and after a fully predicted answer it generates ``next_id``. Nothing beyond is known.
    """
    for k, (predicted, target) in enumerate(zip(pred.pred_ids, pred.target_ids, strict=True)):
        if predicted != target:
            return [*pred.target_ids[:k], predicted]
    return [*pred.target_ids, *([] if pred.next_id is None else [pred.next_id])]


def generate_answer_ids(
    generate_fn: GenerateFn,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens_for_each: Sequence[int],
    batch_size: int = 8,
    device: torch.device | str | None = None,
    known: Sequence[Sequence[int]] | None = None,
) -> list[list[int]]:
    """Greedy continuation ids of ``prompts``, each cut at its own budget and before EOS (the rest of a row
    may run past its first line: :func:`answer_text` keeps what is scored).

    Prompts are left-padded (generation appends on the right). A batch is generated with its largest
    budget, stopping once every row is done (:class:`AnswerLineDone`), and each row is then cut to its own:
    greedy decoding is prefix-consistent, so this equals generating each row alone with its own budget.
    ``known[i]`` are ids greedy decoding is known to generate first after prompt ``i`` (:func:`greedy_known`):
    decoding resumes after them, and they count toward the budget and the answer.
    """
    if len(prompts) != len(max_new_tokens_for_each):
        raise ValueError("generation needs one max_new_tokens per prompt")
    starts = [list(k) for k in known] if known is not None else [[] for _ in prompts]
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    encoded = [ids + start for ids, start in zip(prompt_ids, starts, strict=True)]
    pad_id = _pad_id(tokenizer)
    out: list[list[int]] = [[] for _ in prompts]
    with torch.no_grad():
        for idx in _length_batches([len(s) for s in encoded], batch_size):
            ids, mask = _batch([encoded[i] for i in idx], pad_id, "left", device)
            budgets = [max_new_tokens_for_each[i] for i in idx]
            budget = max(1, *(b - len(starts[i]) for b, i in zip(budgets, idx, strict=True)))
            stop = AnswerLineDone(tokenizer, ids.shape[1], budgets, [starts[i] for i in idx])
            new_ids = generate_fn(ids, mask, budget, stop, [len(prompt_ids[i]) for i in idx]).cpu()  # [b, n]
            for row, i in enumerate(idx):
                out[i] = kept_ids(tokenizer, [*starts[i], *new_ids[row].tolist()], max_new_tokens_for_each[i])
    return out


def kept_ids(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], budget: int) -> list[int]:
    """A generation's ids as :func:`generate_answer_ids` returns them: cut at the budget, then before EOS."""
    toks = list(ids[:budget])
    eos_id = tokenizer.eos_token_id
    return toks[: toks.index(eos_id)] if eos_id is not None and eos_id in toks else toks


def answer_text(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """A generation as it is kept and scored: decoded, through its first non-blank line."""
    return through_first_line(tokenizer.decode(ids, skip_special_tokens=True))


def prediction_shown(generated_ids: Sequence[int], answer_ids: Sequence[int]) -> TokenPrediction | None:
    """The teacher-forced prediction of ``answer_ids`` that a greedy generation already shows, else None.

    The converse of :func:`greedy_known`: when the answer's ids are the first ids greedy decoding
    produced after the same prompt, each was the argmax given the prompt and the answer ids before it, which
    is what teacher forcing computes; so the untouched model's references need no second pass."""
    n = len(answer_ids)
    if list(generated_ids[:n]) != list(answer_ids):
        return None
    after = int(generated_ids[n]) if len(generated_ids) > n else None
    return TokenPrediction(pred_ids=list(answer_ids), target_ids=list(answer_ids), next_id=after)


_SPACES = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """NFKC, casefold, delete punctuation (Unicode category P*, so CJK 。，「」 too), collapse spaces.

    English articles are *kept*, unlike SQuAD's normaliser: dropping "a/an/the" without knowing the
    language would delete real words elsewhere (French/Portuguese "a" = "has"/"the", etc.) and make the
    same normalisation mean different things in the twelve MzsRE languages; the benchmarks' own EM
    removes nothing either. Punctuation is deleted (not replaced by a space), as SQuAD does, which also
    suits scripts written without spaces.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return _SPACES.sub(" ", text).strip()


def first_line(generated: str) -> str:
    """The answer part of a generation: leading whitespace dropped, then cut at the first newline.

    Leading newlines are dropped first so that "\\nParis" counts as answering "Paris".
    """
    return generated.lstrip().split("\n", 1)[0]


def gen_exact_match(generated: str, target: str) -> float:
    """1.0 if the normalised first line of ``generated`` equals the normalised ``target``, else 0.0."""
    return float(normalize_answer(first_line(generated)) == normalize_answer(target))


def gen_contains(generated: str, target: str) -> float:
    """1.0 if the normalised ``target`` occurs in the normalised first line of ``generated``.

    A plain substring test (it cannot know word boundaries in unspaced scripts), so "Paris" is also
    found in "Parisian"; an empty normalised target only matches an empty answer.
    """
    gen = normalize_answer(first_line(generated))
    tgt = normalize_answer(target)
    if not tgt:
        return float(gen == tgt)
    return float(tgt in gen)


def gen_locality_scores(pre_generated: str, post_generated: str) -> tuple[float, float]:
    """Generation-based locality ``(gen_em, gen_contains)``: the post-edit answer vs the pre-edit one."""
    pre = first_line(pre_generated)
    return gen_exact_match(post_generated, pre), gen_contains(post_generated, pre)


def aggregate(values: Sequence[float]) -> float | None:
    """Mean of 0..1 scores as a percentage (0-100); ``None`` when there is nothing to average."""
    if not values:
        return None
    return 100.0 * sum(values) / len(values)
