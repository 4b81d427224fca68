"""Scoring one record: the untouched model's references, then the edited model's outputs and scores.

Every language's test questions and Specificity probes share one teacher-forced and one generation pass
per model (each pass is a decoding loop whose steps cost about the same for one row as for several), and a
question no edit acts on keeps the untouched model's outputs (:func:`score_record`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from mkedit.data.records import LOCALITY
from mkedit.eval.metrics import (
    TokenPrediction,
    answer_text,
    f1_em,
    first_line,
    gen_contains,
    gen_exact_match,
    gen_locality_scores,
    generate_answer_ids,
    generation_decided,
    greedy_known,
    kept_ids,
    locality_scores,
    max_new_tokens_for,
    prediction_shown,
    teacher_forced,
)
from mkedit.eval.report import METRICS, SPECIFICITY
from mkedit.methods.view import EditedView
from mkedit.prompting import encode_answer
from mkedit.types import BenchmarkRecord, Probe

if TYPE_CHECKING:
    from mkedit.eval.runner import EvalConfig


class Scorer:
    """Teacher-forced and generation-based scores of one view (the base model, or edits in force) on test
    cases. Prompts go through ``view.rewrite`` first, then the answer is appended: answer positions stay
    exact for methods that add context (ReMaKE)."""

    def __init__(self, view: EditedView, tokenizer: PreTrainedTokenizerBase, config: EvalConfig, device: Any) -> None:
        self.view = view
        self.tokenizer = tokenizer
        self.config = config
        self.device = device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _generate(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        max_new_tokens: int,
        stop: StoppingCriteria,
        prompt_lengths: Sequence[int],
    ) -> torch.Tensor:
        kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": self.pad_id}
        out = self.view.generate(
            ids, mask, prompt_lengths=prompt_lengths, stopping_criteria=StoppingCriteriaList([stop]), **kwargs
        )
        return out[:, ids.shape[1] :]

    def _rewritten(self, cases: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        return [(self.view.rewrite(prompt, lang), target, lang) for prompt, target, lang in cases]

    def predict(self, cases: Sequence[tuple[str, str, str]]) -> list[TokenPrediction]:
        return teacher_forced(
            self.view.logits, self.tokenizer, self._rewritten(cases), self.config.batch_size, self.device
        )

    def generate_ids(
        self,
        cases: Sequence[tuple[str, str, str]],
        budgets: Sequence[int],
        known: Sequence[Sequence[int]] | None = None,
    ) -> list[list[int]]:
        """Greedy continuation ids of the cases' prompts, each cut at its budget and before EOS; decoding
        resumes after the ``known`` ids of each case (:func:`generate_answer_ids`)."""
        prompts = [p for p, _, _ in self._rewritten(cases)]
        return generate_answer_ids(
            self._generate, self.tokenizer, prompts, budgets, self.config.batch_size, self.device, known
        )

    def generate(
        self,
        cases: Sequence[tuple[str, str, str]],
        budgets: Sequence[int] | None = None,
        predictions: Sequence[TokenPrediction] | None = None,
    ) -> list[str]:
        """Greedy answers; each case's budget is its target's length + ``gen_extra_tokens`` unless given. With
        the cases' teacher-forced ``predictions`` (this view's), decoding starts after the ids they already show
        (:func:`greedy_known`), and a case those ids decide (:func:`generation_decided`) is not decoded at all."""
        if budgets is None:
            budgets = [
                max_new_tokens_for(self.tokenizer, t, lang, self.config.gen_extra_tokens) for _, t, lang in cases
            ]
        known = [greedy_known(pred) for pred in predictions] if predictions is not None else [[] for _ in cases]
        todo = [
            i
            for i, (ids, b) in enumerate(zip(known, budgets, strict=True))
            if not generation_decided(self.tokenizer, ids, b)
        ]
        generated = self.generate_ids([cases[i] for i in todo], [budgets[i] for i in todo], [known[i] for i in todo])
        ids_of = dict(zip(todo, generated, strict=True))
        return [
            answer_text(self.tokenizer, ids_of[i] if i in ids_of else kept_ids(self.tokenizer, known[i], budgets[i]))
            for i in range(len(cases))
        ]


def _cases(record: BenchmarkRecord, langs: Iterable[str], metrics: Iterable[str]) -> list[tuple[str, str]]:
    """(lang, metric) pairs that ``record`` has, in a stable order."""
    wanted = list(metrics)
    return [(lang, m) for lang in langs for m in wanted if m in record.tests[lang]]


def _case_inputs(record: BenchmarkRecord, keys: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    return [(record.tests[lang][m].prompt, record.tests[lang][m].target, lang) for lang, m in keys]


def _probes(record: BenchmarkRecord, lang: str, sources: Sequence[str]) -> list[Probe]:
    return [p for p in record.probes.get(lang, ()) if p.source in sources]


def pre_predictions(
    records: Sequence[BenchmarkRecord], langs: Sequence[str], base: Scorer
) -> list[dict[str, dict[str, Any]]]:
    """References on the untouched model, per record and language: Locality's teacher-forced ids and
    generation, and each Specificity probe's pre-edit answer (greedy, first line, ``probe_tokens`` at most)
    with the teacher-forced ids of the untouched model on that answer.

    One generation pass serves every record and language, Locality and probes alike (a decoding step costs
    far less per row for many rows than for a few); one teacher-forced pass then serves Locality and the few
    probes whose generation does not already show their teacher-forced ids (:func:`prediction_shown`)."""
    config, tokenizer = base.config, base.tokenizer
    keys = [_cases(record, langs, [LOCALITY]) for record in records]
    inputs = [case for record, k in zip(records, keys, strict=True) for case in _case_inputs(record, k)]
    probes = [
        (n, lang, p)
        for n, record in enumerate(records)
        for lang in langs
        for p in _probes(record, lang, config.specificity)
    ]
    loc_budgets = [max_new_tokens_for(tokenizer, t, lang, config.gen_extra_tokens) for _, t, lang in inputs]
    gen_cases = (inputs if config.generation else []) + [(p.question, "", lang) for _, lang, p in probes]
    budgets = (loc_budgets if config.generation else []) + [config.probe_tokens] * len(probes)
    generated_ids = base.generate_ids(gen_cases, budgets) if gen_cases else []
    generated = [answer_text(tokenizer, ids) for ids in generated_ids]
    loc_texts: list[str | None] = generated[: len(inputs)] if config.generation else [None] * len(inputs)
    start = len(generated) - len(probes)
    answers, answer_ids = generated[start:], generated_ids[start:]
    references = [first_line(answer).strip() for answer in answers]
    # A probe's reference is the untouched model's own greedy answer, so its generation usually shows the
    # teacher-forced prediction already; only the rest (an answer whose ids differ once re-encoded) runs.
    pred_of = {
        i: prediction_shown(answer_ids[i], encode_answer(tokenizer, ref, probes[i][1]))
        for i, ref in enumerate(references)
        if ref
    }
    rerun = [i for i, pred in pred_of.items() if pred is None]
    preds = base.predict(inputs + [(probes[i][2].question, references[i], probes[i][1]) for i in rerun])
    pred_of.update(zip(rerun, preds[len(inputs) :], strict=True))
    pre: list[dict[str, dict[str, Any]]] = [{} for _ in records]
    loc_keys = [(n, lang) for n, k in enumerate(keys) for lang, _ in k]
    for (n, lang), pred, text in zip(loc_keys, preds[: len(inputs)], loc_texts, strict=True):
        pre[n][lang] = {"loc_pred_ids": pred.pred_ids, "loc_target_ids": pred.target_ids, "loc_generated": text}
    for i, ((n, lang, probe), answer, ref) in enumerate(zip(probes, answers, references, strict=True)):
        entry: dict[str, Any] = {**dataclasses.asdict(probe), "reference": ref, "generated": answer}
        if (pred := pred_of.get(i)) is not None:
            entry |= {"pred_ids": pred.pred_ids, "target_ids": pred.target_ids}
        pre[n].setdefault(lang, {}).setdefault(SPECIFICITY, []).append(entry)
    return pre


def specificity_scores(
    references: Sequence[Mapping[str, Any]], preds: Sequence[TokenPrediction], texts: Sequence[str | None]
) -> tuple[dict[str, float | None] | None, list[dict[str, Any]]]:
    """Mean Specificity ``{f1, em, gen_em, gen_contains}`` over one language's answered probes (None when no
    probe has a pre-edit answer), and per probe the post-edit outputs and scores. ``preds`` and ``texts``
    are the post-edit model's, on the answered probes in order."""
    answered = [ref for ref in references if "pred_ids" in ref]
    if not answered:
        return None, []
    per_probe = []
    for ref, pred, text in zip(answered, preds, texts, strict=True):
        f1, em = locality_scores(TokenPrediction(ref["pred_ids"], ref["target_ids"]), pred)
        gen_em, gen_in = gen_locality_scores(ref["generated"], text) if text is not None else (None, None)
        per_probe.append(
            {
                "question": ref["question"],
                "pred_ids": pred.pred_ids,
                "generated": text,
                "f1": f1,
                "em": em,
                "gen_em": gen_em,
                "gen_contains": gen_in,
            }
        )
    mean = {
        key: None if per_probe[0][key] is None else sum(p[key] for p in per_probe) / len(per_probe)
        for key in ("f1", "em", "gen_em", "gen_contains")
    }
    return mean, per_probe


def _untouched(view: EditedView, prompt: str, lang: str) -> bool:
    """True when no edit acts on ``prompt`` (no cached subject fires, no context is added): the edited model
    then answers exactly as the untouched one did, and the pre-edit outputs stand for the post-edit ones."""
    return not view.used_edits(prompt) and view.rewrite(prompt, lang) == prompt


def _post_outputs(
    edited: Scorer,
    cases: Sequence[tuple[str, str, str]],
    budgets: Sequence[int],
    known: Sequence[tuple[TokenPrediction, str | None] | None],
) -> tuple[list[TokenPrediction], list[str | None]]:
    """Post-edit teacher-forced predictions and generations of ``cases`` in one pass each; a case whose
    outputs are ``known`` (an untouched prompt's pre-edit outputs) is not run again."""
    todo = [i for i, k in enumerate(known) if k is None]
    preds = edited.predict([cases[i] for i in todo])
    texts = (
        edited.generate([cases[i] for i in todo], [budgets[i] for i in todo], preds) if edited.config.generation else []
    )
    run = {i: (pred, texts[n] if texts else None) for n, (i, pred) in enumerate(zip(todo, preds, strict=True))}
    outputs = [k if k is not None else run[i] for i, k in enumerate(known)]
    return [pred for pred, _ in outputs], [text for _, text in outputs]


def score_record(
    record: BenchmarkRecord,
    langs: Sequence[str],
    edited: Scorer,
    pre: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, dict[str, dict[str, float | None]]], dict[str, dict[str, Any]]]:
    """Per-language, per-metric scores (fractions), and the post-edit outputs behind them for ``langs``:
    ``{lang: {"pred_ids": {metric: teacher-forced ids}, "generated": {metric: text}}}`` (kept in the row
    so that scores can be recomputed, or answers read, without running the model again). The test cases
    and the Specificity probes of every language share one teacher-forced and one generation pass; a
    Locality question or probe that no edit acts on keeps its pre-edit outputs without running again."""
    config, tokenizer, view = edited.config, edited.tokenizer, edited.view
    keys = _cases(record, langs, METRICS)
    inputs = _case_inputs(record, keys)
    probes = {lang: [r for r in pre.get(lang, {}).get(SPECIFICITY, []) if "pred_ids" in r] for lang in langs}
    probe_refs = [(lang, r) for lang in langs for r in probes[lang]]
    cases = inputs + [(r["question"], r["reference"], lang) for lang, r in probe_refs]
    budgets = [max_new_tokens_for(tokenizer, t, lang, config.gen_extra_tokens) for _, t, lang in inputs]
    budgets += [config.probe_tokens] * len(probe_refs)
    known: list[tuple[TokenPrediction, str | None] | None] = []
    for (lang, metric), (prompt, _, _) in zip(keys, inputs, strict=True):
        ref = pre.get(lang, {})
        reusable = metric == LOCALITY and _untouched(view, prompt, lang)
        pred = TokenPrediction(ref["loc_pred_ids"], ref["loc_target_ids"]) if reusable else None
        known.append((pred, ref["loc_generated"] if config.generation else None) if pred is not None else None)
    for lang, r in probe_refs:
        reusable = _untouched(view, r["question"], lang)
        generated = r["generated"] if config.generation else None
        known.append((TokenPrediction(r["pred_ids"], r["target_ids"]), generated) if reusable else None)
    preds, texts = _post_outputs(edited, cases, budgets, known)
    scores: dict[str, dict[str, dict[str, float | None]]] = {lang: {} for lang in langs}
    outputs: dict[str, dict[str, Any]] = {lang: {"pred_ids": {}} for lang in langs}
    for (lang, metric), (_, target, _), pred, text in zip(keys, inputs, preds, texts, strict=False):
        gen_em = gen_in = None
        if metric == LOCALITY:
            ref = pre[lang]
            f1, em = locality_scores(TokenPrediction(ref["loc_pred_ids"], ref["loc_target_ids"]), pred)
            if text is not None:
                gen_em, gen_in = gen_locality_scores(ref["loc_generated"], text)
        else:
            f1, em = f1_em(pred, tokenizer)
            if text is not None:
                gen_em, gen_in = gen_exact_match(text, target), gen_contains(text, target)
        scores[lang][metric] = {"f1": f1, "em": em, "gen_em": gen_em, "gen_contains": gen_in}
        outputs[lang]["pred_ids"][metric] = pred.pred_ids
        if text is not None:
            outputs[lang].setdefault("generated", {})[metric] = text
    start = len(inputs)
    for lang in langs:
        end = start + len(probes[lang])
        mean, per_probe = specificity_scores(probes[lang], preds[start:end], texts[start:end])
        start = end
        if mean is not None:
            scores[lang][SPECIFICITY] = mean
            outputs[lang][SPECIFICITY] = per_probe
    return scores, outputs
