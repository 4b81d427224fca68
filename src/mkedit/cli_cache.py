"""``mkedit cache list|show|remove|export|merge``: manage an edit cache folder as a fact store.

Every change is saved as ``EditCache.save`` saves (new shard, then ``cache.json`` replaced atomically), so
an interrupted change leaves the previous cache intact, and a removed edit never fires again. Only a
change that must compute an edit again (removing one of several facts of a LU-LAFNs edit, merging facts
about one subject) loads the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.table import Table

from mkedit.cli_common import console, err, fail, load_quietly, method_for_cache, warn
from mkedit.cli_options import DeviceOpt, DtypeOpt, ModelOpt
from mkedit.errors import CacheError, MkeditError
from mkedit.facts import FactStore, RelationJudge, commit_fact, facts_of, find_fact, group_from_fact, plan_fact
from mkedit.methods.registry import get_method
from mkedit.models.registry import DEFAULT_MODEL
from mkedit.runtime.atomic import write_atomic
from mkedit.runtime.cache import Edit, EditCache
from mkedit.runtime.deltas import neuron_deltas

cache_app = typer.Typer(help="List, inspect, remove, export and merge the edits of an edit cache folder.")

CacheDir = Annotated[Path, typer.Argument(help="Edit cache folder")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line")]


def _open(folder: Path) -> EditCache:
    try:
        return EditCache.load(folder)
    except MkeditError as exc:
        raise fail(exc) from exc


def _fact_rows(edit: Edit) -> list[dict[str, Any]]:
    return [
        {
            "edit": edit.edit_id,
            "fact": record["id"],
            "subjects": record.get("subjects", {}),
            "questions": record.get("questions", {}),
            "answers": record.get("answers", {}),
            "created": edit.info.get("created", ""),
        }
        for record in facts_of(edit)
    ] or [{"edit": edit.edit_id, "fact": None, "subjects": edit.subjects, "answers": {}, "created": ""}]


@cache_app.command("list")
def list_command(folder: CacheDir, as_json: JsonOpt = False) -> None:
    """One line per fact: its edit, subjects per language, answers, and when the edit was made."""
    cache = _open(folder)
    rows = [row for edit in cache for row in _fact_rows(edit)]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, ensure_ascii=False))
        return
    table = Table("edit", "fact", "subjects", "answers", "created", title=f"{len(cache)} edit(s) in {folder}")
    for row in rows:
        subjects = "; ".join(f"{lang}: {s}" for lang, s in row["subjects"].items())
        answers = "; ".join(f"{lang}: {a}" for lang, a in row["answers"].items())
        table.add_row(row["edit"], row["fact"] or "-", subjects, answers, row["created"])
    console.print(table)


def _tensor_summary(cache: EditCache, edit: Edit) -> dict[str, Any]:
    """LU-LAFNs edits: neurons and ΔV norm per layer; other methods: each tensor's shape and norm."""
    if cache.method == "lu-lafns":
        deltas = neuron_deltas(edit)
        return {
            "layers": {
                str(layer): {"neurons": int(idx.numel()), "norm": round(float(val.float().norm()), 4)}
                for layer, (idx, val) in sorted(deltas.items())
            }
        }
    return {
        "tensors": {
            name: {"shape": list(t.shape), "norm": round(float(t.float().norm()), 4) if t.is_floating_point() else None}
            for name, t in sorted(edit.tensors.items())
            if isinstance(t, torch.Tensor)
        }
    }


@cache_app.command("show")
def show_command(
    folder: CacheDir,
    edit_id: Annotated[str, typer.Argument(help="An edit id, or the id of one of its facts")],
    as_json: JsonOpt = False,
) -> None:
    """One edit in full: its facts, layers with neuron counts and ΔV norms (or tensors), and its statistics."""
    cache = _open(folder)
    found = find_fact(cache, edit_id)
    if edit_id not in cache and found is None:
        raise fail(CacheError(f"no edit or fact {edit_id!r} in {folder}"))
    edit = cache.get(edit_id) if edit_id in cache else found[0]  # type: ignore[index]
    try:
        tensors = _tensor_summary(cache, edit)
    except MkeditError as exc:
        raise fail(exc) from exc
    stats = {k: v for k, v in edit.info.items() if k not in ("facts", "langs", "subjects", "questions", "answers")}
    shown = {"edit": edit.edit_id, "method": cache.method, "facts": facts_of(edit), **tensors, "info": stats}
    if as_json:
        typer.echo(json.dumps(shown, ensure_ascii=False))
        return
    console.print(f"edit {edit.edit_id} ({cache.method}), {len(shown['facts'])} fact(s)")
    for record in shown["facts"]:
        for lang in record["langs"]:
            console.print(f"  {record['id']} [{lang}] {record['questions'][lang]} -> {record['answers'][lang]}")
    table = Table("layer" if "layers" in tensors else "tensor", "neurons" if "layers" in tensors else "shape", "norm")
    for name, entry in (tensors.get("layers") or tensors["tensors"]).items():
        table.add_row(name, str(entry.get("neurons", entry.get("shape"))), str(entry["norm"]))
    console.print(table)
    console.print(json.dumps(stats, ensure_ascii=False))


@cache_app.command("remove")
def remove_command(
    folder: CacheDir,
    ids: Annotated[list[str], typer.Argument(help="Fact ids (an edit is named after its oldest fact) or edit ids")],
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Remove facts (an undo). An edit left with other facts is computed again on them, which loads the model;
    removing whole edits does not."""
    cache = _open(folder)
    try:
        whole: list[str] = []  # edits to drop as they are
        partial: list[str] = []  # facts whose edit holds others: computed again without them
        for item in ids:
            found = find_fact(cache, item)
            if found is not None and len(facts_of(found[0])) > 1:
                partial.append(item)
            elif found is not None or item in cache:
                whole.append(found[0].edit_id if found is not None else item)
            else:
                raise CacheError(f"no edit or fact {item!r} in {folder}")
        for edit_id in dict.fromkeys(whole):
            cache.remove(edit_id)
            warn(f"removed edit {edit_id}")
        if partial:
            loaded = load_quietly(model, device, dtype)
            cache.check_model(loaded.model, loaded.name)
            store = FactStore(method_for_cache(cache, loaded), cache)
            for update in store.remove(partial):
                warn(f"removed fact {', '.join(update.replaced)}; edit recomputed on {', '.join(update.kept)}")
        cache.save(folder)
    except MkeditError as exc:
        raise fail(exc) from exc
    typer.echo(f"{len(cache)} edit(s) in {folder}")


@cache_app.command("export")
def export_command(
    folder: CacheDir,
    out: Annotated[Path | None, typer.Option(help="Write here (atomically) instead of stdout")] = None,
) -> None:
    """The cache's facts as JSON lines in the edit-file format (``{id, lang: {subject, src, alt}}``): what
    ``mkedit edit --edits`` reads, so a cache can be rebuilt on another model."""
    cache = _open(folder)
    lines = []
    for edit in cache:
        for record in facts_of(edit):
            group = group_from_fact(record)
            line: dict[str, Any] = {"id": record["id"]}
            for req in group.requests:
                line[req.lang] = {"subject": req.subject, "src": req.question, "alt": req.answer}
                if req.paraphrases:
                    line[req.lang]["paraphrases"] = list(req.paraphrases)
            lines.append(json.dumps(line, ensure_ascii=False))
    text = "".join(f"{line}\n" for line in lines)
    if out is None:
        typer.echo(text, nl=False)
        return
    write_atomic(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    err.print(f"{len(lines)} fact(s) written to {out}")


@cache_app.command("merge")
def merge_command(
    into: Annotated[Path, typer.Argument(help="Edit cache folder to merge into (changed in place)")],
    other: Annotated[Path, typer.Argument(help="Edit cache folder whose facts are added")],
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Add the facts of OTHER to INTO (same model, method and settings). A fact about a subject INTO holds
    replaces INTO's fact of the same relation and stands beside the others, as in ``mkedit edit``; edits
    about subjects INTO does not hold are copied as they are, and only the others load the model."""
    target, source = _open(into), _open(other)
    try:
        if not target.fingerprint.matches(source.fingerprint):
            raise CacheError(f"{other} was made for model {source.fingerprint.name!r}, {into} for another model")
        if (source.method, source.method_config) != (target.method, target.method_config):
            raise CacheError(f"{other} and {into} hold edits of different methods or settings; they cannot mix")
        merge = get_method(target.method).facts_share_edit
        judge = RelationJudge()
        store: FactStore | None = None
        copied = recomputed = 0
        for edit in source:
            records = facts_of(edit)
            plans = [plan_fact(target, group_from_fact(r), judge, merge) for r in records]
            if not records:  # made before facts were recorded: nothing to compare, copied
                target.add(edit, replace_subjects=merge)
                copied += 1
            elif len(plans) == 1 and len(plans[0].facts) == 1:  # nothing to hold beside it: the edit as it is
                edit.edit_id = plans[0].edit_id
                _report(commit_fact(target, plans[0], edit, merge).replaced, plans[0].fact_id)
                copied += 1
            else:  # facts to join with INTO's facts about the subject: computed again
                if store is None:
                    loaded = load_quietly(model, device, dtype)
                    target.check_model(loaded.model, loaded.name)
                    store = FactStore(method_for_cache(target, loaded), target, judge)
                for record in records:
                    plan = store.plan(group_from_fact(record))
                    _report(store.commit(plan, store.compute(plan)).replaced, plan.fact_id)
                    recomputed += 1
        target.save(into)
    except MkeditError as exc:
        raise fail(exc) from exc
    err.print(f"{copied} edit(s) copied, {recomputed} fact(s) merged with {into}'s facts about their subject")
    typer.echo(f"{len(target)} edit(s) in {into}")


def _report(replaced: tuple[str, ...], fact_id: str) -> None:
    if replaced:
        warn(f"fact {fact_id} replaces {', '.join(replaced)} (the same relation of its subject)")
