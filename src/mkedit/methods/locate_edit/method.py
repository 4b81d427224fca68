"""What M-ROME, M-MEMIT and M-PMET share: the edit protocol around a method-specific update rule.

Per the paper (App. A), each language of a group gets its own target value (its answer differs) and its
own key statistics; the update rule (``compute_deltas``) then writes every language's request into W_out.
``edit`` reads the current weights (earlier edits in force in a sequential run) and never writes them:
updates of earlier layers or languages are simulated with hooks while later ones are computed. The
result is W_out deltas as low-rank factors in each parameter's own layout; ``applied`` adds them.

Key statistics are computed at first use and cached on disk. They should describe the untouched model:
call :meth:`LocateEditMethod.prepare` before putting edits in force, or make sure the first
``edit`` of each language runs with none in force (a sequential runner's first edit does).
"""

from __future__ import annotations

import hashlib
import logging
import time
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mkedit.methods.base import EditMethod, edit_id_for, group_info
from mkedit.methods.common.batch import TensorBatch, sequences_for_request, to_tensor_batch
from mkedit.methods.common.weights import added_weights, low_rank_tensors, only_trainable, weights_checksum
from mkedit.methods.locate_edit.config import LocateEditConfig
from mkedit.methods.locate_edit.hooks import FFNDeltas, Site
from mkedit.methods.locate_edit.stats import SecondMoments
from mkedit.methods.locate_edit.updates import param_layout
from mkedit.methods.locate_edit.values import Reading, ValueResult, optimise_value, read_at_subject
from mkedit.methods.view import ModelView
from mkedit.models.fingerprint import model_fingerprint
from mkedit.runtime.cache import Edit
from mkedit.types import EditGroup

log = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT", bound=LocateEditConfig)
K = TypeVar("K")
V = TypeVar("V")
VALUES_REMEMBERED = 256  # per method instance; a value is a few vectors of d_model floats


class BoundedMemo(Generic[K, V]):
    """The ``size`` most recently stored results."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        if key in self._items:
            self._items.move_to_end(key)
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


def weights_digest(model: nn.Module) -> bytes:
    return weights_checksum(model).numpy().tobytes()


def tensors_digest(*tensors: torch.Tensor) -> str:
    """A digest of the tensors' raw bytes (shape and dtype as laid out)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def deltas_digest(deltas: FFNDeltas | None) -> str:
    """A digest of simulated weight updates (empty when none are in force)."""
    if not deltas:
        return ""
    layers = sorted(deltas)
    return str(layers) + tensors_digest(*(factor for layer in layers for factor in deltas[layer]))


class GroupWork:
    """One group's per-language batches, and the reads and optimisations the update rules ask for."""

    def __init__(self, method: LocateEditMethod, group: EditGroup) -> None:
        self.method = method
        self.adapter = method.adapter
        self.config = method.config
        self.langs = group.langs
        self.batches: dict[str, TensorBatch] = {}
        # The same rows with every subject ending in one column: the value optimisation computes the columns
        # before it once (values.py); keys are read from the right-padded rows.
        self.value_batches: dict[str, TensorBatch] = {}
        self.subjects: dict[str, list[str]] = {}
        self.values: dict[str, ValueResult] = {}
        self.reused: set[str] = set()  # languages whose value was remembered rather than optimised
        self.model_state = weights_digest(method.model)
        device = next(method.model.parameters()).device
        for req in group.requests:
            context = f"edit {group.group_id or '?'}, language {req.lang}"
            prefixes = method.prefixes(req.lang)
            aligned = group.other_subjects(req.lang)
            seqs, span = sequences_for_request(method.tokenizer, req, prefixes, True, context, aligned=aligned)
            n_target = sum(s.kind == "target" for s in seqs)
            pad = method.tokenizer.pad_token_id
            self.batches[req.lang] = to_tensor_batch(seqs, pad, n_target, 1, device)
            self.value_batches[req.lang] = to_tensor_batch(seqs, pad, n_target, 1, device, align_subjects=True)
            self.subjects[req.lang] = list(dict.fromkeys([req.subject, span.surface]))

    def value(self, lang: str, layer: int, sites: Sequence[Site], in_force: FFNDeltas | None = None) -> ValueResult:
        """Optimise ``lang``'s target outputs of ``sites`` at ``layer`` (kept for the edit's statistics).

        Results are remembered by the method, keyed by everything they depend on (the language's training
        batch, the model's weights, the layer, the sites and the updates in force), as the reference MEMIT caches its z
        vectors: the same fact edited again (another setting of a benchmark, a re-edit) reuses its value.
        """
        batch = self.batches[lang]  # prefixes, question, answer and the subject's place: all the value sees
        request = tensors_digest(batch.input_ids, batch.attention_mask, batch.subject_pos)
        key = (self.model_state, request, layer, tuple(sites), deltas_digest(in_force))
        result = self.method.values_seen.get(key)
        if result is None:
            result = optimise_value(self.adapter, self.value_batches[lang], layer, sites, self.config, in_force)
            self.method.values_seen.put(key, result)
        else:
            self.reused.add(lang)
        self.values[lang] = result
        log.debug(
            "%s value of %s: %d steps, NLL %.3f -> %.3f",
            self.method.name,
            lang,
            result.steps,
            result.nll_before,
            result.nll,
        )
        return result

    def read(
        self, lang: str, key_layers: Sequence[int], sites: Sequence[tuple[Site, int]], in_force: FFNDeltas
    ) -> Reading:
        return read_at_subject(self.adapter, self.batches[lang], key_layers, sites, in_force)

    def moment(self, layer: int, langs: Sequence[str]) -> torch.Tensor:
        """``C`` of ``layer``: the mean of the languages' own second moments ``[d_ffn, d_ffn]``."""
        return torch.stack([self.method.stats.get(layer, lang) for lang in langs]).mean(0)


class LocateEditMethod(EditMethod[ConfigT]):
    """Base of the three baselines: subclasses set the config and write :meth:`compute_deltas`."""

    needs_subject_position = True

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        config: ConfigT | None = None,
        model_name: str = "",
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(model, tokenizer, config, model_name, overrides)
        self.values_seen: BoundedMemo[tuple, ValueResult] = BoundedMemo(VALUES_REMEMBERED)
        # Taken now, on the model as given (untouched), so stats keep their key when edits are in force; the
        # exact (float32) hash, since statistics differ between dtypes of one model.
        fingerprint = model_fingerprint(model, self.model_name, rounding="float32")
        self._base_checksum = self._edited_weights_checksum()
        self.stats = SecondMoments(
            self.adapter,
            tokenizer,
            fingerprint,
            self.config.stats_corpus,
            self.config.stats_samples,
            before_compute=self._warn_if_edited,
        )

    # --- configuration ----------------------------------------------------------------------------
    @abstractmethod
    def reference_layers(self) -> tuple[int, ...]:
        """The reference layers scaled to this model's depth (used when ``config.layers`` is empty)."""

    def default_config(self) -> ConfigT:
        return self.config_class(layers=self.reference_layers())  # type: ignore[call-arg,return-value]

    def prepare_config(self, config: ConfigT) -> ConfigT:
        layers = config.layers or self.reference_layers()
        resolved = self.resolve_layers(layers)
        if len(resolved) != len(layers):
            n = self.adapter.n_layers
            raise ValueError(f"layers {config.layers} name the same layer twice on a {n}-layer model")
        return config.replace(layers=resolved)

    # --- shared machinery -------------------------------------------------------------------------
    def prepare(self, langs: Sequence[str]) -> None:
        """Compute (or load) the key statistics of every edited layer for ``langs`` now, on the model as it
        is: call it before edits are put in force (``edit`` calls it too, for its group's languages)."""
        for lang in langs:
            self.stats.ensure(self.config.layers, lang)

    def one_off_seconds(self) -> float | None:
        """The compute time of the key statistics in use (recorded with them in the stats cache)."""
        times = list(self.stats.compute_seconds.values())
        return None if not times or None in times else round(sum(t for t in times if t is not None), 1)

    @torch.no_grad()
    def _edited_weights_checksum(self) -> torch.Tensor:
        """Sums of the W_out matrices this method edits: any low-rank delta in force changes them."""
        params = [self.adapter.down_proj_module(layer).weight for layer in self.config.layers]
        return torch.stack([p.detach().double().sum().cpu() for p in params])

    def _warn_if_edited(self) -> None:
        if not torch.equal(self._edited_weights_checksum(), self._base_checksum):
            log.warning(
                "%s: computing key statistics while edits are in force; they should describe the untouched "
                "model (call prepare(langs) before applying edits)",
                self.name,
            )

    @abstractmethod
    def compute_deltas(self, work: GroupWork) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """The update rule: layer -> (left ``[d_model, r]``, right ``[r, d_ffn]``) of ``ΔW = left @ right``."""

    # --- the protocol -----------------------------------------------------------------------------
    def edit(self, group: EditGroup) -> Edit:
        t0 = time.perf_counter()
        with only_trainable(self.model, ()):
            self.prepare(group.langs)
            t1 = time.perf_counter()
            work = GroupWork(self, group)
            deltas = self.compute_deltas(work)
        t2 = time.perf_counter()
        factors = {}
        for layer, (left, right) in deltas.items():
            name, transposed = self.adapter.ffn_out_param(layer)
            factors[name] = param_layout(left.float(), right.float(), transposed)
        info: dict[str, Any] = {
            **group_info(group),
            "layers": list(deltas),
            "rank": {str(layer): int(left.shape[1]) for layer, (left, _) in deltas.items()},
            "steps": sum(v.steps for v in work.values.values()),
            "steps_per_lang": {lang: v.steps for lang, v in work.values.items()},
            "values_reused": sorted(work.reused),
            "nll_before": {lang: round(v.nll_before, 4) for lang, v in work.values.items()},
            "nll_after": {lang: round(v.nll, 4) for lang, v in work.values.items()},
            "seconds": round(t2 - t0, 3),
            "seconds_stats": round(t1 - t0, 3),
        }
        log.info("%s edit %s: layers %s in %.1f s", self.name, edit_id_for(group), list(deltas), t2 - t0)
        return Edit(edit_id_for(group), work.subjects, low_rank_tensors(factors), info, self.name)

    @contextmanager
    def applied(self, edits: Sequence[Edit]) -> Iterator[ModelView]:
        self.check_edits(edits)
        with added_weights(self.model, edits):
            yield ModelView(self.model, [e.edit_id for e in edits])
