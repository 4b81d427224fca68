"""The study's files: ``lafns.csv`` (one row per layer), ``lafns.png`` (Fig. 1 style) and the raw counts.

Every file is written atomically. The plot needs matplotlib (``pip install 'mkedit[analysis]'``); it is drawn
on an Agg canvas without pyplot, so no global backend is switched.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mkedit.analysis.lafn_study import LafnStudy
from mkedit.runtime.atomic import write_atomic

log = logging.getLogger("mkedit.analysis")

ANALYSIS_PIP = "pip install 'mkedit[analysis]'  (or: pip install 'matplotlib>=3.8')"


def csv_columns(langs: Sequence[str]) -> list[str]:
    """``layer, d_ffn, <lang>..., shared, shared_of_<lang>..., shared_of_ffn, shared_by_chance``."""
    return [
        "layer",
        "d_ffn",
        *langs,
        "shared",
        *(f"shared_of_{lang}" for lang in langs),
        "shared_of_ffn",
        "shared_by_chance",
    ]


def csv_rows(study: LafnStudy) -> list[dict[str, int | float]]:
    """The CSV's rows as dicts (shares as fractions, 4 decimals; chance = independent sets' expected overlap)."""
    rows = []
    for row in study.rows():
        share = row.shared_share
        rows.append(
            {
                "layer": row.layer,
                "d_ffn": row.d_ffn,
                **row.per_language,
                "shared": row.shared,
                **{f"shared_of_{lang}": round(share[lang], 4) for lang in study.langs},
                "shared_of_ffn": round(row.shared_of_ffn, 4),
                "shared_by_chance": round(row.chance, 1),
            }
        )
    return rows


def write_csv(study: LafnStudy, path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=csv_columns(study.langs), lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(study))
    write_atomic(path, lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))
    return path


def save_counts(study: LafnStudy, path: Path) -> Path:
    """Eq. 4 counts as safetensors, ``"<lang>/<layer>"`` -> int64 ``[d_ffn]``: re-select with another beta."""
    tensors = {
        f"{lang}/{layer}": c.contiguous() for lang, per_layer in study.counts.items() for layer, c in per_layer.items()
    }
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"langs": ",".join(study.langs)}))
    return path


def load_counts(path: Path) -> dict[str, dict[int, torch.Tensor]]:
    """What :func:`save_counts` wrote, ``lang -> layer -> [d_ffn]``, languages in their saved order."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        langs = (handle.metadata() or {}).get("langs", "").split(",")
    tensors = load_file(str(path))
    counts: dict[str, dict[int, torch.Tensor]] = {lang: {} for lang in langs if lang}
    for key, tensor in tensors.items():
        lang, layer = key.rsplit("/", 1)
        counts.setdefault(lang, {})[int(layer)] = tensor
    return {lang: dict(sorted(per_layer.items())) for lang, per_layer in counts.items()}


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_plot(study: LafnStudy, path: Path, model_name: str, sizes: dict[str, int] | None = None) -> Path:
    """Fig. 1 style: per layer, a line for each language's factual neurons and one for the shared (LAFNs),
    labelled ``<model>-<lang>`` / ``<model>-LAFNs`` as in the paper; the dotted line is the overlap two
    independent sets of those sizes would have by chance."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = study.rows()
    x = [row.layer for row in rows]
    fig = Figure(figsize=(7.0, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    for i, lang in enumerate(study.langs):
        y = [row.per_language[lang] for row in rows]
        ax.plot(
            x, y, marker="o", markersize=3, linewidth=1.4, color=colours[i % len(colours)], label=f"{model_name}-{lang}"
        )
    ax.plot(
        x,
        [row.shared for row in rows],
        marker="s",
        markersize=3.5,
        linewidth=2.0,
        color="#d62728",
        label=f"{model_name}-LAFNs",
    )
    ax.plot(x, [row.chance for row in rows], linestyle=":", linewidth=1.2, color="#2ca02c", label="shared by chance")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"neurons (of {study.d_ffn})")
    ax.set_xticks(x if len(x) <= 32 else x[:: max(1, len(x) // 16)])
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3, linewidth=0.5)
    corpus = ", ".join(f"{lang} {sizes[lang]:,}" for lang in study.langs) if sizes else ""
    ax.set_title(
        f"{model_name}: factual neurons per layer (β={study.beta:g}{'; ' + corpus + ' sentences' if corpus else ''})",
        fontsize=9,
    )
    ax.legend(fontsize=7, frameon=False, ncol=2)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    log.info("wrote plot %s", path)
    return path
