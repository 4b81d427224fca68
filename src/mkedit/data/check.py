"""Can each record's subject be placed in its questions? Counted per language, misses listed.

Editing needs the subject's last token in the edit prompt (``src``); a language whose subject cannot be
placed is not edited (the evaluation still scores it, unedited). Placement uses the record's aligned
subject set, as editing does: own subject verbatim, another language's subject verbatim, approximate.
The generality (``rephrase``) and portability questions are checked too, because evaluations that read
the subject position use them; the check only reads them, it never feeds them to editing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.table import Table

from mkedit.data.records import GENERALITY, PORTABILITY, normalize_langs
from mkedit.runtime.subject import DEFAULT_MIN_SCORE, place_subject
from mkedit.types import BenchmarkRecord

# Field names as they appear in the data files.
CHECKED_FIELDS: tuple[str, ...] = ("src", "rephrase", "portability")


@dataclass
class FieldCounts:
    """How the subject was placed in one field over all records of one language (the categories of
    :data:`~mkedit.runtime.subject.PLACEMENT_KINDS`, as the evaluation's coverage reports them)."""

    verbatim: int = 0
    other_language: int = 0
    approximate: int = 0
    not_placed: int = 0

    @property
    def total(self) -> int:
        return self.verbatim + self.other_language + self.approximate + self.not_placed


@dataclass
class LanguageCheck:
    """Per-language totals: records holding the language, and counts for each checked field."""

    lang: str
    records: int = 0
    fields: dict[str, FieldCounts] = field(default_factory=lambda: {f: FieldCounts() for f in CHECKED_FIELDS})


@dataclass(frozen=True)
class SubjectFinding:
    """One non-verbatim case: where, and what was matched (``surface`` is None when nothing was)."""

    record_id: str
    lang: str
    field: str
    subject: str
    text: str
    surface: str | None = None
    score: float | None = None


@dataclass
class DataCheckReport:
    """The outcome of :func:`check_records`; ``unplaced`` lists every record/field with no match."""

    languages: dict[str, LanguageCheck]
    unplaced: list[SubjectFinding] = field(default_factory=list)
    approximate: list[SubjectFinding] = field(default_factory=list)
    min_score: float = DEFAULT_MIN_SCORE

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (for ``mkedit data check --json``)."""
        return {
            "min_score": self.min_score,
            "languages": {
                code: {
                    "records": check.records,
                    "fields": {name: asdict(counts) for name, counts in check.fields.items()},
                }
                for code, check in self.languages.items()
            },
            "unplaced": [asdict(finding) for finding in self.unplaced],
            "approximate": [asdict(finding) for finding in self.approximate],
        }


def _field_texts(record: BenchmarkRecord, lang: str) -> dict[str, str]:
    """The checked fields that this record has in ``lang``, keyed by their data-file name."""
    tests = record.tests.get(lang, {})
    texts = {"src": record.group.request(lang).question}
    if GENERALITY in tests:
        texts["rephrase"] = tests[GENERALITY].prompt
    if PORTABILITY in tests:
        texts["portability"] = tests[PORTABILITY].prompt
    return texts


def _record_langs(records: Sequence[BenchmarkRecord], langs: Sequence[str] | None) -> list[str]:
    wanted = normalize_langs(langs)
    if wanted is not None:
        return wanted
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(record.group.langs))
    return list(seen)


def check_records(
    records: Iterable[BenchmarkRecord],
    langs: Sequence[str] | None = None,
    *,
    min_score: float = DEFAULT_MIN_SCORE,
) -> DataCheckReport:
    """Count own verbatim / other language's / approximate / unplaced subjects per language and field."""
    records = list(records)
    codes = _record_langs(records, langs)
    report = DataCheckReport({code: LanguageCheck(code) for code in codes}, min_score=min_score)
    for record in records:
        for code in codes:
            if code not in record.group.langs:
                continue
            check = report.languages[code]
            check.records += 1
            subject = record.group.request(code).subject
            subjects = [subject, *record.group.other_subjects(code)]
            for name, text in _field_texts(record, code).items():
                span = place_subject(text, subjects, min_score=min_score)
                counts = check.fields[name]
                if span is None:
                    counts.not_placed += 1
                    report.unplaced.append(SubjectFinding(record.record_id, code, name, subject, text))
                elif span.kind == "verbatim":
                    counts.verbatim += 1
                elif span.kind == "other_language":
                    counts.other_language += 1
                else:
                    counts.approximate += 1
                    report.approximate.append(
                        SubjectFinding(record.record_id, code, name, subject, text, span.surface, span.score)
                    )
    return report


def render_report(report: DataCheckReport) -> Table:
    """One row per language: record count, then "own / other language / approximate / not placed" per field."""
    absent = any(c.fields[f].total == 0 for c in report.languages.values() for f in CHECKED_FIELDS)
    table = Table(
        title=(
            "Subject placed: own verbatim / another language's verbatim / approximate "
            f"(score >= {report.min_score:g}) / not placed"
        ),
        caption="'-': field absent from the file" if absent else None,
    )
    table.add_column("lang")
    table.add_column("records", justify="right")
    for name in CHECKED_FIELDS:
        table.add_column(name, justify="right")
    for code, check in report.languages.items():
        cells = [code, str(check.records)]
        for name in CHECKED_FIELDS:
            counts = check.fields[name]
            none = f"[red]{counts.not_placed}[/red]" if counts.not_placed else "0"
            placed = f"{counts.verbatim} / {counts.other_language} / {counts.approximate}"
            cells.append(f"{placed} / {none}" if counts.total else "-")
        table.add_row(*cells)
    return table
