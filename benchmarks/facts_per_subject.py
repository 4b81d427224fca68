"""Several facts per subject: after k facts about each subject (different relations) are put in force one
after another, is every one of them still answered, and are unrelated prompts untouched?

Facts go in through :class:`mkedit.facts.FactStore`, as ``mkedit edit`` puts them: LU-LAFNs holds all the
facts about a subject in one ΔV, optimised again on their union whenever a fact arrives. The default facts
(``benchmarks/data/facts_per_subject.json``) are 8 subjects x 5 relations, counterfactual, in English and
Chinese, written for this benchmark. After the k-th fact of every subject, each fact put so far is scored
(Reliability EM: every answer token right, teacher-forced), and so are unrelated questions (Locality: the
prediction is the untouched model's).

    python benchmarks/facts_per_subject.py --model qwen2.5-0.5b --ks 1,2,3,5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mkedit.data import load_edit_groups
from mkedit.eval.metrics import teacher_forced
from mkedit.facts import FactStore
from mkedit.methods.config import parse_overrides
from mkedit.methods.registry import build_method
from mkedit.models import load_model
from mkedit.models.device import add_device_options
from mkedit.runtime.edited_model import EditedModel
from mkedit.types import EditGroup

DATA = Path(__file__).parent / "data" / "facts_per_subject.json"
UNRELATED = {
    "en": [
        ("What is the capital of Japan?", "Tokyo"),
        ("Who wrote Romeo and Juliet?", "William Shakespeare"),
        ("What is the largest planet in the Solar System?", "Jupiter"),
        ("Which river flows through Cairo?", "the Nile"),
        ("What is the chemical symbol for gold?", "Au"),
        ("Which country is Toronto in?", "Canada"),
    ],
    "zh": [
        ("日本的首都是哪里？", "东京"),
        ("《罗密欧与朱丽叶》的作者是谁？", "威廉·莎士比亚"),
        ("太阳系最大的行星是哪颗？", "木星"),
        ("哪条河流经开罗？", "尼罗河"),
        ("金的化学符号是什么？", "Au"),
        ("多伦多在哪个国家？", "加拿大"),
    ],
}


def by_subject(groups: list[EditGroup]) -> list[list[EditGroup]]:
    """Facts grouped by their first language's subject, in file order."""
    subjects: dict[str, list[EditGroup]] = defaultdict(list)
    for group in groups:
        subjects[group.requests[0].subject].append(group)
    return list(subjects.values())


def exact(preds) -> list[bool]:
    return [p.pred_ids == p.target_ids for p in preds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b")
    add_device_options(parser)
    parser.add_argument("--data", type=Path, default=DATA, help="Edit file; facts of one subject share its subject")
    parser.add_argument("--langs", default="en,zh")
    parser.add_argument("--subjects", type=int, default=None, help="Use N subjects")
    parser.add_argument("--skip-subjects", type=int, default=0, help="Leave out the first K subjects")
    parser.add_argument("--ks", default="1,2,3,5", help="Score after this many facts per subject")
    parser.add_argument("--method", default="lu-lafns")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value (as mkedit --set)")
    parser.add_argument("--json", action="store_true", help="One JSON object per k instead of a table")
    args = parser.parse_args()
    langs = args.langs.split(",")
    ks = sorted(int(k) for k in args.ks.split(","))
    subjects = by_subject(load_edit_groups(args.data, langs))[args.skip_subjects :]
    subjects = subjects[: args.subjects]
    subjects = [facts for facts in subjects if len(facts) >= ks[-1]]
    if not subjects:
        sys.exit(f"no subject of {args.data} has {ks[-1]} facts")
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    method = build_method(
        args.method, loaded.model, loaded.tokenizer, loaded.name, overrides=parse_overrides(args.overrides)
    )
    store = FactStore(method, method.new_cache())
    unrelated = [(q, a, lang) for lang in langs for q, a in UNRELATED.get(lang, [])]
    base = teacher_forced(EditedModel(loaded.model, loaded.tokenizer, []).logits, loaded.tokenizer, unrelated)
    rows, replaced = [], 0
    for k in range(1, ks[-1] + 1):
        seconds = []
        for facts in subjects:
            start = time.perf_counter()
            replaced += len(store.put(facts[k - 1]).replaced)
            seconds.append(time.perf_counter() - start)
            print(f"k={k}: {facts[k - 1].group_id} in {seconds[-1]:.1f} s", file=sys.stderr)
        if k not in ks:
            continue
        with method.applied(list(store.cache)) as view:
            cases = [(r.question, r.answer, r.lang) for facts in subjects for g in facts[:k] for r in g.requests]
            right = exact(teacher_forced(view.logits, loaded.tokenizer, cases))
            after = teacher_forced(view.logits, loaded.tokenizer, unrelated)
        for (question, answer, lang), ok in zip(cases, right, strict=True):
            if not ok:
                print(f"k={k}: not right: [{lang}] {question} -> {answer}", file=sys.stderr)
        for edit in store.cache:
            info = edit.info
            print(f"k={k}: edit {edit.edit_id}: {info['steps']} steps, NLL {info['final_nll']:.3f}", file=sys.stderr)
        per_lang = {
            lang: 100 * statistics.mean(ok for ok, case in zip(right, cases, strict=True) if case[2] == lang)
            for lang in langs
        }
        facts_right, n = 0, len(langs)
        for start in range(0, len(right), n):
            facts_right += all(right[start : start + n])
        rows.append(
            {
                "k": k,
                "subjects": len(subjects),
                "facts": len(right) // n,
                "reliability_em": per_lang,
                "facts_right_all_langs": 100 * facts_right / (len(right) // n),
                "locality": 100 * statistics.mean(a.pred_ids == b.pred_ids for a, b in zip(after, base, strict=True)),
                "edits_in_cache": len(store.cache),
                "replaced": replaced,
                "seconds_per_put": statistics.mean(seconds),  # the k-th fact's put: an edit of k facts
            }
        )
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    title = f"Facts per subject: {args.method} on {args.model}, {len(subjects)} subjects, {'+'.join(langs)}"
    table = Table(title=title)
    for column in ("k", "facts", *(f"Rel EM {lang}" for lang in langs), "facts right (all langs)", "Locality"):
        table.add_column(column, justify="right")
    table.add_column("edits / replaced", justify="right")
    table.add_column("s / k-th put", justify="right")
    for row in rows:
        table.add_row(
            str(row["k"]),
            str(row["facts"]),
            *(f"{row['reliability_em'][lang]:.1f}" for lang in langs),
            f"{row['facts_right_all_langs']:.1f}",
            f"{row['locality']:.1f}",
            f"{row['edits_in_cache']} / {row['replaced']}",
            f"{row['seconds_per_put']:.1f}",
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
