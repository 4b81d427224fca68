"""Do edits answer chat requests? Raw prompts against the model's chat template, with ``chat_form`` off and on.

Each record's group is edited alone (LU-LAFNs, the model's preset), once with ``chat_form`` off (the paper's
training sequences) and once on (also the question rendered as a chat user turn). The edited question
(Reliability) and its rephrase (Generality) are then asked greedily in each language, as a raw prompt (the
first line of the generation, as ``mkedit ask``) and through the chat template (the assistant's turn, as
``mkedit serve``), and a case counts when the answer holds the new answer (``gen_contains``). Teacher-forced
EM on the raw prompts shows what chat-form training costs the paper's metrics.

    python benchmarks/chat_form.py --data ../shared/data/mzsre/mzsre_test.json --langs en,zh \
        --offset 300 --limit 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict

import torch
from rich.console import Console
from rich.table import Table

from mkedit.data import load_records
from mkedit.data.records import GENERALITY, RELIABILITY
from mkedit.errors import MkeditError
from mkedit.eval.metrics import gen_contains, teacher_forced
from mkedit.methods.common.batch import chat_prompt
from mkedit.methods.lu_lafns import LuLafnEditor, preset_for
from mkedit.models import load_model
from mkedit.models.device import add_model_and_data_options

METRICS = (RELIABILITY, GENERALITY)


@torch.no_grad()
def generate(view, tokenizer, prompts: list[str], chat: bool, max_new_tokens: int) -> list[str]:
    """Greedy continuations (chat prompts already hold the template's special tokens)."""
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=not chat)
    out = view.generate(
        batch["input_ids"],
        batch["attention_mask"],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_data_options(parser)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--json", action="store_true", help="One JSON object per setting and language")
    args = parser.parse_args()
    langs = args.langs.split(",")
    records = load_records(args.data, langs, args.limit, args.offset)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    tokenizer = loaded.tokenizer
    if not tokenizer.chat_template:
        sys.exit(f"{args.model} has no chat template: nothing to compare")
    results: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for chat_form in (False, True):
        setting = "chat_form on" if chat_form else "chat_form off (paper)"
        config = preset_for(loaded.name).config.replace(chat_form=chat_form)
        editor = LuLafnEditor(loaded.model, tokenizer, config, loaded.name)
        for n, record in enumerate(records, 1):
            try:
                edits = [editor.edit(record.group)]
            except MkeditError as exc:  # scored anyway, with nothing in force
                print(f"{record.record_id}: not edited: {exc}", file=sys.stderr)
                edits = []
            with editor.applied(edits) as view:
                for lang in langs:
                    cases = [record.tests[lang][m] for m in METRICS if m in record.tests[lang]]
                    names = [m for m in METRICS if m in record.tests[lang]]
                    raw = generate(view, tokenizer, [c.prompt for c in cases], False, args.max_new_tokens)
                    chat_prompts = [chat_prompt(tokenizer, c.prompt) for c in cases]
                    chat = generate(view, tokenizer, chat_prompts, True, args.max_new_tokens)
                    forced = teacher_forced(view.logits, tokenizer, [(c.prompt, c.target, lang) for c in cases])
                    for name, case, r, c, f in zip(names, cases, raw, chat, forced, strict=True):
                        scores = results[(setting, lang)]
                        scores[f"raw {name}"].append(gen_contains(r, case.target))
                        scores[f"chat {name}"].append(gen_contains(c.strip(), case.target))
                        scores[f"EM {name}"].append(float(f.pred_ids == f.target_ids))
            print(f"{setting}: {n}/{len(records)} {record.record_id}", file=sys.stderr)
    columns = [f"{kind} {m}" for kind in ("raw", "chat", "EM") for m in METRICS]
    rows = [
        {"setting": setting, "lang": lang, "records": len(records)}
        | {c: 100 * statistics.mean(scores[c]) for c in columns if scores[c]}
        for (setting, lang), scores in results.items()
    ]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table(title=f"Edits asked raw and in chat form: {args.model}, {len(records)} records ({args.data.name})")
    table.add_column("setting")
    table.add_column("lang")
    for c in columns:
        table.add_column(c.replace("raw", "raw gen").replace("chat", "chat gen") + " %", justify="right")
    for row in rows:
        table.add_row(row["setting"], row["lang"], *(f"{row.get(c, float('nan')):.1f}" for c in columns))
    Console(width=180).print(table)


if __name__ == "__main__":
    main()
