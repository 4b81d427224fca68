"""``mkedit paraphrase``: paraphrases of every record's edit question, per language, for locating neurons.

Everything that can be checked before a model loads or an endpoint is called is checked first (data,
languages, the output file, the source's options and key); each finished (record, language) is appended to
``--out`` at once, so a rerun resumes and a failure loses nothing already written.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mkedit.cli_common import console, err, fail, load_quietly, progress_bar, warn
from mkedit.cli_interrupt import resumable
from mkedit.cli_options import DeviceOpt, DtypeOpt, LangsOpt, ModelOpt
from mkedit.data import load_records
from mkedit.errors import MkeditError
from mkedit.paraphrase import (
    Attached,
    JsonlSource,
    LangSummary,
    LocalSource,
    OpenAISource,
    ParaphraseSource,
    ParaphraseStore,
    Sampling,
    attach_to_groups,
    attach_to_records,
    generate,
    pending,
    requests_for,
    summarize,
)
from mkedit.runtime.subject import DEFAULT_MIN_SCORE
from mkedit.types import BenchmarkRecord, EditGroup

PARAPHRASE_MODEL = "qwen2.5-1.5b"
"""The packaged model that gave the most usable paraphrases (see the README's paraphrase section)."""
SOURCES = ("local", "openai", "jsonl")


class SourceOptionsError(MkeditError, ValueError):
    """Options that do not fit the chosen source."""


def _split(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


def _source_kind(source: str | None, api_base: str | None, api_model: str | None, from_file: Path | None) -> str:
    """The source asked for, or the one the options imply (``--from``: jsonl; ``--api-*``: openai; else local)."""
    kind = source or ("jsonl" if from_file else "openai" if api_base or api_model else "local")
    if kind not in SOURCES:
        raise SourceOptionsError(f"unknown --source {kind!r}; choose one of {', '.join(SOURCES)}")
    if kind == "jsonl" and from_file is None:
        raise SourceOptionsError("--source jsonl reads --from FILE; give the file")
    if kind == "openai" and not api_model:
        raise SourceOptionsError("--source openai needs --api-model (the model name the endpoint serves)")
    if from_file is not None and kind != "jsonl":
        raise SourceOptionsError(f"--from is for --source jsonl, not {kind}")
    if (api_base or api_model) and kind != "openai":
        raise SourceOptionsError(f"--api-base/--api-model are for --source openai, not {kind}")
    return kind


def _print_summary(rows: list[LangSummary], as_json: bool) -> None:
    if as_json:
        for row in rows:
            typer.echo(json.dumps(asdict(row), ensure_ascii=False))
        return
    table = Table("lang", "records", "kept mean", "kept min", "records with none kept", "raw lines mean", "missing")
    for r in rows:
        mean = "-" if r.kept_mean is None else f"{r.kept_mean:.1f}"
        raw = "-" if r.raw_mean is None else f"{r.raw_mean:.1f}"
        low = "-" if r.kept_min is None else str(r.kept_min)
        table.add_row(r.lang, str(r.records), mean, low, str(r.none_kept), raw, str(r.missing))
    console.print(table)


def _saved(kwargs: dict) -> str:
    out = kwargs.get("out")
    if out is None or not Path(out).is_file():
        return f"nothing written yet to {out}"
    return f"{len(ParaphraseStore(out))} (record, language) entries saved in {out}"


@resumable(_saved)
def paraphrase_command(
    data: Annotated[Path, typer.Option("--data", help="Benchmark or edit file (MzsRE, Bi-ZsRE, mkedit edit file)")],
    out: Annotated[Path, typer.Option("--out", help="Paraphrase file (JSONL; an existing one is resumed)")],
    langs: LangsOpt = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Paraphrases asked for and kept at most per question")] = 30,
    source: Annotated[
        str | None, typer.Option("--source", help="local, openai or jsonl (default: implied by the options)")
    ] = None,
    model: ModelOpt = PARAPHRASE_MODEL,
    api_base: Annotated[str | None, typer.Option("--api-base", help="OpenAI-compatible base URL, e.g. .../v1")] = None,
    api_model: Annotated[str | None, typer.Option("--api-model", help="Model name at the endpoint")] = None,
    api_key_env: Annotated[
        str, typer.Option("--api-key-env", help="Environment variable holding the endpoint's API key")
    ] = "OPENAI_API_KEY",
    from_file: Annotated[
        Path | None, typer.Option("--from", help="JSONL of paraphrases written by another tool (--source jsonl)")
    ] = None,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip the first K records of the file")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", min=0, help="Paraphrase at most N records")] = None,
    temperature: Annotated[float, typer.Option("--temperature", min=0, help="Sampling temperature (0: greedy)")] = 0.7,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (each record and language gets its own)")] = 0,
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", min=1, help="Generation budget (default: from n and length)")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Local model: questions per batch")] = 4,
    min_score: Annotated[
        float,
        typer.Option(
            "--min-score", min=0, max=100, help="Subject match threshold (100: as written, up to case and accents)"
        ),
    ] = DEFAULT_MIN_SCORE,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per language on stdout")] = False,
) -> None:
    """Generate paraphrases of each record's edit question with the paper's instruction (App. A.3), per language.

    Only paraphrases that name the subject (its own form, the form the question uses, or another language's)
    are kept, without repeats or the question itself, at most N; the dataset's rephrase and portability
    fields are never used. Entries are appended to OUT as each (record, language) finishes, so running the
    same command again resumes. Give OUT to ``mkedit edit``/``mkedit eval`` as ``--paraphrases``.
    Progress goes to stderr; stdout gets a table per language (or JSON lines with --json).
    """
    try:
        kind = _source_kind(source, api_base, api_model, from_file)
        records = load_records(data, _split(langs), limit, offset)
        requests = requests_for(records, n)
        store = ParaphraseStore(out)
        todo = pending(requests, store)
        if len(todo) < len(requests):
            err.print(f"{len(requests) - len(todo)} of {len(requests)} (record, language) pair(s) already in {out}")
        if todo:
            sampling = Sampling(temperature=temperature, seed=seed, max_new_tokens=max_new_tokens)
            paraphraser: ParaphraseSource
            if kind == "jsonl":
                assert from_file is not None  # _source_kind requires it
                paraphraser = JsonlSource(from_file)
            elif kind == "openai":
                assert api_model is not None  # _source_kind requires it
                paraphraser = OpenAISource(api_base, api_model, api_key_env, sampling)
            else:
                paraphraser = LocalSource(load_quietly(model, device, dtype), sampling, batch_size)
            with progress_bar() as bar:
                task = bar.add_task(f"paraphrasing ({paraphraser.name})", total=len(todo))
                result = generate(
                    todo, paraphraser, store, lambda done, total: bar.update(task, completed=done), min_score
                )
            if result.not_covered:
                shown = ", ".join(f"{rid} [{lang}]" for rid, lang in result.not_covered[:10])
                more = " ..." if len(result.not_covered) > 10 else ""
                warn(f"{len(result.not_covered)} (record, language) pair(s) not in {from_file}: {shown}{more}")
            err.print(f"wrote {result.written} entr{'y' if result.written == 1 else 'ies'} to {out}", highlight=False)
    except MkeditError as exc:
        raise fail(exc) from exc
    _print_summary(summarize(requests, store), as_json)


def with_paraphrases(items: list[BenchmarkRecord] | list[EditGroup], path: Path) -> Attached:
    """``items`` with the paraphrase file's lines attached (``--paraphrases`` of edit and eval); says on stderr
    which file (and its sha256) and how many (record, language) pairs it covered."""
    if items and isinstance(items[0], BenchmarkRecord):
        attached: Attached = attach_to_records(items, path)  # type: ignore[arg-type]
    else:
        attached = attach_to_groups(items, path)  # type: ignore[arg-type]
    pairs = sum(len(item.group.requests if isinstance(item, BenchmarkRecord) else item.requests) for item in items)
    err.print(
        f"paraphrases: {path} (sha256 {attached.sha256[:12]}): {attached.attached} of {pairs} (record, language) "
        f"pair(s) got paraphrases; {len(attached.missing)} have no entry and locate with the question alone",
        highlight=False,
        soft_wrap=True,
    )
    return attached
