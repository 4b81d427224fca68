"""The README's first command: edit three counterfactual facts in three languages on a real model and
print, per language, answers before and after to the edited question, a paraphrase and an unrelated one."""

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
from mkedit.models import load_model
from mkedit.runtime.edited_model import EditedModel
from mkedit.types import BenchmarkRecord

DEMO_FILE = "demo_edits.json"
ROWS = (("edited", "reliability"), ("paraphrase", "generality"), ("unrelated", "locality"))


def demo_records() -> list[BenchmarkRecord]:
    """The demo's edit groups, shipped with the package."""
    with resources.as_file(resources.files("mkedit.examples") / DEMO_FILE) as path:
        return load_records(path)


def _questions(records: list[BenchmarkRecord], lang: str) -> list[tuple[str, str, str]]:
    """(record id, row kind, question) for one language."""
    return [
        (r.record_id, kind, r.tests[lang][metric].prompt)
        for r in records
        for kind, metric in ROWS
        if metric in r.tests[lang]
    ]


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
    editor = LuLafnEditor(loaded.model, loaded.tokenizer, model_name=loaded.name)
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
    edited = EditedModel(loaded.model, loaded.tokenizer, cache)
    targets = {r.record_id: r for r in records}
    for lang, rows in prompts.items():
        after = edited.ask([q for _, _, q in rows], max_new_tokens=12)
        table = Table(title=f"{get_language(lang).name} ({lang})", show_lines=True)
        for column in ("fact", "question", "before", "after", "new answer"):
            table.add_column(column)
        for (rid, kind, question), old, new in zip(rows, before[lang], after, strict=True):
            goal = targets[rid].group.request(lang).answer if kind != "unrelated" else "(unchanged)"
            mark = "" if kind == "unrelated" else (" ✓" if goal.lower() in new.answer.lower() else " ✗")
            table.add_row(f"{rid}\n{kind}", question, old.answer or "(empty)", (new.answer or "(empty)") + mark, goal)
        console.print(table)
    console.print(
        f"{len(records)} edits on {loaded.name} in {seconds:.1f} s "
        f"({seconds / len(records):.1f} s per {'+'.join(langs)} group); model weights unchanged."
    )
    if out is not None:
        cache.save(out)
        status.print(f'edit cache saved to {out} — try: mkedit ask --model {model_name} --cache {out} "..."')
