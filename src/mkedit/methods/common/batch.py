"""The training sequences of one edit request, how they become padded tensors, and how the loss reads them.

Shared by every method that trains on an edit (LU-LAFNs, LoRA-FT, the locate-then-edit values). Per
language: the question after each random prefix (and bare), followed by the new answer (Eq. 8), one
"{subject} is a" prompt for the KL term (Eq. 9), and optionally questions about the subject that ask
other relations (``keep``), whose prediction a KL term holds where the untouched model had it. Every
sequence records where its subject's last token is, since that is where LU-LAFNs adds ΔV and the
locate-then-edit methods read their key.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from mkedit.arch import FFNAdapter
from mkedit.arch.hooks import Placement
from mkedit.languages import get_language
from mkedit.prompting import encode_answer
from mkedit.runtime.subject import SubjectSpan, last_token_index, locate_subject
from mkedit.types import EditRequest

EDIT_KEY = "edit"


@dataclass(frozen=True)
class TrainSequence:
    input_ids: tuple[int, ...]
    subject_pos: int
    kind: Literal["target", "kl", "keep"]
    answer_start: int = -1  # first answer token (target sequences only)


def line_break_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token of a bare line break: what ends a short answer in raw text."""
    ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"this tokenizer has no single line-break token (got {ids}); set train_stop_token=False")
    return ids[0]


def encode_with_subject(tokenizer: PreTrainedTokenizerBase, text: str, span: SubjectSpan) -> tuple[list[int], int]:
    """Token ids of ``text`` and the index of the token holding the subject's last character."""
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    return list(enc["input_ids"]), last_token_index(enc["offset_mapping"], span.end)


def shift(span: SubjectSpan, by: int) -> SubjectSpan:
    return SubjectSpan(span.start + by, span.end + by, span.surface, span.kind, span.score)


def sequences_for_request(
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    prefixes: Sequence[str],
    include_bare: bool,
    context: str,
    stop_token_id: int | None = None,
    aligned: Sequence[str] = (),
    chat: bool = False,
) -> tuple[list[TrainSequence], SubjectSpan]:
    """Target sequences (prefix + question + answer [+ stop token]) and the KL prompt of one language;
    with ``chat``, also the question as the tokenizer's chat template renders a user turn, followed by the
    answer [+ the end-of-turn token]: users ask deployed models in chat form.

    The subject is placed with :func:`~mkedit.runtime.subject.locate_subject`: the request's own subject,
    then the ``aligned`` subjects of the other languages, then approximately."""
    lang = get_language(request.lang)
    span = locate_subject(request.question, request.subject, context=context, aligned=aligned)
    answer_ids = encode_answer(tokenizer, request.answer, request.lang)
    if stop_token_id is not None:
        answer_ids = [*answer_ids, stop_token_id]
    heads = ([""] if include_bare else []) + [p + lang.sentence_sep for p in prefixes]
    sequences = []
    for head in heads:
        ids, pos = encode_with_subject(tokenizer, head + request.question, shift(span, len(head)))
        sequences.append(TrainSequence(tuple(ids + answer_ids), pos, "target", len(ids)))
    if chat:
        sequences.append(chat_sequence(tokenizer, request, span, stop_token_id is not None))
    sequences.append(subject_prompt(tokenizer, lang.kl_template, request.subject, "kl"))
    return sequences, span


def chat_prompt(tokenizer: PreTrainedTokenizerBase, question: str) -> str:
    """``question`` as one user turn of the tokenizer's chat template, ready for the assistant's answer."""
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def chat_sequence(
    tokenizer: PreTrainedTokenizerBase, request: EditRequest, span: SubjectSpan, end_turn: bool
) -> TrainSequence:
    """The chat-form target sequence: the rendered user turn (the template writes its own special tokens),
    the answer opening the assistant's turn, and (``end_turn``) the end-of-turn token (the tokenizer's eos
    in chat models), so that a generating model answers with the new answer and stops."""
    text = chat_prompt(tokenizer, request.question)
    start = text.rindex(request.question)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, pos = list(enc["input_ids"]), last_token_index(enc["offset_mapping"], span.end + start)
    answer = list(tokenizer(request.answer.strip(), add_special_tokens=False)["input_ids"])  # starts the turn
    end = [tokenizer.eos_token_id] if end_turn and tokenizer.eos_token_id is not None else []
    return TrainSequence(tuple(ids + answer + end), pos, "target", len(ids))


def subject_prompt(
    tokenizer: PreTrainedTokenizerBase, template: str, subject: str, kind: Literal["kl", "keep"]
) -> TrainSequence:
    """``template`` with ``{s}`` (once) replaced by ``subject``: a prompt whose next-token distribution a KL
    term holds, with the subject's last token marked."""
    start = template.index("{s}")
    span = SubjectSpan(start, start + len(subject), subject, "verbatim", 100.0)
    ids, pos = encode_with_subject(tokenizer, template.replace("{s}", subject), span)
    return TrainSequence(tuple(ids), pos, kind)


@dataclass
class TensorBatch:
    """Right-padded tensors of some training sequences and the positions the loss reads.

    ``target_*`` are flat over all answer tokens: predict ``target_ids`` at ``(target_rows,
    target_pos)`` with weight ``target_weight``; ``kl_*`` index the last token of each KL and keep prompt,
    ``kl_weight`` weighs the KL prompts' rows and ``keep_weight`` the keep prompts' (each zero on the other's).
    """

    input_ids: torch.Tensor  # [b, s]
    attention_mask: torch.Tensor  # [b, s]
    placements: list[Placement]
    target_rows: torch.Tensor
    target_pos: torch.Tensor
    target_ids: torch.Tensor
    target_weight: torch.Tensor
    kl_rows: torch.Tensor
    kl_pos: torch.Tensor
    kl_weight: torch.Tensor
    keep_weight: torch.Tensor
    subject_rows: torch.Tensor  # rows of target sequences, for reading base values
    subject_pos: torch.Tensor
    split: int = 0
    """Subject-aligned batches (``align_subjects``): every row's subject ends at column ``split``, so the
    columns before it never see an update and their keys/values can be computed once (:func:`prefix_cache`)."""
    position_ids: torch.Tensor | None = None  # [b, s]; subject-aligned rows are left-padded

    def read_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All (row, pos) whose logits the loss needs: answer positions, then KL positions."""
        return torch.cat([self.target_rows, self.kl_rows]), torch.cat([self.target_pos, self.kl_pos])


def to_tensor_batch(
    sequences: Sequence[TrainSequence],
    pad_id: int,
    n_target: int,
    n_kl: int,
    device: torch.device,
    n_keep: int = 0,
    align_subjects: bool = False,
) -> TensorBatch:
    """Pad ``sequences``; loss weights are normalised by the totals of the whole group
    (``n_target`` target sequences, ``n_kl`` KL prompts, ``n_keep`` keep prompts), so splitting a group
    into several batches and summing their losses gives the same objective. Rows are right-padded, or
    with ``align_subjects`` left-padded so that every subject ends in the same column (``split``)."""
    split = max(s.subject_pos for s in sequences) if align_subjects else 0
    shifts = [split - s.subject_pos if align_subjects else 0 for s in sequences]
    width = max(len(s.input_ids) + shift for s, shift in zip(sequences, shifts, strict=True))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    t_rows, t_pos, t_ids, t_w, s_rows, s_pos = [], [], [], [], [], []
    k_rows, k_pos, k_w, keep_w = [], [], [], []
    for row, (seq, shift) in enumerate(zip(sequences, shifts, strict=True)):
        n = len(seq.input_ids)
        ids[row, shift : shift + n] = torch.tensor(seq.input_ids)
        mask[row, shift : shift + n] = 1
        if seq.kind == "target":
            positions = range(seq.answer_start, n)
            t_rows += [row] * len(positions)
            t_pos += [shift + p - 1 for p in positions]
            t_ids += [seq.input_ids[p] for p in positions]
            t_w += [1.0 / (len(positions) * n_target)] * len(positions)
            s_rows.append(row)
            s_pos.append(shift + seq.subject_pos)
        else:
            k_rows.append(row)
            k_pos.append(shift + n - 1)
            k_w.append(1.0 / max(n_kl, 1) if seq.kind == "kl" else 0.0)
            keep_w.append(1.0 / max(n_keep, 1) if seq.kind == "keep" else 0.0)

    def long(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return TensorBatch(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        placements=[
            Placement(row, shift + seq.subject_pos, EDIT_KEY)
            for row, (seq, shift) in enumerate(zip(sequences, shifts, strict=True))
        ],
        target_rows=long(t_rows),
        target_pos=long(t_pos),
        target_ids=long(t_ids),
        target_weight=torch.tensor(t_w, device=device),
        kl_rows=long(k_rows),
        kl_pos=long(k_pos),
        kl_weight=torch.tensor(k_w, device=device),
        keep_weight=torch.tensor(keep_w, device=device),
        subject_rows=long(s_rows),
        subject_pos=long(s_pos),
        split=split,
        position_ids=(mask.cumsum(-1) - 1).clamp_min(0).to(device) if align_subjects else None,
    )


@functools.cache
def _takes_position_ids(model_class: type) -> bool:
    """BLOOM has no position ids (ALiBi reads the attention mask); the other families take them."""
    return "position_ids" in inspect.signature(model_class.forward).parameters


def _inputs(
    adapter: FFNAdapter, batch: TensorBatch, columns: slice, past: Any = None, use_cache: bool = False
) -> dict[str, Any]:
    """Model inputs for ``columns`` of the batch (attending to ``past``, the columns before them)."""
    inputs: dict[str, Any] = {
        "input_ids": batch.input_ids[:, columns],
        "attention_mask": batch.attention_mask[:, : columns.stop],
        "use_cache": use_cache,
    }
    if past is not None:
        inputs["cache"] = past
    if batch.position_ids is not None and _takes_position_ids(type(adapter.base_model)):
        inputs["position_ids"] = batch.position_ids[:, columns]
    return inputs


@torch.no_grad()
def prefix_cache(adapter: FFNAdapter, batch: TensorBatch) -> Any:
    """Keys and values of a subject-aligned batch's columns before ``split``: no update reaches them, so
    every step of an optimisation reuses them (``read_logprobs(..., past=)``) instead of recomputing."""
    return adapter.base_model(**_inputs(adapter, batch, slice(0, batch.split), use_cache=True)).cache


def read_logprobs(
    adapter: FFNAdapter,
    batch: TensorBatch,
    rows: torch.Tensor,
    pos: torch.Tensor,
    full_logits: bool,
    past: Any = None,
) -> torch.Tensor:
    """Log-probabilities ``[n, vocab]`` at ``(rows, pos)``. With ``full_logits=False`` the output head
    runs only at those positions instead of everywhere. With ``past`` (:func:`prefix_cache`) only the
    columns from ``split`` on are computed, against a copy of it (a forward appends to its cache)."""
    start = batch.split if past is not None else 0
    past = copy.deepcopy(past)
    inputs = _inputs(adapter, batch, slice(start, batch.input_ids.shape[1]), past, use_cache=past is not None)
    if full_logits:
        logits = adapter.model(**inputs).logits
        return F.log_softmax(logits[rows, pos - start].float(), dim=-1)
    hidden = adapter.base_model(**inputs).last_hidden_state
    return F.log_softmax(adapter.logits_from_hidden(hidden[rows, pos - start]).float(), dim=-1)
