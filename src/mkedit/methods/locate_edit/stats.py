"""Second moments ``C = E[k kᵀ]`` of W_out's input keys, per model, layer and language, cached on disk.

ROME, MEMIT and PMET weigh an update by how a layer's keys are spread over ordinary text; the M- variants
estimate that per language from a corpus in the language (paper App. A). Computing C takes one pass of
the model over the corpus, so it is done once per (model fingerprint, layer, language, corpus texts,
sample count) and kept under ``<cache root>/stats``. Sums accumulate in float64 (each batch's ``KᵀK``
in float32) and are saved every few batches, so an interrupted computation resumes where it stopped;
the finished C is stored in float32.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from mkedit.arch import FFNAdapter
from mkedit.errors import MkeditError
from mkedit.languages import ALIASES, get_language
from mkedit.methods.locate_edit.hooks import truncated_after
from mkedit.models.fingerprint import ModelFingerprint
from mkedit.models.loader import cache_root
from mkedit.runtime.atomic import write_atomic

log = logging.getLogger(__name__)

CORPUS_ENV = "MKEDIT_STATS_CORPUS"
FORMAT_VERSION = 1
MAX_TOKENS = 128  # longer texts are truncated (reference: the model's context, on Wikipedia)


class StatsCorpusError(MkeditError, ValueError):
    """No usable text for the second-moment statistics of a language."""


def _hint() -> str:
    return (
        "pass --set stats_corpus=PATH (a folder of per-language text files named with the language code, "
        "e.g. MzsRE's train/ folder with zsre_mend_train_{lang}_10000.txt, or a file path containing {lang}) "
        f"or set ${CORPUS_ENV}"
    )


def corpus_file(corpus: str | None, lang: str) -> Path:
    """The text file of ``lang`` in ``corpus`` (a folder, or a path with ``{lang}``); ``$MKEDIT_STATS_CORPUS``
    when ``corpus`` is unset. Data-file codes (``cz`` for ``cs``, ``du`` for ``nl``) are accepted."""
    source = corpus or os.environ.get(CORPUS_ENV)
    if not source:
        raise StatsCorpusError(f"M-ROME/M-MEMIT/M-PMET need a text corpus for their key statistics: {_hint()}")
    code = get_language(lang).code
    codes = [code, *sorted(alias for alias, canonical in ALIASES.items() if canonical == code)]
    path = Path(source).expanduser()
    if path.is_dir():
        found = sorted(
            f for f in path.iterdir() if f.is_file() and set(f.stem.replace("-", "_").split("_")) & set(codes)
        )
        if len(found) == 1:
            return found[0]
        what = "no file" if not found else f"{len(found)} files ({', '.join(f.name for f in found)})"
        raise StatsCorpusError(f"stats corpus folder {path}: {what} named with language code {code!r}; {_hint()}")
    for candidate in codes:
        file = Path(str(path).replace("{lang}", candidate))
        if file.is_file():
            return file
    raise StatsCorpusError(f"stats corpus {str(path)!r}: no file for language {code!r}; {_hint()}")


def read_texts(path: Path, lang: str, limit: int) -> list[str]:
    """The first ``limit`` non-empty lines of ``path``; ``question<TAB>answer`` becomes question + answer."""
    sep = get_language(lang).word_sep
    texts: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            parts = [p.strip() for p in line.rstrip("\n").split("\t") if p.strip()]
            if parts:
                texts.append(sep.join(parts))
            if len(texts) == limit:
                break
    if not texts:
        raise StatsCorpusError(f"stats corpus file {path} holds no text")
    return texts


def stats_root() -> Path:
    return cache_root() / "stats"


class SecondMoments:
    """``C`` per (layer, language) of one model, loaded or computed on first use and kept in memory.

    ``fingerprint`` should be taken from the untouched model: C describes the model's own keys, so it is
    computed before any edit is put in force (see the method's ``prepare``).
    """

    def __init__(
        self,
        adapter: FFNAdapter,
        tokenizer: PreTrainedTokenizerBase,
        fingerprint: ModelFingerprint,
        corpus: str | None,
        samples: int,
        batch_size: int = 16,
        checkpoint_every: int = 20,
        before_compute: Callable[[], None] | None = None,
    ) -> None:
        self.adapter = adapter
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.corpus = corpus
        self.samples = samples
        self.batch_size = batch_size
        self.checkpoint_every = checkpoint_every  # batches between saves of the partial sums
        self.before_compute = before_compute  # called before a pass over the corpus (not when loading)
        self._memory: dict[tuple[int, str], torch.Tensor] = {}
        self.seconds: dict[str, float] = {}  # lang -> seconds spent computing (not loading)
        # (layer, lang) -> its share of the corpus pass that computed it, whenever that was (None: not recorded)
        self.compute_seconds: dict[tuple[int, str], float | None] = {}

    def get(self, layer: int, lang: str) -> torch.Tensor:
        """``C`` of ``layer`` in ``lang``: ``[d_ffn, d_ffn]`` float32 on the CPU."""
        self.ensure([layer], lang)
        return self._memory[(layer, lang)]

    def ensure(self, layers: Sequence[int], lang: str) -> None:
        """Load or compute C of every layer in ``layers`` for ``lang`` (missing ones in one corpus pass)."""
        missing = [layer for layer in layers if (layer, lang) not in self._memory]
        if not missing:
            return
        file = corpus_file(self.corpus, lang)
        texts = read_texts(file, lang, self.samples)
        corpus_hash = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()
        paths = {layer: self._path(layer, lang, corpus_hash, len(texts)) for layer in missing}
        todo = []
        for layer in missing:
            if paths[layer].is_file():
                moment, meta = _load(paths[layer])
                _check_enough_keys(int(meta.get("tokens", 0)), moment.shape[0], layer, lang, str(file))
                self._memory[(layer, lang)] = moment
                self.compute_seconds[(layer, lang)] = float(meta["seconds"]) if "seconds" in meta else None
            else:
                todo.append(layer)
        if todo:
            if self.before_compute is not None:
                self.before_compute()
            start = time.perf_counter()
            log.info("second moments of layers %s in %s from %d texts of %s", todo, lang, len(texts), file)
            self._compute(todo, lang, texts, {layer: paths[layer] for layer in todo}, str(file))
            self.seconds[lang] = self.seconds.get(lang, 0.0) + time.perf_counter() - start

    def _path(self, layer: int, lang: str, corpus_hash: str, n_texts: int) -> Path:
        key = {
            "format": FORMAT_VERSION,
            "config_hash": self.fingerprint.config_hash,
            "weights_hash": self.fingerprint.weights_hash,
            "layer": layer,
            "lang": lang,
            "corpus": corpus_hash,
            "texts": n_texts,
            "max_tokens": MAX_TOKENS,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return stats_root() / self.fingerprint.weights_hash[:16] / f"L{layer:03d}-{lang}-{digest}.safetensors"

    @torch.no_grad()
    def _compute(self, layers: list[int], lang: str, texts: list[str], paths: dict[int, Path], source: str) -> None:
        d = self.adapter.d_ffn
        partial = {layer: paths[layer].with_suffix(".partial.safetensors") for layer in layers}
        sums, done, tokens = {}, {}, {}
        began = time.perf_counter()
        earlier = 0.0  # seconds of an interrupted pass, from its partial sums
        for layer in layers:
            meta = _load(partial[layer])[1] if partial[layer].is_file() else {}
            if meta.get("batch_size") == str(self.batch_size):  # other batches would not line up
                sums[layer] = _load(partial[layer])[0]
                done[layer], tokens[layer] = int(meta["texts_done"]), int(meta["tokens"])
                earlier = max(earlier, float(meta.get("seconds", 0.0)))
            else:
                sums[layer], done[layer], tokens[layer] = torch.zeros(d, d, dtype=torch.float64), 0, 0
        start = min(done.values()) // self.batch_size * self.batch_size
        if start:
            log.info("resuming the second moments of %s at text %d of %d", lang, start, len(texts))
        device = next(self.adapter.model.parameters()).device
        keys: dict[int, torch.Tensor] = {}
        handles = [
            self.adapter.down_proj_module(layer).register_forward_pre_hook(
                lambda _m, args, layer=layer: keys.__setitem__(layer, args[0].detach())
            )
            for layer in layers
        ]
        bar = tqdm(total=len(texts), initial=start, desc=f"key statistics {lang}", unit="text", disable=None)
        try:
            for batch_index, first in enumerate(range(start, len(texts), self.batch_size)):
                chunk = texts[first : first + self.batch_size]
                enc = self.tokenizer(
                    chunk,
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    padding_side="right",
                )
                mask = enc["attention_mask"].to(device).bool()
                with truncated_after(self.adapter, max(layers)):  # the blocks above cannot change the keys
                    self.adapter.base_model(input_ids=enc["input_ids"].to(device), attention_mask=mask.long())
                end = first + len(chunk)
                for layer in layers:
                    if done[layer] >= end:  # this layer's saved sums already hold the batch
                        continue
                    k = keys[layer][mask].float()  # [tokens, d_ffn]
                    sums[layer] += (k.T @ k).double().cpu()
                    tokens[layer] += k.shape[0]
                    done[layer] = end
                bar.update(len(chunk))
                if (batch_index + 1) % self.checkpoint_every == 0 and end < len(texts):
                    for layer in layers:
                        meta = {
                            "texts_done": done[layer],
                            "tokens": tokens[layer],
                            "batch_size": self.batch_size,
                            "seconds": earlier + time.perf_counter() - began,
                        }
                        _save(partial[layer], sums[layer], meta)
        finally:
            bar.close()
            for handle in handles:
                handle.remove()
        share = (earlier + time.perf_counter() - began) / len(layers)  # one pass serves every layer
        for layer in layers:
            moment = (sums[layer] / max(tokens[layer], 1)).float()
            meta = {"texts": len(texts), "tokens": tokens[layer], "source": source, "lang": lang, "layer": layer}
            meta["seconds"] = share  # the exact float: str() round-trips it
            self.compute_seconds[(layer, lang)] = share
            _save(paths[layer], moment, meta)
            partial[layer].unlink(missing_ok=True)
            _check_enough_keys(tokens[layer], d, layer, lang, source)
            self._memory[(layer, lang)] = moment


def _check_enough_keys(tokens: int, d_ffn: int, layer: int, lang: str, source: str) -> None:
    """Refuse a C estimated from fewer keys than it has dimensions.

    Such a C is singular: the update rules then push W_out along directions no corpus key visited, and
    every other prompt's output moves with them (on qwen2.5-0.5b, an M-ROME edit from 24 questions made
    the model answer every prompt with the same junk token). The saved statistics stay on disk.
    """
    if tokens < d_ffn:
        raise StatsCorpusError(
            f"the key statistics of layer {layer} in {lang!r} come from {tokens} tokens of {source}, fewer than "
            f"the {d_ffn} dimensions of the keys, so C is singular and an edit would disturb every other "
            f"prompt; give more text (raise stats_samples, or a larger corpus): at least {d_ffn} tokens, "
            "several times that for a good estimate"
        )


def _save(path: Path, tensor: torch.Tensor, meta: dict) -> None:
    metadata = {key: str(value) for key, value in meta.items()}
    write_atomic(path, lambda tmp: save_file({"moment": tensor.contiguous()}, str(tmp), metadata=metadata))


def _load(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor("moment"), dict(handle.metadata() or {})
