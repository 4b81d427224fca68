"""LU-LAFNs ablations in the paper's layouts (Sec. 5.2-5.3), multilingual setting, one model, same records.

* ``layers``: which FFN layers are updated, single layers and layer sets (Tables 4 and 8);
* ``beta``: the threshold β of Eq. 5, with the mean number of LAFNs per edit on each updated layer and their
  proportion of the FFN width (Tables 5 and 9);
* ``locate``: how neurons are located (Table 6): ``paraphrases`` (the method: LAFNs located on the question
  and its paraphrases), ``no-pgs`` (LAFNs on the question alone), ``all`` (every neuron of the layers),
  ``random`` (as many random neurons as LAFNs; located with the paraphrases when ``--paraphrases`` is given).

Everything not swept is the model's preset (``--set KEY=VALUE`` changes it for every variant). Every variant
is an ordinary, resumable ``mkedit eval`` run in ``OUT/<subcommand>/<variant>``; records advance ``--step``
at a time in all of them, so a stopped run covers the same records in each, and the same command resumes
it. Each variant also appends its edits' ``info`` (LAFNs per layer, steps, NLL) to ``edits.jsonl`` beside
its rows, which the β table counts. Tables go to stdout (``--json``: the same as JSON), progress to stderr.

    python benchmarks/ablations.py layers --data ../shared/data/bizsre/bizsre_test.json --limit 30 \\
        --no-generation --out runs/ablations --layer-sets "16;17;18;23;16,17,18;16,17,18,23"
    python benchmarks/ablations.py beta --data ... --betas 0,0.1,0.2,0.3
    python benchmarks/ablations.py locate --data ... --strategies no-pgs,paraphrases,all,random --paraphrases P.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mkedit.data import load_records
from mkedit.data.probes import SOURCES, parse_sources
from mkedit.errors import MkeditError
from mkedit.eval.report import Summary, read_summary, summary_markdown
from mkedit.eval.runner import RECORDS_FILE, EvalConfig, read_rows
from mkedit.eval.variants import Variant, run_in_step
from mkedit.facts import edit_id_for
from mkedit.methods.config import ConfigError, parse_overrides
from mkedit.methods.lu_lafns import LocateResult, LuLafnConfig, LuLafnEditor, preset_for
from mkedit.models import load_model
from mkedit.models.device import add_device_options
from mkedit.paraphrase import attach_to_records
from mkedit.runtime.cache import Edit
from mkedit.types import BenchmarkRecord, EditGroup

EDITS_FILE = "edits.jsonl"
SWEPT = {"layers": "layers", "beta": "beta", "locate": "locate_strategy"}
"""subcommand -> the LuLafnConfig field it sweeps (not settable with --set)"""
STRATEGIES: dict[str, tuple[str, str]] = {
    "paraphrases": ("lafns", "LU-LAFNs (paraphrases)"),
    "no-pgs": ("lafns", "No-PGs"),
    "all": ("all", "All"),
    "random": ("random", "Random"),
}
"""Table 6 strategy -> (``locate_strategy``, row label)"""


class AblationError(MkeditError, ValueError):
    """Variants that cannot run as asked (the message says what to change)."""


@dataclass(frozen=True)
class Spec:
    """One variant before the model is loaded: directory name, row label, config changes, and whether it
    locates with the ``--paraphrases`` file."""

    name: str
    label: str
    changes: Mapping[str, Any]
    paraphrases: bool = False


@dataclass
class Result:
    """One variant's summary and, from its ``edits.jsonl``, the LAFN statistics."""

    spec: Spec
    summary: Summary
    lafns: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- edit infos


class RecordingEditor(LuLafnEditor):
    """LU-LAFNs that appends what each edit located (``Edit.info``) to a JSONL file, one line per edit computed:
    ``{"edit_id", "facts", "layers", "d_ffn", "neurons_per_layer", "steps", "final_nll"}``. An edit that fails
    is recorded too, with ``error``; ``neurons_per_layer`` is then ``{}`` when no neuron was located, else
    None (unknown). A resumed run computes an interrupted record again and appends it again: the last line
    of a fact counts."""

    def __init__(self, model: Any, tokenizer: Any, config: LuLafnConfig, model_name: str, log_path: Path) -> None:
        super().__init__(model, tokenizer, config, model_name)
        self.log_path = log_path
        self._located_nothing = False

    def locate(self, group: EditGroup) -> LocateResult:
        try:
            return super().locate(group)
        except MkeditError:
            self._located_nothing = True  # locate_lafns raises only when no layer keeps a neuron
            raise

    def edit_facts(self, groups: Sequence[EditGroup], edit_id: str, on_step: Any = None) -> Edit:
        self._located_nothing = False
        entry: dict[str, Any] = {
            "edit_id": edit_id,
            "facts": [edit_id_for(group) for group in groups],
            "layers": list(self.config.layers),
            "d_ffn": self.adapter.d_ffn,
        }
        try:
            edit = super().edit_facts(groups, edit_id, on_step)
        except MkeditError as exc:
            entry["neurons_per_layer"] = {} if self._located_nothing else None
            entry["error"] = f"{type(exc).__name__}: {exc}"
            append_jsonl(self.log_path, entry)
            raise
        entry |= {key: edit.info[key] for key in ("neurons_per_layer", "steps", "final_nll") if key in edit.info}
        append_jsonl(self.log_path, entry)
        return edit


def append_jsonl(path: Path, obj: Mapping[str, Any]) -> None:
    """Append one line and fsync it; a last line cut short by an interruption is ended first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell():
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def read_edit_log(path: Path) -> dict[str, dict[str, Any]]:
    """Fact id -> its last entry in ``path``. A line cut short by an interrupted append is skipped: the runner
    had not written that record's row yet, so the record was (or will be) edited and recorded again."""
    by_fact: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return by_fact
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        for fact in entry.get("facts", []):
            by_fact[fact] = entry
    return by_fact


def lafn_stats(entries: Mapping[str, Mapping[str, Any]], fact_ids: Sequence[str]) -> dict[str, Any]:
    """The Table 5 numbers over the edits of ``fact_ids``: per updated layer the mean number of neurons an edit
    updates (a layer where none was kept counts 0, and so does every layer of an edit that located none) and
    its proportion of the FFN width ``d_ffn``; ``num``/``proportion``: their mean over the layers (the paper's
    "Num (Proportion)"). ``edits``: edits counted; ``located_none``: of which located no neuron. Records
    without an entry (subject not placed in any language) and failures of unknown size are not counted."""
    used = [entries[f] for f in dict.fromkeys(fact_ids) if f in entries]
    used = [e for e in used if e.get("neurons_per_layer") is not None]
    stats: dict[str, Any] = {"edits": len(used), "located_none": sum(1 for e in used if not e["neurons_per_layer"])}
    if not used:
        return stats | {"d_ffn": None, "per_layer": {}, "num": None, "proportion": None}
    d_ffn = int(used[0]["d_ffn"])
    layers = sorted({int(layer) for e in used for layer in e["layers"]})
    per_layer = {
        layer: sum(int(e["neurons_per_layer"].get(str(layer), 0)) for e in used) / len(used) for layer in layers
    }
    num = sum(per_layer.values()) / len(per_layer)
    return stats | {
        "d_ffn": d_ffn,
        "per_layer": {str(layer): {"num": n, "proportion": n / d_ffn} for layer, n in per_layer.items()},
        "num": num,
        "proportion": num / d_ffn,
    }


# --------------------------------------------------------------------------- tables


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _num_prop(entry: Mapping[str, Any] | None) -> str:
    if not entry or entry.get("num") is None:
        return "—"
    return f"{entry['num']:.0f} ({100 * entry['proportion']:.1f}%)"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    align = ["---"] * left + ["---:"] * (len(headers) - left)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def layers_table(results: Sequence[Result]) -> str:
    """Table 4/8 layout: single layers and layer sets side by side, each with avg."""
    single = [r for r in results if len(r.spec.changes["layers"]) == 1]
    multiple = [r for r in results if len(r.spec.changes["layers"]) > 1]
    rows = []
    for i in range(max(len(single), len(multiple))):
        cells = []
        for side in (single, multiple):
            cells += [side[i].spec.label, _fmt(side[i].summary["avg"])] if i < len(side) else ["", ""]
        rows.append(cells)
    return _table(["Single layer", "avg", "Multiple layers", "avg"], rows)


def beta_table(results: Sequence[Result]) -> str:
    """Table 5/9 layout: per β the LAFNs per updated layer (mean per edit, % of the FFN width), their mean over
    the layers (the paper's "Num (Proportion)"), the edits counted, and avg."""
    layers = sorted({int(layer) for r in results for layer in r.lafns.get("per_layer", {})})
    headers = ["β", *(f"layer {layer}" for layer in layers), "Num (Proportion)", "edits", "avg"]
    rows = []
    for r in results:
        per_layer = r.lafns.get("per_layer", {})
        edits = f"{r.lafns.get('edits', 0)} / {r.summary['n_records']}"
        if r.lafns.get("located_none"):
            edits += f" ({r.lafns['located_none']} located none)"
        rows.append(
            [
                r.spec.label,
                *(_num_prop(per_layer.get(str(layer))) for layer in layers),
                _num_prop(r.lafns),
                edits,
                _fmt(r.summary["avg"]),
            ]
        )
    return _table(headers, rows)


def reference_of(results: Sequence[Result]) -> Result | None:
    """Table 6's reference row: the method (``paraphrases``) when run, else the first row."""
    for r in results:
        if r.spec.name == "paraphrases":
            return r
    return results[0] if results else None


def locate_table(results: Sequence[Result]) -> str:
    """Table 6 layout: avg per strategy, its difference from the reference row, and the neurons updated per
    layer (mean per edit)."""
    ref = reference_of(results)
    rows = []
    for r in results:
        avg, base = r.summary["avg"], ref.summary["avg"] if ref else None
        delta = "" if r is ref or avg is None or base is None else f"{avg - base:+.2f}"
        rows.append([r.spec.label, _fmt(avg), delta, _num_prop(r.lafns)])
    label = ref.spec.label if ref else "—"
    return _table(["Locating strategy", "avg", f"Δ vs {label}", "neurons per layer (proportion)"], rows)


TABLES = {"layers": layers_table, "beta": beta_table, "locate": locate_table}
TITLES = {
    "layers": "Updated layers (Table 4/8 layout): avg of F1 and EM",
    "beta": "Threshold β (Table 5/9 layout): LAFNs per updated layer and avg",
    "locate": "Locating strategies (Table 6 layout): avg of F1 and EM",
}


def render(command: str, results: Sequence[Result]) -> str:
    """The subcommand's table, then every variant's full scores (Table 2 layout)."""
    if not results:
        return "No runs yet.\n"
    n = sorted({r.summary["n_records"] for r in results})
    records = (
        f"{n[0]} record{'s' * (n[0] != 1)}" if len(n) == 1 else f"{n[0]}-{n[-1]} records (resume the shorter runs)"
    )
    model = results[0].summary["model"]
    parts = [f"## {TITLES[command]}", "", f"*{model}, multilingual setting, {records}.*", "", TABLES[command](results)]
    prefix = {"layers": "layers ", "beta": "β = ", "locate": ""}[command]
    labelled = [{**r.summary, "method": f"lu-lafns ({prefix}{r.spec.label})"} for r in results]
    parts += ["", "## Scores of every variant", "", summary_markdown(labelled)]
    return "\n".join(parts)


def as_json(command: str, results: Sequence[Result]) -> dict[str, Any]:
    ref = reference_of(results) if command == "locate" else None
    rows = []
    for r in results:
        row = {
            "variant": r.spec.name,
            "label": r.spec.label,
            "changes": dict(r.spec.changes),
            "paraphrases": r.spec.paraphrases,
            "n_records": r.summary["n_records"],
            "avg": r.summary["avg"],
            "scores": r.summary["scores"],
            "lafns": r.lafns,
        }
        if ref is not None and r.summary["avg"] is not None and ref.summary["avg"] is not None:
            row["delta_avg"] = r.summary["avg"] - ref.summary["avg"]
        rows.append(row)
    return {"table": command, "model": results[0].summary["model"] if results else None, "rows": rows}


# --------------------------------------------------------------------------- variants


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from exc


def parse_layer_sets(text: str) -> list[tuple[int, ...]]:
    """``"16;17;16,17,18"`` -> ``[(16,), (17,), (16, 17, 18)]``."""
    sets = []
    for part in text.split(";"):
        if part.strip():
            try:
                sets.append(tuple(int(x) for x in part.split(",") if x.strip()))
            except ValueError as exc:
                raise ValueError(f"--layer-sets {text!r}: {exc}") from exc
    if not sets or any(not s for s in sets):
        raise ValueError(f"--layer-sets {text!r}: give sets of layer numbers, e.g. '16;17;16,17,18'")
    return sets


def default_layer_sets(model: str) -> str:
    """The preset's layers one by one and the whole preset (the paper picks Table 4's layers from where LAFNs
    lie; the presets scale its choice). Give the model's last layer explicitly to see that it does nothing."""
    layers = preset_for(model).config.layers
    sets = [(layer,) for layer in layers] + [layers]
    return ";".join(",".join(map(str, s)) for s in dict.fromkeys(sets))


def with_paraphrases(records: list[BenchmarkRecord], path: Path) -> tuple[list[BenchmarkRecord], dict[str, str]]:
    """``records`` with the paraphrase file attached, and the EvalConfig fields that record which file."""
    attached = attach_to_records(records, path)
    pairs = sum(len(r.group.requests) for r in records)
    print(
        f"paraphrases: {path} (sha256 {attached.sha256[:12]}): {attached.attached} of {pairs} (record, language) "
        f"pair(s) got paraphrases; {len(attached.missing)} have no entry and locate with the question alone",
        file=sys.stderr,
    )
    if records and not attached.attached:
        raise AblationError(f"{path} has paraphrases for none of these records: the row would be No-PGs")
    return attached.items, {"paraphrases": str(path), "paraphrases_sha256": attached.sha256}


def specs_for(args: argparse.Namespace) -> list[Spec]:
    """The subcommand's variants, checked (ValueError with what to change)."""
    if args.command == "layers":
        sets = parse_layer_sets(args.layer_sets or default_layer_sets(args.model))
        return [Spec("-".join(map(str, s)), "-".join(map(str, s)), {"layers": s}) for s in dict.fromkeys(sets)]
    if args.command == "beta":
        betas = list(dict.fromkeys(_floats(args.betas, "--betas")))
        if not betas or any(not 0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"--betas {args.betas!r}: give values in [0, 1)")
        return [Spec(f"{b:g}", f"{b:g}", {"beta": b}) for b in betas]
    strategies = list(dict.fromkeys(x.strip() for x in args.strategies.split(",") if x.strip()))
    unknown = [s for s in strategies if s not in STRATEGIES]
    if not strategies or unknown:
        raise ValueError(f"--strategies: unknown {unknown or args.strategies!r}; choose from {', '.join(STRATEGIES)}")
    if "paraphrases" in strategies or args.paraphrases:
        if args.paraphrases is None:
            raise ValueError("the paraphrases strategy needs --paraphrases FILE (the paraphrase JSONL)")
        if not Path(args.paraphrases).is_file():
            raise ValueError(f"--paraphrases {args.paraphrases}: no such file")
    specs = []
    for s in strategies:
        strategy, label = STRATEGIES[s]
        if s == "random" and args.paraphrases is not None:
            # As many as the paraphrases row's LAFNs; its own directory, beside a run without the file.
            specs.append(
                Spec("random-paraphrases", f"{label} (count with paraphrases)", {"locate_strategy": strategy}, True)
            )
        else:
            specs.append(Spec(s, label, {"locate_strategy": strategy}, s == "paraphrases"))
    return specs


def base_config(model_name: str, overrides: list[str], swept: str) -> LuLafnConfig:
    parsed = parse_overrides(overrides)
    if swept in parsed:
        raise ConfigError(f"--set {swept}=... : {swept} is what this subcommand sweeps")
    return preset_for(model_name).config.with_overrides(parsed)


def run_dir(args: argparse.Namespace, spec: Spec) -> Path:
    return Path(args.out) / args.command / spec.name


def run(args: argparse.Namespace, specs: Sequence[Spec]) -> list[Result]:
    """Run (or resume) every variant, ``--step`` records per pass; the results after the last pass."""
    langs = tuple(x.strip() for x in args.langs.split(",") if x.strip())
    specificity = parse_sources(args.specificity)
    base = base_config(args.model, args.overrides, SWEPT[args.command])  # checked before the model loads
    records = load_records(args.data, langs, args.limit, args.offset, specificity)
    if "no-pgs" in {s.name for s in specs} and any(r.paraphrases for rec in records for r in rec.group.requests):
        raise AblationError(f"{args.data} carries paraphrases in its records, so No-PGs would locate with them")
    paraphrased, extra = None, {}
    if any(s.paraphrases for s in specs):
        paraphrased, extra = with_paraphrases(records, Path(args.paraphrases))
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    base = base_config(loaded.name, args.overrides, SWEPT[args.command])
    variants = []
    for spec in specs:
        out = run_dir(args, spec)
        editor = RecordingEditor(
            loaded.model, loaded.tokenizer, base.replace(**spec.changes), loaded.name, out / EDITS_FILE
        )
        config = EvalConfig(
            model=args.model,
            data=args.data,
            langs=langs,
            offset=args.offset,
            generation=not args.no_generation,
            specificity=specificity,
            **(extra if spec.paraphrases else {}),
        )
        variants.append(Variant(spec.name, editor, config, out, paraphrased if spec.paraphrases else None))

    def announce(variant: Variant, end: int) -> None:
        first = args.offset
        print(
            f"[{args.command} {variant.name}] records {first}-{first + end - 1} -> {variant.out_dir}", file=sys.stderr
        )

    def on_record(variant: Variant, done: int, todo: int, record_id: str) -> None:
        print(f"[{args.command} {variant.name}] {record_id} done ({done}/{todo} in this pass)", file=sys.stderr)

    summaries = run_in_step(
        loaded.model, loaded.tokenizer, loaded.name, records, variants, args.step, announce, on_record
    )
    ids = [r.record_id for r in records]
    return [
        Result(spec, summaries[spec.name], lafn_stats(read_edit_log(run_dir(args, spec) / EDITS_FILE), ids))
        for spec in specs
    ]


def report(args: argparse.Namespace, specs: Sequence[Spec]) -> list[Result]:
    """The results of the runs already in ``--out`` (a variant without a summary yet is left out)."""
    results = []
    for spec in specs:
        out = run_dir(args, spec)
        if not (out / "summary.json").is_file():
            print(f"[{args.command} {spec.name}] no summary in {out} yet", file=sys.stderr)
            continue
        ids = [row["record_id"] for row in read_rows(out / RECORDS_FILE, repair=False)]
        results.append(Result(spec, read_summary(out), lafn_stats(read_edit_log(out / EDITS_FILE), ids)))
    return results


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="qwen2.5-0.5b")
    add_device_options(common)
    common.add_argument("--data", help="Benchmark file (Bi-ZsRE: ../shared/data/bizsre/bizsre_test.json)")
    common.add_argument("--langs", default="en,zh")
    common.add_argument("--offset", type=int, default=0)
    common.add_argument("--limit", type=int, default=30, help="Records from --offset on (default: the first 30)")
    common.add_argument("--step", type=int, default=1, help="Records every variant advances per pass (0 = all)")
    common.add_argument("--out", type=Path, default=Path("runs/ablations"), help="Runs go to OUT/<subcommand>/")
    common.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for every variant")
    common.add_argument("--no-generation", action="store_true", help="Teacher-forced scores only")
    common.add_argument(
        "--specificity", default=",".join(SOURCES), help="Specificity probe sources (field,dataset,templates or none)"
    )
    common.add_argument("--report-only", action="store_true", help="Print the table from the runs in --out")
    common.add_argument("--json", action="store_true", help="Print the table's data as JSON instead")

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    layers = sub.add_parser("layers", parents=[common], help="Updated layers (Tables 4 and 8)")
    layers.add_argument(
        "--layer-sets",
        help="';'-separated sets of ','-separated layers (default: the preset's layers one by one and the whole "
        "preset; qwen2.5-0.5b: '16;17;18;16,17,18')",
    )
    beta = sub.add_parser("beta", parents=[common], help="Threshold β and LAFNs per layer (Tables 5 and 9)")
    beta.add_argument("--betas", default="0,0.1,0.2,0.3", help="Comma-separated values in [0, 1)")
    locate = sub.add_parser("locate", parents=[common], help="Locating strategies (Table 6)")
    locate.add_argument("--strategies", default="no-pgs,paraphrases,all,random", help=", ".join(STRATEGIES))
    locate.add_argument("--paraphrases", help="Paraphrase JSONL for the paraphrases (and random) strategies")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    try:
        specs = specs_for(args)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.data and not args.report_only:
        parser.error("--data is required (unless --report-only)")
    try:
        results = report(args, specs) if args.report_only else run(args, specs)
    except MkeditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    if args.json:
        print(json.dumps(as_json(args.command, results), ensure_ascii=False, indent=2))
    else:
        print(render(args.command, results))


if __name__ == "__main__":
    main()
