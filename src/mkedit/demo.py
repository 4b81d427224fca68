"""The README's first command: edit three counterfactual facts in three languages on a real model and
print, per language, answers before and after to the edited question, a paraphrase, another question about
the same subject (which must keep its answer) and an unrelated one."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from mkedit.data import load_records
from mkedit.languages import get_language
from mkedit.methods.lu_lafns import LuLafnEditor
from mkedit.methods.lu_lafns.config import deployment_settings
from mkedit.models import load_model
from mkedit.runtime.edited_model import EditedModel
from mkedit.types import BenchmarkRecord

DEMO_FILE = "demo_edits.json"
ROWS = (
    ("edited", "reliability"),
    ("paraphrase", "generality"),
    ("other fact", "specificity"),
    ("unrelated", "locality"),
)
KEPT = ("other fact", "unrelated")
"""Rows whose answer must not change."""


def demo_records() -> list[BenchmarkRecord]:
    """The demo's edit groups, shipped with the package (with their ``specificity`` questions)."""
    with resources.as_file(resources.files("mkedit.examples") / DEMO_FILE) as path:
        return load_records(path, specificity=("field",))


def _questions(records: list[BenchmarkRecord], lang: str) -> list[tuple[str, str, str]]:
    """(record id, row kind, question) for one language."""
    rows = []
    for r in records:
        for kind, metric in ROWS:
            if metric == "specificity":
                rows += [(r.record_id, kind, probe.question) for probe in r.probes.get(lang, ())]
            elif metric in r.tests[lang]:
                rows.append((r.record_id, kind, r.tests[lang][metric].prompt))
    return rows


def run_demo(
    model_name: str,
    console: Console,
    out: Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    status: Console | None = None,
) -> None:
    """The before/after tables go to ``console``; loading, progress and notes to ``status`` (stderr)."""
    status = status or Console(stderr=True)
    records = demo_records()
    langs = records[0].group.langs
    with status.status(f"loading {model_name} (the first run converts the packaged model once, ~1-2 min)"):
        loaded = load_model(model_name, device=device, dtype=dtype)
    # As `mkedit edit` makes caches: behind the relation gate, so the subject's other facts keep their answers.
    gate = {key: value for key, value in deployment_settings()[0].items() if key == "relation_gate"}
    editor = LuLafnEditor(loaded.model, loaded.tokenizer, model_name=loaded.name, overrides=gate)
    cache = editor.new_cache()
    prompts = {lang: _questions(records, lang) for lang in langs}
    before = {
        lang: EditedModel(loaded.model, loaded.tokenizer, cache).ask([q for _, _, q in rows], max_new_tokens=12)
        for lang, rows in prompts.items()
    }
    start = time.perf_counter()
    with Progress(console=status) as progress:
        task = progress.add_task("editing", total=len(records))
        for record in records:
            progress.update(task, description=f"editing {record.record_id} ({', '.join(langs)})")
            cache.add(editor.edit(record.group))
            progress.advance(task)
    seconds = time.perf_counter() - start
    targets = {r.record_id: r for r in records}
    with editor.applied(list(cache)) as edited:
        for lang, rows in prompts.items():
            after = edited.ask([q for _, _, q in rows], max_new_tokens=12)
            table = Table(title=f"{get_language(lang).name} ({lang})", show_lines=True)
            for column in ("fact", "question", "before", "after", "new answer"):
                table.add_column(column)
            for (rid, kind, question), old, new in zip(rows, before[lang], after, strict=True):
                goal = "(unchanged)" if kind in KEPT else targets[rid].group.request(lang).answer
                held = new.answer == old.answer if kind in KEPT else goal.lower() in new.answer.lower()
                shown = (new.answer or "(empty)") + (" ✓" if held else " ✗")
                table.add_row(f"{rid}\n{kind}", question, old.answer or "(empty)", shown, goal)
            console.print(table)
    console.print(
        f"{len(records)} edits on {loaded.name} in {seconds:.1f} s "
        f"({seconds / len(records):.1f} s per {'+'.join(langs)} group); model weights unchanged."
    )
    if out is not None:
        cache.save(out)
        status.print(f'edit cache saved to {out} — try: mkedit ask --model {model_name} --cache {out} "..."')
