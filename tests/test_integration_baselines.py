"""The paper's baselines on a real packaged model, one per family: weight editing by locate-then-edit
(M-ROME), LoRA fine-tuning and retrieval in context. An en+zh edit must give the new answer in both
languages while in force and leave the model's weights exactly as they were; M-ROME and ReMaKE must also
keep an unrelated prompt's next token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mkedit.demo import demo_records
from mkedit.eval.runner import EvalConfig
from mkedit.eval.scoring import Scorer
from mkedit.methods.common.weights import weights_checksum
from mkedit.methods.locate_edit import stats as stats_module
from mkedit.methods.registry import build_method
from mkedit.methods.view import ModelView
from mkedit.prompting import encode_prompt_answer

pytestmark = pytest.mark.slow

# M-ROME writes each language's answer as a rank-one update at its subject's key, one language after the
# other, so languages whose subject keys nearly coincide overwrite each other (the paper's knowledge
# conflict, measured by benchmarks/compare_methods.py). The Volvo record's subject ends in "B12M" in both
# languages; the Eiffel Tower record's subjects share no token, so the test checks the mechanism.
RECORD = {"m-rome": 1}
# LoRA-FT adapts the attention of every block, so prompts about anything else move too: the paper measures
# its Locality EM at about 5 % (Table 11). The test holds it to the edit itself, not to locality.
KEEPS_UNRELATED = {"m-rome", "remake"}
UNRELATED = ["Water is made of hydrogen and", "问：太阳系中最大的行星是什么？\n答："]  # about neither record


def _predict(view, qwen, cases):
    scorer = Scorer(view, qwen.tokenizer, EvalConfig(generation=False), next(qwen.model.parameters()).device)
    return scorer.predict(cases)


def _answer_logprob(view, qwen, question: str, answer: str, lang: str) -> float:
    pair = encode_prompt_answer(qwen.tokenizer, view.rewrite(question, lang), answer, lang)
    ids = torch.tensor([pair.input_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(view.logits(ids, torch.ones_like(ids))[0].float(), dim=-1)
    targets = ids[0, pair.answer_start :]
    return float(logprobs[pair.answer_start - 1 : -1].gather(-1, targets[:, None]).sum())


def _next_tokens(view, qwen, prompts: list[str]) -> list[int]:
    out = []
    for prompt in prompts:
        ids = qwen.tokenizer(view.rewrite(prompt, ""), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out.append(int(view.logits(ids, torch.ones_like(ids))[0, -1].argmax()))
    return out


# Words for a small corpus written here (the project ships no data): the locate-then-edit methods need
# more key tokens than the keys have dimensions (4,864 on qwen2.5-0.5b), or their statistics are refused.
NAMES = {
    "en": [
        "Anna Berg",
        "the Nile",
        "Mount Kenya",
        "Lisbon",
        "Siemens",
        "the Louvre",
        "Pablo Neruda",
        "Lake Baikal",
        "Kyoto",
        "Unilever",
        "the Danube",
        "Frida Kahlo",
        "the Sahara",
        "Oslo",
        "Samsung",
        "the Alps",
        "Leo Tolstoy",
        "Cairo",
        "Airbus",
        "the Andes",
        "Jane Austen",
        "Quebec",
        "Ferrari",
        "the Ganges",
    ],
    "zh": [
        "安娜·伯格",
        "尼罗河",
        "肯尼亚山",
        "里斯本",
        "西门子",
        "卢浮宫",
        "聂鲁达",
        "贝加尔湖",
        "京都",
        "联合利华",
        "多瑙河",
        "弗里达·卡罗",
        "撒哈拉沙漠",
        "奥斯陆",
        "三星",
        "阿尔卑斯山",
        "列夫·托尔斯泰",
        "开罗",
        "空中客车",
        "安第斯山脉",
        "简·奥斯汀",
        "魁北克",
        "法拉利",
        "恒河",
    ],
}
TEMPLATES = {
    "en": [
        "Where is {} located?",
        "Who founded {} in {}?",
        "What happened to {} in the year {}?",
        "{} was first described in {}.",
        "Many visitors came to see {} during {}.",
        "What is {} known for?",
        "In {1}, a book about {0} was published.",
        "Which country does {} belong to?",
        "The story of {} began around {}.",
        "How old was {} in {}?",
        "Who wrote about {} in {}?",
        "People still talk about {} and the events of {}.",
    ],
    "zh": [
        "{}位于哪里？",
        "{}是谁在{}年创立的？",
        "{}在{}年发生了什么？",
        "{}最早在{}年被记载。",
        "{1}年有很多游客来看{0}。",
        "{}以什么闻名？",
        "{1}年出版了一本关于{0}的书。",
        "{}属于哪个国家？",
        "{}的故事大约始于{}年。",
        "{}在{}年时有多大？",
        "{}年谁写过关于{}的文章？",
        "人们仍在谈论{}和{}年的事情。",
    ],
}


def stats_corpus(folder: Path) -> str:
    """Every name in every template with a few years: ~1,400 distinct lines, ~18k tokens per language.

    Enough to make C non-singular for M-ROME's test; real runs use MzsRE's training questions or any text.
    """
    for lang, names in NAMES.items():
        lines = dict.fromkeys(
            template.format(name, 1890 + (7 * i + 13 * j + 3 * k) % 130)
            for k in range(6)
            for i, name in enumerate(names)
            for j, template in enumerate(TEMPLATES[lang])
        )
        (folder / f"corpus_{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(folder / "corpus_{lang}.txt")


@pytest.mark.parametrize("name", ["m-rome", "lora-ft", "remake"])
def test_baseline_edit_gives_new_answer_in_english_and_chinese(
    qwen, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The statistics of this throwaway corpus go to tmp_path, not the user's cache (~95 MB per layer and language).
    monkeypatch.setattr(stats_module, "stats_root", lambda: tmp_path / "stats")
    settings = {"stats_corpus": stats_corpus(tmp_path)} if name == "m-rome" else {}
    group = demo_records()[RECORD.get(name, 0)].group.restrict(["en", "zh"])
    cases = [(r.question, r.answer, r.lang) for r in group.requests]
    method = build_method(name, qwen.model, qwen.tokenizer, qwen.name, overrides=settings)
    checksum = weights_checksum(qwen.model)
    base = ModelView(qwen.model)
    before = _predict(base, qwen, cases)
    assert all(p.pred_ids != p.target_ids for p in before), "the base model already knew the new answers"
    base_next = _next_tokens(base, qwen, UNRELATED)

    base_logprobs = [_answer_logprob(base, qwen, *case) for case in cases]

    edit = method.edit(group)
    assert torch.equal(weights_checksum(qwen.model), checksum)
    with method.applied([edit]) as view:
        after = _predict(view, qwen, cases)
        logprobs = [_answer_logprob(view, qwen, *case) for case in cases]
        unrelated_next = _next_tokens(view, qwen, UNRELATED)
    for (question, _, lang), post, pre_lp, post_lp in zip(cases, after, base_logprobs, logprobs, strict=True):
        assert post.pred_ids == post.target_ids, f"{name} {lang}: edit not in force for {question!r}"
        assert post_lp > pre_lp, f"{name} {lang}: answer log-prob {pre_lp:.2f} -> {post_lp:.2f}"
    if name in KEEPS_UNRELATED:
        assert unrelated_next == base_next, f"{name}: an unrelated prompt's next token changed"
    assert torch.equal(weights_checksum(qwen.model), checksum)
