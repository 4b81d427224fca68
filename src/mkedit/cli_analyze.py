"""``mkedit analyze ...``: studies of a model's neurons (the paper's §3.2 / Fig. 1)."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.table import Table

from mkedit import __version__
from mkedit.analysis import STUDY_BETA, LafnStudy, load_corpora, run_lafn_study
from mkedit.analysis.corpora import CORPUS_KINDS, PARAREL_PER_RELATION, Corpus
from mkedit.analysis.outputs import (
    ANALYSIS_PIP,
    csv_rows,
    matplotlib_available,
    save_counts,
    write_csv,
    write_plot,
)
from mkedit.arch import get_adapter
from mkedit.cli_common import console, err, fail, load_quietly, progress_bar, warn
from mkedit.cli_options import DeviceOpt, DtypeOpt, ModelOpt
from mkedit.errors import MkeditError
from mkedit.models.registry import DEFAULT_MODEL
from mkedit.runtime.atomic import write_json_atomic

analyze_app = typer.Typer(help="Study a model's neurons (the paper's §3.2 analysis).", no_args_is_help=True)

CSV_FILE, PLOT_FILE, STUDY_FILE, COUNTS_FILE = "lafns.csv", "lafns.png", "study.json", "counts.safetensors"


@analyze_app.callback()
def _analyze() -> None:
    """Study a model's neurons (the paper's §3.2 analysis)."""


class LayerSpecError(MkeditError, ValueError):
    """A ``--layers`` value that is not a list of layer numbers or ranges, or names a layer the model lacks."""


def parse_layers(text: str | None) -> list[int] | None:
    """``"0,5,-1"`` or ``"10-15,23"`` -> layer numbers (negative = from the end); ``None``/``all`` -> all."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    layers: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            first, sep, last = part[1:].partition("-")  # part[0] may be a minus sign
            if sep:
                layers.extend(range(int(part[0] + first), int(last) + 1))
            else:
                layers.append(int(part))
    except ValueError as exc:
        raise LayerSpecError(f"--layers {text!r}: give layer numbers or ranges, e.g. 0,5,-1 or 10-15") from exc
    if not layers:
        raise LayerSpecError(f"--layers {text!r} names no layer")
    return layers


@analyze_app.command("lafns")
def lafns_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for lafns.csv, lafns.png, study.json, counts")],
    model: ModelOpt = DEFAULT_MODEL,
    corpus: Annotated[
        list[str] | None,
        typer.Option(
            "--corpus",
            help=f"LANG:PATH or LANG:KIND:PATH (KIND: {', '.join(CORPUS_KINDS)}; detected when left out), one per "
            "language, at least two: a text file (a sentence per line), an MzsRE train file or folder (questions), "
            "a PARAREL folder (English)",
        ),
    ] = None,
    beta: Annotated[
        float,
        typer.Option("--beta", min=0.0, max=1.0, help="Eq. 5 threshold (the paper's Fig. 1: 0.8 Qwen2, 0.9 Llama)"),
    ] = STUDY_BETA,
    layers: Annotated[
        str | None, typer.Option("--layers", help="Layers to count, e.g. 0,5,-1 or 10-15 (default: all)")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Sentences per language (a seeded sample, aligned by line)")
    ] = None,
    per_relation: Annotated[
        int, typer.Option("--per-relation", min=1, help="PARAREL: sentences sampled per relation (the paper: 3000)")
    ] = PARAREL_PER_RELATION,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampling")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sentences per forward")] = 16,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per layer on stdout")] = False,
) -> None:
    """Per layer, each language's factual neurons and the shared ones (Eq. 4-6 over whole corpora, Fig. 1).

    Counts every language's corpus as one (as the paper's Fig. 1 does), selects with --beta per language and
    intersects. Writes OUT/lafns.csv, OUT/lafns.png (needs matplotlib), OUT/study.json (settings, corpus
    sizes and sha256s) and OUT/counts.safetensors (the raw counts, to re-select with another beta). stdout
    gets the per-layer table (or JSON lines with --json); progress goes to stderr.
    """
    started = time.perf_counter()
    settings = {
        "model": model,
        "beta": beta,
        "layers": layers or "all",
        "limit": limit,
        "per_relation": per_relation,
        "seed": seed,
        "batch_size": batch_size,
        "device": device,
        "dtype": dtype,
    }
    try:
        if beta >= 1.0:  # Eq. 5 keeps count / max > beta: none at all from 1 on
            raise MkeditError(f"--beta {beta:g} selects no neuron: give a value in [0, 1)")
        chosen_layers = parse_layers(layers)
        corpora = load_corpora(corpus or [], limit, seed, per_relation)  # bad input fails before the model loads
        loaded = load_quietly(model, device, dtype)
        adapter = get_adapter(loaded.model)
        try:
            for layer in chosen_layers or []:
                adapter.resolve_layer(layer)
        except ValueError as exc:
            raise LayerSpecError(f"--layers {layers}: {exc}") from exc
        with progress_bar() as bar:
            tasks = {c.lang: bar.add_task(f"{c.lang} sentences", total=len(c.sentences)) for c in corpora}
            study = run_lafn_study(
                loaded.model,
                loaded.tokenizer,
                corpora,
                beta,
                chosen_layers,
                batch_size,
                progress=lambda lang, done, total: bar.update(tasks[lang], completed=done),
            )
    except MkeditError as exc:
        raise fail(exc) from exc
    settings["seconds"] = round(time.perf_counter() - started, 1)
    try:
        written = _write_outputs(study, corpora, out, loaded, settings)
    except OSError as exc:  # --out not writable
        raise fail(MkeditError(f"cannot write the study to {out}: {exc}")) from exc
    _print_rows(study, as_json)
    err.print("wrote " + ", ".join(str(p) for p in written), highlight=False)


def _write_outputs(study: LafnStudy, corpora: list[Corpus], out: Path, loaded, settings: dict) -> list[Path]:
    param = next(loaded.model.parameters())
    written = [write_csv(study, out / CSV_FILE), save_counts(study, out / COUNTS_FILE)]
    sizes = {c.lang: len(c.sentences) for c in corpora}
    if matplotlib_available():
        written.append(write_plot(study, out / PLOT_FILE, loaded.name, sizes))
    else:
        warn(f"matplotlib is not installed, so {out / PLOT_FILE} was not drawn: {ANALYSIS_PIP}")
    summary = {
        "study": "lafns",
        "date": dt.date.today().isoformat(),
        "mkedit": __version__,
        "torch": torch.__version__,
        **settings,
        "model_name": loaded.name,
        "model_type": loaded.model.config.model_type,
        "run_device": str(param.device),
        "run_dtype": str(param.dtype).removeprefix("torch."),
        "d_ffn": study.d_ffn,
        "layers_counted": list(study.layers),
        "corpora": [
            {
                "lang": c.lang,
                "kind": c.kind,
                "source": str(c.source),
                "source_sha256": c.source_sha256,
                "available": c.available,
                "sentences": len(c.sentences),
                "sentences_sha256": c.sentences_sha256,
                "tokens": study.tokens.get(c.lang),
            }
            for c in corpora
        ],
        "peak_layers": study.peak_layers(),
        "rows": csv_rows(study),
    }
    write_json_atomic(out / STUDY_FILE, summary)
    written.insert(2, out / STUDY_FILE)
    return written


def _print_rows(study: LafnStudy, as_json: bool) -> None:
    rows = csv_rows(study)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table("layer", *study.langs, "shared", *(f"shared/{lang}" for lang in study.langs), "shared/FFN", "chance")
    for row in rows:
        table.add_row(
            str(row["layer"]),
            *(str(row[lang]) for lang in study.langs),
            str(row["shared"]),
            *(f"{row[f'shared_of_{lang}']:.1%}" for lang in study.langs),
            f"{row['shared_of_ffn']:.1%}",
            f"{row['shared_by_chance']:.0f}",
        )
    console.print(table)
    peaks = ", ".join(f"{layer} ({int(study.shared[layer].numel())})" for layer in study.peak_layers())
    console.print(
        f"β={study.beta:g}, {study.d_ffn} neurons per layer; most shared neurons in layers {peaks}", highlight=False
    )
