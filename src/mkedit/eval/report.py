"""Run summaries (``summary.json``), the paper's tables (Table 2 layout) and heatmaps (Figure 3 style).

``summary.json`` is what other tools read, so its shape is fixed (scores in percent, 0-100)::

    {"method": str, "model": str, "setting": str, "n_records": int, "langs": [str, ...],
     "scores": {LANG: {METRIC: {"f1": x, "em": x, "gen_em": x, "gen_contains": x}}},
     "avg": x, "seconds_per_edit": x}

with METRIC in reliability, generality, locality, portability and specificity. A score is ``null`` when no
record had that number (e.g. generation was not run, or no record had a Specificity probe); ``avg`` is the
paper's "avg": the mean of every teacher-forced F1 and EM number over the paper's four metrics and all test
languages (generation and Specificity excluded). Specificity averages each record's mean over its probes;
``probes`` says how many records had probes and how many probes they had.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mkedit.errors import DataFormatError
from mkedit.eval.metrics import aggregate
from mkedit.languages import normalize_code

logger = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("reliability", "generality", "locality", "portability")
"""The paper's four metrics: the ones its "avg" and Figure 3 average."""
SPECIFICITY = "specificity"
"""Questions about the edited subject asking another relation; reported beside the paper's four, never in avg."""
ALL_METRICS: tuple[str, ...] = (*METRICS, SPECIFICITY)
TF_KEYS: tuple[str, ...] = ("f1", "em")
GEN_KEYS: tuple[str, ...] = ("gen_em", "gen_contains")
SCORE_KEYS: tuple[str, ...] = TF_KEYS + GEN_KEYS
SUMMARY_KEYS: tuple[str, ...] = (
    "method",
    "model",
    "setting",
    "n_records",
    "langs",
    "scores",
    "avg",
    "seconds_per_edit",
)
HEATMAP_MIN_LANGS = 3

Summary = dict[str, Any]
"""A summary in the ``summary.json`` shape above."""


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summarize(
    per_record_rows: Sequence[Mapping[str, Any]],
    method: str,
    model: str,
    setting: str,
    langs: Sequence[str],
    seconds_per_edit: float | None,
) -> Summary:
    """Average per-record scores (fractions 0..1) into a summary (percent).

    A row is ``{"record_id": ..., "scores": {LANG: {METRIC: {"f1": x, "em": x, "gen_em": x,
    "gen_contains": x}}}}``; a metric or score missing from a row (or ``None``) is left out of that
    average, so each number is the mean over the records that have it. Languages not in ``langs`` are
    ignored.
    """
    codes = [normalize_code(lang) for lang in langs]
    values: dict[str, dict[str, dict[str, list[float]]]] = {
        lang: {m: {k: [] for k in SCORE_KEYS} for m in ALL_METRICS} for lang in codes
    }
    for row in per_record_rows:
        rid = row.get("record_id", "?")
        for lang_key, metrics in row.get("scores", {}).items():
            lang = normalize_code(lang_key)
            if lang not in values:
                continue
            for metric, scores in metrics.items():
                if metric not in ALL_METRICS:
                    raise ValueError(f"record {rid}: unknown metric {metric!r} (expected one of {ALL_METRICS})")
                for key, value in scores.items():
                    if key not in SCORE_KEYS:
                        raise ValueError(f"record {rid}: unknown score {key!r} (expected one of {SCORE_KEYS})")
                    if value is None:
                        continue
                    if not 0.0 <= float(value) <= 1.0:
                        raise ValueError(
                            f"record {rid}: {lang}/{metric}/{key} = {value} is outside 0..1 "
                            "(per-record scores are fractions; the summary turns them into percent)"
                        )
                    values[lang][metric][key].append(float(value))
    scores = {lang: {m: {k: aggregate(values[lang][m][k]) for k in SCORE_KEYS} for m in ALL_METRICS} for lang in codes}
    # Metric coverage, so that avg never silently averages over fewer metrics or records than it claims.
    scored = {f"{lang}/{m}": len(values[lang][m]["em"]) for lang in codes for m in METRICS}
    missing = [key for key, n in scored.items() if n == 0]
    partial = {key: n for key, n in scored.items() if 0 < n < len(per_record_rows)}
    for lang in codes:
        if all(scores[lang][m][k] is None for m in METRICS for k in TF_KEYS):
            logger.warning("no teacher-forced scores for language %s in %d records", lang, len(per_record_rows))
    return {
        "method": method,
        "model": model,
        "setting": setting,
        "n_records": len(per_record_rows),
        "langs": codes,
        "scores": scores,
        "avg": summary_avg(scores),
        "seconds_per_edit": seconds_per_edit,
        "avg_leaves_out": missing,
        "scored_records": partial,
    }


def summary_avg(scores: Mapping[str, Mapping[str, Mapping[str, float | None]]]) -> float | None:
    """The paper's "avg": mean of all teacher-forced F1 and EM numbers (languages × metrics × 2)."""
    return _mean([scores[lang][m][k] for lang in scores for m in METRICS for k in TF_KEYS])


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- reading summaries


def _is_number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def validate_summary(obj: Any, source: str) -> Summary:
    """Check ``obj`` has the summary shape; raises DataFormatError naming ``source`` and the field."""

    def bad(msg: str) -> DataFormatError:
        return DataFormatError(f"{source}: {msg}")

    if not isinstance(obj, dict):
        raise bad("expected a JSON object")
    missing = [k for k in SUMMARY_KEYS if k not in obj]
    if missing:
        raise bad(f"missing field(s) {missing}")
    if not isinstance(obj["langs"], list) or not all(isinstance(x, str) for x in obj["langs"]):
        raise bad("'langs' must be a list of language codes")
    if not isinstance(obj["scores"], dict):
        raise bad("'scores' must be an object")
    for lang in obj["langs"]:
        per_lang = obj["scores"].get(lang)
        if not isinstance(per_lang, dict):
            raise bad(f"'scores' has no entry for language {lang!r}")
        for metric in METRICS:
            entry = per_lang.get(metric)
            if not isinstance(entry, dict):
                raise bad(f"scores.{lang}.{metric} is missing")
            for key in SCORE_KEYS:
                if key not in entry or not _is_number_or_none(entry[key]):
                    raise bad(f"scores.{lang}.{metric}.{key} must be a number or null")
    for key in ("avg", "seconds_per_edit"):
        if not _is_number_or_none(obj[key]):
            raise bad(f"'{key}' must be a number or null")
    return obj


def read_summary(run_dir: str | os.PathLike[str]) -> Summary:
    """``run_dir/summary.json``, validated."""
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    if not path.is_file():
        raise DataFormatError(f"{run_dir}: no summary.json (is this an mkedit run directory?)")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{run_dir}: summary.json is not valid JSON ({exc})") from exc
    return validate_summary(obj, str(path))


def merge_reports(dirs: Sequence[str | os.PathLike[str]]) -> tuple[str, list[Summary]]:
    """Read ``DIR/summary.json`` of several runs; returns the merged markdown and the summaries."""
    if not dirs:
        raise ValueError("merge_reports needs at least one run directory")
    summaries = [read_summary(d) for d in dirs]
    return summary_markdown(summaries), summaries


# --------------------------------------------------------------------------- tables


def union_langs(summaries: Sequence[Summary]) -> list[str]:
    """All test languages of ``summaries``, in order of first appearance."""
    seen: dict[str, None] = {}
    for s in summaries:
        seen.update(dict.fromkeys(s["langs"]))
    return list(seen)


def _score(summary: Summary, lang: str, metric: str, key: str) -> float | None:
    return summary["scores"].get(lang, {}).get(metric, {}).get(key)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _pair(a: float | None, b: float | None) -> str:
    return "–" if a is None and b is None else f"{_fmt(a)} / {_fmt(b)}"


def _has_specificity(summaries: Sequence[Summary]) -> bool:
    return any(_score(s, lang, SPECIFICITY, "em") is not None for s in summaries for lang in s["langs"])


def table_rows(summaries: Sequence[Summary], generation: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and cells in the paper's Table 2 layout: one row per run, "F1 / EM" per language × metric,
    plus a Specificity column per language when a run has it (outside "avg", which stays the paper's).

    With ``generation`` the cells are "gen EM / contains" and there is no "avg" column (the paper's avg
    is teacher-forced only).
    """
    langs = union_langs(summaries)
    keys = GEN_KEYS if generation else TF_KEYS
    metrics = ALL_METRICS if _has_specificity(summaries) else METRICS
    headers = ["Model", "Method"] + [f"{lang}: {m.capitalize()}" for lang in langs for m in metrics]
    if not generation:
        headers.append("avg")
    rows = []
    for s in summaries:
        cells = [s["model"], s["method"]]
        cells += [_pair(*(_score(s, lang, m, k) for k in keys)) for lang in langs for m in metrics]
        if not generation:
            cells.append(_fmt(s["avg"]))
        rows.append(cells)
    return headers, rows


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---"] * 2 + ["---:"] * (len(headers) - 2)
    return "\n".join([line(headers), "| " + " | ".join(align) + " |", *(line(r) for r in rows)])


def _has_generation(summaries: Sequence[Summary]) -> bool:
    return any(
        _score(s, lang, m, k) is not None for s in summaries for lang in s["langs"] for m in METRICS for k in GEN_KEYS
    )


def coverage_note(summary: Summary) -> str:
    """A visible note when avg leaves a metric out ("–" in the table) or a metric covers fewer records."""
    notes = []
    if summary.get("avg_leaves_out"):
        notes.append(f"avg leaves out {', '.join(summary['avg_leaves_out'])} (no scores: shown as –)")
    if probes := summary.get("probes"):
        counts = ", ".join(f"{lang} {p['probes']} probes in {p['records']} records" for lang, p in probes.items())
        notes.append(f"Specificity (not in avg): {counts}")
    if summary.get("scored_records"):
        counts = ", ".join(f"{key} {n}" for key, n in summary["scored_records"].items())
        notes.append(f"scored on fewer than all {summary['n_records']} records: {counts}")
    return f"*{summary['method']} ({summary['setting']}): {'; '.join(notes)}.*" if notes else ""


def summary_markdown(summaries: Summary | Sequence[Summary]) -> str:
    """Markdown: the teacher-forced Table 2, the generation-based numbers, and the runs' details."""
    if isinstance(summaries, Mapping):
        summaries = [summaries]
    parts = ["### Teacher-forced F1 / EM (%)", "", _markdown_table(*table_rows(summaries))]
    if _has_generation(summaries):
        parts += [
            "",
            "### Generation-based exact match / contains (%) — greedy, not comparable with the paper's numbers",
            "",
            _markdown_table(*table_rows(summaries, generation=True)),
        ]
    for s in summaries:
        if note := coverage_note(s):
            parts += ["", note]
    runs = [
        [s["model"], s["method"], s["setting"], str(s["n_records"]), _fmt(s["seconds_per_edit"])] for s in summaries
    ]
    parts += [
        "",
        "### Runs",
        "",
        _markdown_table(["Model", "Method", "Setting", "Records", "s / edit"], runs),
    ]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- heatmap (Figure 3)


def language_em(summary: Summary, lang: str) -> float | None:
    """Average EM of the four metrics in one language: one cell of Figure 3."""
    return _mean([_score(summary, lang, m, "em") for m in METRICS])


def _row_labels(summaries: Sequence[Summary]) -> list[str]:
    """Method names, or method@model when the runs are of several models; made unique."""
    several_models = len({s["model"] for s in summaries}) > 1
    labels = [f"{s['method']}@{s['model']}" if several_models else s["method"] for s in summaries]
    out = []
    for i, label in enumerate(labels):
        if labels.count(label) > 1:
            label = f"{label} [{summaries[i]['setting']}]"
        out.append(label)
    return [f"{label} #{i + 1}" if out.count(label) > 1 else label for i, label in enumerate(out)]


def write_heatmap(summaries: Sequence[Summary], path: str | os.PathLike[str]) -> Path:
    """Figure 3 as a PNG: rows = runs, columns = languages + "mean", cells = average EM of the 4 metrics.

    Values below 40 share one light colour, deeper blue is better, the "mean" column is boxed in orange.
    Drawn on an Agg canvas without pyplot, so no global backend is switched. Needs 3+ languages.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    langs = union_langs(summaries)
    if len(langs) < HEATMAP_MIN_LANGS:
        raise ValueError(f"a heatmap needs {HEATMAP_MIN_LANGS}+ languages, these runs have {langs}")
    grid = []
    for s in summaries:
        cells = [language_em(s, lang) for lang in langs]
        grid.append([*cells, _mean(cells)])
    data = [[math.nan if v is None else v for v in row] for row in grid]

    cmap = colormaps["Blues"].with_extremes(under="#eef2f7", bad="#ffffff")
    n_rows, n_cols = len(data), len(langs) + 1
    fig = Figure(figsize=(1.5 + 0.62 * n_cols, 0.9 + 0.42 * n_rows))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(data, cmap=cmap, vmin=40.0, vmax=100.0, aspect="auto")
    ax.set_xticks(range(n_cols), [*langs, "mean"])
    ax.set_yticks(range(n_rows), _row_labels(summaries))
    ax.tick_params(length=0)
    ax.set_xlabel("average EM (%) of Reliability, Generality, Locality and Portability", fontsize=8)
    ax.xaxis.tick_top()
    for r, row in enumerate(grid):
        for c, value in enumerate(row):
            colour = "white" if value is not None and value >= 80 else "black"
            ax.text(c, r, _fmt(value), ha="center", va="center", fontsize=8, color=colour)
    ax.add_patch(
        Rectangle((n_cols - 1.5, -0.5), 1, n_rows, fill=False, edgecolor="#ff8c00", linewidth=2.5, clip_on=False)
    )
    for side in ax.spines.values():
        side.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=150)
    logger.info("wrote heatmap %s", path)
    return path
