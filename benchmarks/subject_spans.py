"""How well subjects are placed in questions that do not contain them verbatim: a hand-labelled sample.

Reads ``tests/data/subject_spans.jsonl`` (MzsRE (record, language) pairs whose subject field is not
verbatim in the question, each with the aligned subjects of all 12 languages and a gold span read by a
person, or ``null`` when the question does not name the subject) and prints, per language and overall:
exact span matches, wrong spans, misses, and false placements on the ``null`` pairs.

    python benchmarks/subject_spans.py [--file tests/data/subject_spans.jsonl] [--json] [--show-errors]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mkedit.runtime.subject import DEFAULT_MIN_SCORE, place_subject

DEFAULT_FILE = Path(__file__).resolve().parents[1] / "tests" / "data" / "subject_spans.jsonl"


def outcome(row: dict, min_score: float) -> tuple[str, str | None]:
    """``exact`` / ``wrong`` / ``missed`` for labelled spans, ``refused`` / ``false`` for absent subjects."""
    others = [s for lang, s in row["aligned_subjects"].items() if lang != row["lang"]]
    span = place_subject(row["question"], [row["subject"], *others], min_score=min_score)
    gold = row["gold"]
    if gold is None:
        return ("refused", None) if span is None else ("false", span.surface)
    if span is None:
        return "missed", None
    return ("exact" if (span.start, span.end) == (gold["start"], gold["end"]) else "wrong"), span.surface


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--min-score", type=float, default=DEFAULT_MIN_SCORE)
    parser.add_argument("--json", action="store_true", help="One JSON object per language, then the total")
    parser.add_argument("--show-errors", action="store_true", help="List wrong and missed spans on stderr")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.file.read_text(encoding="utf-8").splitlines() if line.strip()]
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        result, surface = outcome(row, args.min_score)
        counts[row["lang"]][result] += 1
        counts["all"][result] += 1
        if args.show_errors and result in ("wrong", "missed", "false"):
            gold = row["gold"]["surface"] if row["gold"] else None
            print(f"{row['lang']} {row['record']}: {result} {surface!r} (gold {gold!r})", file=sys.stderr)
    names = ("exact", "wrong", "missed", "false", "refused")
    if args.json:
        for lang, c in counts.items():
            labelled = c["exact"] + c["wrong"] + c["missed"]
            print(json.dumps({"lang": lang, **{k: c[k] for k in names}, "accuracy": c["exact"] / max(labelled, 1)}))
        return
    print("| lang | labelled | exact | wrong | missed | accuracy | absent: refused / falsely placed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for lang in sorted(counts, key=lambda k: (k == "all", k)):
        c = counts[lang]
        labelled = c["exact"] + c["wrong"] + c["missed"]
        print(
            f"| {lang} | {labelled} | {c['exact']} | {c['wrong']} | {c['missed']} | "
            f"{100 * c['exact'] / max(labelled, 1):.1f}% | {c['refused']} / {c['false']} |"
        )


if __name__ == "__main__":
    main()
