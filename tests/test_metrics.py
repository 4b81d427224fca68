"""Metric arithmetic on hand-computed cases, and teacher forcing / generation on tiny models."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteriaList

from conftest import FAMILIES, build_tiny_model, build_tiny_tokenizer
from mkedit.eval.metrics import (
    AnswerLineDone,
    GenerateFn,
    TokenPrediction,
    aggregate,
    answer_text,
    f1_em,
    first_line,
    gen_contains,
    gen_exact_match,
    gen_locality_scores,
    generate_answer_ids,
    generation_decided,
    greedy_known,
    kept_ids,
    locality_scores,
    max_new_tokens_for,
    normalize_answer,
    prediction_shown,
    teacher_forced,
    through_first_line,
    token_f1,
)
from mkedit.prompting import encode_answer, encode_prompt, encode_prompt_answer

CASES = [
    ("The capital of France is", "Paris", "en"),
    ("Q?", "a much longer answer here", "en"),
    ("法国的首都是", "巴黎", "zh"),
    ("Who wrote Hamlet? The play was written by", "William Shakespeare", "en"),
    ("La capitale de l'Italie est", "Rome", "fr"),
]


def greedy_generate(model: torch.nn.Module) -> GenerateFn:
    """A :data:`GenerateFn` of ``model``'s own greedy loop (KV cache, stopping criterion)."""

    def greedy(
        ids: torch.Tensor, mask: torch.Tensor, max_new: int, stop: AnswerLineDone, prompt_lengths: list[int]
    ) -> torch.Tensor:
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=0,
            stopping_criteria=StoppingCriteriaList([stop]),
        )
        return out[:, ids.shape[1] :]

    return greedy


def generate_answers(
    generate_fn: GenerateFn, tok: PreTrainedTokenizerBase, prompts: list[str], budgets: list[int], batch_size: int = 8
) -> list[str]:
    """Greedy answers as the scorer keeps them (:func:`generate_answer_ids`, then :func:`answer_text`)."""
    return [answer_text(tok, ids) for ids in generate_answer_ids(generate_fn, tok, prompts, budgets, batch_size)]


def hf_logits(model: torch.nn.Module):
    return lambda ids, mask, prompt_lengths, keep: model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits


# --------------------------------------------------------------------------- F1 / EM arithmetic


def test_f1_corner_cases() -> None:
    assert token_f1([], [5, 6]) == 0.0  # empty prediction
    assert token_f1([], []) == 1.0  # nothing to predict, nothing predicted (as the reference code)
    assert token_f1([1, 2], [3, 4]) == 0.0  # no overlap
    assert token_f1([7, 8, 9], [7, 8, 9]) == 1.0  # perfect
    assert token_f1([9, 8, 7], [7, 8, 9]) == 1.0  # a bag of tokens: order does not matter


def test_f1_counts_repeated_tokens_once_per_occurrence() -> None:
    # multiset overlap of [5,5,5] and [5,7,8] is one 5: P = R = 1/3. Counting "pred token in target"
    # would give P = 1 and F1 = 0.5.
    assert token_f1([5, 5, 5], [5, 7, 8]) == pytest.approx(1 / 3)
    # overlap {5: 1, 6: 1} = 2 of 4 each way
    assert token_f1([5, 5, 5, 6], [5, 6, 6, 7]) == pytest.approx(0.5)


def test_f1_is_harmonic_mean_not_product() -> None:
    # overlap 2, P = 2/2 = 1, R = 2/4 = 0.5: harmonic mean 2/3, product (one reference version) 0.5
    pred, target = [1, 2], [1, 2, 3, 4]
    p, r = 1.0, 0.5
    assert token_f1(pred, target) == pytest.approx(2 * p * r / (p + r)) == pytest.approx(2 / 3)
    assert token_f1(pred, target) != pytest.approx(p * r)


def test_f1_em_on_chinese_through_byte_tokenizer() -> None:
    tok = build_tiny_tokenizer()
    target = encode_answer(tok, "巴黎", "zh")  # 6 byte tokens: 巴 = E5 B7 B4, 黎 = E9 BB 8E
    pred = encode_answer(tok, "巴西", "zh")  # 西 = E8 A5 BF: the three bytes of 巴 overlap
    assert len(target) == len(pred) == 6
    f1, em = f1_em(TokenPrediction(pred, target), tok)
    assert f1 == pytest.approx(0.5)  # P = R = 3/6
    assert em == 0.0
    assert f1_em(TokenPrediction(target, target), tok) == (1.0, 1.0)


def test_em_ignores_surrounding_whitespace() -> None:
    tok = build_tiny_tokenizer()
    pred = tok(" Paris ", add_special_tokens=False)["input_ids"]
    target = tok("Paris", add_special_tokens=False)["input_ids"]
    f1, em = f1_em(TokenPrediction(pred, target), tok)
    assert em == 1.0
    assert f1 == pytest.approx(2 * (5 / 7) * 1 / (5 / 7 + 1))  # the spaces are tokens: P = 5/7, R = 1


def test_em_does_not_let_a_special_token_pass_for_whitespace() -> None:
    """A predicted end-of-text where the answer has a space token is a miss, not a match in disguise."""
    tok = build_tiny_tokenizer()
    target = tok(" Paris", add_special_tokens=False)["input_ids"]
    assert tok.decode(target[:1]).strip() == ""  # the leading space is a token of its own here
    pred = [tok.eos_token_id, *target[1:]]
    f1, em = f1_em(TokenPrediction(pred, target), tok)
    assert em == 0.0 and f1 < 1.0


def test_aggregate_is_percent() -> None:
    assert aggregate([1.0, 0.0, 0.5]) == pytest.approx(50.0)
    assert aggregate([]) is None


# --------------------------------------------------------------------------- teacher forcing


def _manual_predictions(model: torch.nn.Module, tok, cases) -> list[list[int]]:
    """One sequence at a time, no padding, no mask: the reference the batched version must equal."""
    out = []
    with torch.no_grad():
        for prompt, target, lang in cases:
            pair = encode_prompt_answer(tok, prompt, target, lang)
            logits = model(input_ids=torch.tensor([pair.input_ids])).logits[0]  # [s, vocab]
            out.append(logits.argmax(-1)[pair.answer_start - 1 : len(pair.input_ids) - 1].tolist())
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_forced_matches_unbatched_argmax(family: str) -> None:
    tok = build_tiny_tokenizer()
    model = build_tiny_model(family)
    expected = _manual_predictions(model, tok, CASES)
    for batch_size in (1, 3, 8):
        preds = teacher_forced(hf_logits(model), tok, CASES, batch_size=batch_size)
        assert [p.pred_ids for p in preds] == expected, f"batch_size={batch_size}"
        for p, (_, target, lang) in zip(preds, CASES, strict=True):
            assert p.target_ids == encode_answer(tok, target, lang)
            assert len(p.pred_ids) == len(p.target_ids)


def test_length_batches_split_where_padding_costs_more_than_a_forward() -> None:
    """With a forward's fixed cost, batches are the cheapest split of the length order (checked against every
    split of small cases); without one, runs of ``batch_size``. Each index appears once either way."""
    import itertools
    import random

    from mkedit.eval.metrics import _length_batches

    def cost(batches: list[list[int]], lengths: list[int], fixed: int) -> int:
        return sum(fixed + len(b) * max(lengths[i] for i in b) for b in batches)

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(3, 40) for _ in range(rng.randint(1, 7))]
        batch_size, fixed = rng.randint(1, 5), rng.choice([0, 4, 16, 64])
        batches = _length_batches(lengths, batch_size, fixed)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert all(1 <= len(b) <= batch_size for b in batches)
        if not fixed:
            assert batches == _length_batches(lengths, batch_size)
            continue
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        cheapest = min(
            cost([order[a:b] for a, b in itertools.pairwise((0, *cuts, len(order)))], lengths, fixed)
            for k in range(len(order))
            for cuts in itertools.combinations(range(1, len(order)), k)
            if all(b - a <= batch_size for a, b in itertools.pairwise((0, *cuts, len(order))))
        )
        assert cost(batches, lengths, fixed) == cheapest
    assert _length_batches([5, 30, 6, 31], 4, 16) == [[0, 2], [1, 3]]  # 16 + 2x6 + 16 + 2x31 < 16 + 4x31
    assert _length_batches([5, 30, 6, 31], 4, 64) == [[0, 2, 1, 3]]


def test_teacher_forced_right_pads_and_aligns_answer_positions() -> None:
    """An 'echo' model (predicts its own input token) exposes the alignment: pred[k] = input[start-1+k]."""
    tok = build_tiny_tokenizer()
    seen_masks = []

    def echo(ids: torch.Tensor, mask: torch.Tensor, prompt_lengths: list[int], keep: torch.Tensor) -> torch.Tensor:
        seen_masks.append(mask.clone())
        logits = torch.nn.functional.one_hot(ids, num_classes=len(tok)).float()
        return logits.masked_fill(mask[..., None] == 0, 0.0)[:, keep]

    preds = teacher_forced(echo, tok, CASES, batch_size=8)
    for row in (row for mask in seen_masks for row in mask):
        n = int(row.sum())  # right padding: ones then zeros
        assert row[:n].eq(1).all() and row[n:].eq(0).all()
    assert any(m.sum(1).unique().numel() > 1 for m in seen_masks)  # a batch really mixed lengths
    for p, (prompt, _, _) in zip(preds, CASES, strict=True):
        last_prompt_id = encode_prompt(tok, prompt)[-1]
        assert p.pred_ids == [last_prompt_id, *p.target_ids[:-1]]


def test_teacher_forced_rejects_empty_prompt() -> None:
    with pytest.raises(ValueError, match="no tokens"):
        teacher_forced(lambda i, m, n, k: torch.zeros(*i.shape, 258), build_tiny_tokenizer(), [("", "x", "en")])


# --------------------------------------------------------------------------- locality


def test_locality_against_pre_edit_predictions() -> None:
    tok = build_tiny_tokenizer()
    loc_cases = [("The Nile flows through", "Egypt", "en"), ("水的化学式是", "H2O", "zh")]
    pre = teacher_forced(hf_logits(build_tiny_model("qwen2", seed=0)), tok, loc_cases)
    same = teacher_forced(hf_logits(build_tiny_model("qwen2", seed=0)), tok, loc_cases)
    changed = teacher_forced(hf_logits(build_tiny_model("qwen2", seed=1)), tok, loc_cases)
    for p, s, c in zip(pre, same, changed, strict=True):
        assert locality_scores(p, s, tok) == (1.0, 1.0)  # an untouched model keeps locality at 100
        f1, em = locality_scores(p, c, tok)
        # the reference is the pre-edit prediction, not the gold loc_ans
        assert f1 == pytest.approx(token_f1(c.pred_ids, p.pred_ids))
        assert em == float(c.pred_ids == p.pred_ids)


def test_locality_hand_case() -> None:
    target = [10, 11, 12]
    pre, post = TokenPrediction([3, 4, 5], target), TokenPrediction([3, 4, 6], target)
    assert locality_scores(pre, post) == (pytest.approx(2 / 3), 0.0)
    # gold-answer F1 of the post-edit prediction would be 0: locality ignores the gold answer
    assert token_f1(post.pred_ids, target) == 0.0
    with pytest.raises(ValueError, match="same case"):
        locality_scores(pre, TokenPrediction([3, 4, 5], [10, 11]))


# --------------------------------------------------------------------------- generation-based


def test_normalize_answer() -> None:
    # en: case, punctuation and spaces go; articles stay (language-blind removal would eat real words)
    assert normalize_answer("  The Eiffel-Tower!!  ") == "the eiffeltower"
    assert normalize_answer("U.S.  Army\n") == "us army"
    # zh: CJK punctuation, full-width forms (NFKC)
    assert normalize_answer("「巴黎」。") == "巴黎"
    assert normalize_answer("ＡＢＣ，北京！") == "abc北京"
    # fr: accents kept (composed by NFKC), elision apostrophe and hyphens removed, "le" kept
    assert normalize_answer("L'Île-de-France.") == "lîledefrance"
    assert normalize_answer("Cafe\u0301") == normalize_answer("Café") == "café"
    assert normalize_answer("Le Havre") == "le havre"
    assert normalize_answer("Straße") == "strasse"  # casefold, not lower


def test_gen_exact_match_and_contains() -> None:
    assert gen_exact_match(" Paris.\nThe capital of Italy is", "Paris") == 1.0
    assert gen_exact_match("\nParis", "Paris") == 1.0  # leading newline dropped before the cut
    assert gen_exact_match("Paris is lovely", "Paris") == 0.0
    assert gen_contains("Paris is lovely", "paris") == 1.0
    assert gen_contains("London\nParis", "Paris") == 0.0  # only the first line counts
    assert gen_exact_match("巴黎。\n北京", "巴黎") == 1.0
    assert gen_contains("首都是巴黎。", "巴黎") == 1.0
    assert gen_contains("La ville de Paris", "paris!") == 1.0
    assert gen_contains("anything", "...") == 0.0  # empty normalised target matches only an empty answer


def test_gen_locality_compares_with_pre_edit_generation() -> None:
    # (pre-edit generation, post-edit generation)
    assert gen_locality_scores(" Egypt and Sudan\nfoo", "Egypt and Sudan.") == (1.0, 1.0)
    assert gen_locality_scores("Egypt and Sudan", "Egypt") == (0.0, 0.0)
    assert gen_locality_scores("Egypt", "Egypt and Sudan") == (0.0, 1.0)


def test_max_new_tokens_for() -> None:
    tok = build_tiny_tokenizer()
    assert max_new_tokens_for(tok, "Paris", "en") == 6 + 4  # " Paris" is 6 bytes
    assert max_new_tokens_for(tok, "巴黎", "zh", extra_tokens=0) == 6  # no separator in zh


def test_generate_answers_left_pads_cuts_at_budget_and_eos() -> None:
    tok = build_tiny_tokenizer()
    eos = tok.eos_token_id
    canned = {"Q one?": " Paris\nmore", "A longer second question?": "巴黎", "Q3": " Rome", "Q4": "\n Oslo\nand"}
    calls = []

    def fake_generate(
        ids: torch.Tensor, mask: torch.Tensor, max_new: int, stop: AnswerLineDone, prompt_lengths: list[int]
    ) -> torch.Tensor:
        calls.append(max_new)
        rows = []
        for row_ids, row_mask in zip(ids, mask, strict=True):
            n = int(row_mask.sum())
            assert row_mask[-n:].eq(1).all() and row_mask[:-n].eq(0).all()  # left padding
            prompt = tok.decode(row_ids[-n:].tolist())
            new = tok(canned[prompt], add_special_tokens=False)["input_ids"] + [eos, 65, 66]
            new = (new + [eos] * max_new)[:max_new]
            rows.append(new)
        return torch.tensor(rows)

    prompts = list(canned)
    budgets = [3, 20, 20, 20]
    for batch_size in (1, 8):
        out = generate_answers(fake_generate, tok, prompts, budgets, batch_size=batch_size)
        # own budget; cut at EOS (tokens after it dropped) and after the first non-blank line
        assert out == [" Pa", "巴黎", " Rome", "\n Oslo\n"]
    assert calls[-1] == 20  # one batch generated with its largest budget


def test_through_first_line_keeps_what_is_scored() -> None:
    assert through_first_line(" Paris\nmore\n") == " Paris\n"
    assert through_first_line("\n\n Paris\nmore") == "\n\n Paris\n"  # leading blank lines are not the answer
    assert through_first_line(" Paris") == " Paris"
    assert through_first_line("\n \n") == "\n \n"
    for text in (" Paris\nmore", "\nParis\n", "Paris"):
        assert first_line(through_first_line(text)) == first_line(text)


def test_answer_line_done_marks_rows_with_a_complete_line_or_a_spent_budget() -> None:
    tok = build_tiny_tokenizer()
    prompt = tok("Q?", add_special_tokens=False)["input_ids"]
    rows = [" Paris\nx", "\n Par", " Lon", "abcdefg"]
    new = [tok(r, add_special_tokens=False)["input_ids"] for r in rows]
    width = max(len(n) for n in new)
    pad = tok.pad_token_id
    ids = torch.tensor([prompt + n + [pad] * (width - len(n)) for n in new])
    done = AnswerLineDone(tok, len(prompt), [20, 20, 20, width])(ids, None)
    # a finished line; a leading line break only (not done); no line break yet; the budget reached
    assert done.tolist() == [True, False, False, True]


def test_generate_answers_with_a_real_generate_loop() -> None:
    tok = build_tiny_tokenizer()
    model = build_tiny_model("gpt2")
    greedy = greedy_generate(model)

    prompts = ["The capital of France is", "法国的首都是"]
    budgets = [max_new_tokens_for(tok, "Paris", "en"), max_new_tokens_for(tok, "巴黎", "zh", extra_tokens=0)]
    out = generate_answers(greedy, tok, prompts, budgets, batch_size=2)
    for text, prompt, budget in zip(out, prompts, budgets, strict=True):
        encoded = tok(prompt, return_tensors="pt")
        alone = model.generate(**encoded, max_new_tokens=budget, do_sample=False, pad_token_id=0)
        alone = alone[0, encoded["input_ids"].shape[1] :].tolist()
        alone = alone[: alone.index(tok.eos_token_id)] if tok.eos_token_id in alone else alone
        assert text == through_first_line(tok.decode(alone, skip_special_tokens=True))


def test_generation_resumes_where_teacher_forcing_stops_showing_it() -> None:
    """A canned "model" whose greedy continuation of each prompt is fixed. The teacher-forced pass shows the
    ids greedy decoding generates first (:func:`greedy_known`): the answer up to the first wrong prediction and
    that prediction. Where those ids end the first line, reach EOS or fill the budget they are the whole
    generation (:func:`generation_decided`); otherwise decoding resumes after them, sees only the prompt as
    prompt, and gives exactly what generating from the prompt alone gives."""
    tok = build_tiny_tokenizer()
    eos = tok.eos_token_id
    canned = {"Q one?": " Paris\nmore", "Q two?": " Rome", "Q three?": " Oslo is cold", "Q four?": " Lim\na"}
    continuation = {
        tuple(tok(prompt, add_special_tokens=False)["input_ids"]): tok(text, add_special_tokens=False)["input_ids"]
        for prompt, text in canned.items()
    }

    def next_ids(prompt_ids: list[int], n: int) -> list[int]:
        return (continuation[tuple(prompt_ids)] + [eos] * n)[:n]

    def logits_fn(ids: torch.Tensor, mask: torch.Tensor, prompt_lengths: list[int], keep: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*ids.shape, len(tok))
        for row, plen in enumerate(prompt_lengths):
            follow = next_ids(ids[row, :plen].tolist(), ids.shape[1])
            for pos in range(plen - 1, ids.shape[1]):
                out[row, pos, follow[pos - plen + 1]] = 1.0
        return out[:, keep]

    seen: list[list[int]] = []

    def generate_fn(
        ids: torch.Tensor, mask: torch.Tensor, max_new: int, stop: AnswerLineDone, prompt_lengths: list[int]
    ) -> torch.Tensor:
        rows = []
        for row, m, plen in zip(ids, mask, prompt_lengths, strict=True):
            real = row[m.bool()].tolist()
            seen.append(real[plen:])
            follow = next_ids(real[:plen], len(real) - plen + max_new)
            assert follow[: len(real) - plen] == real[plen:]  # the known ids are what greedy decoding generates
            rows.append(follow[len(real) - plen :])
        return torch.tensor(rows)

    cases = [
        ("Q one?", "Paris", "en"),
        ("Q two?", "Rome", "en"),
        ("Q three?", "Oslo", "en"),
        ("Q one?", "Lima", "en"),
        ("Q four?", "Lima", "en"),
    ]
    preds = teacher_forced(logits_fn, tok, cases)
    budgets = [max_new_tokens_for(tok, target, lang) for _, target, lang in cases]
    known = [greedy_known(pred) for pred in preds]

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    # the answer and a line break; the answer and EOS; the answer, not yet its line's end; a first wrong id;
    # the answer's first three ids right, then a line break in place of the fourth
    assert known == [ids(" Paris\n"), [*ids(" Rome"), eos], ids(" Oslo "), ids(" P"), ids(" Lim\n")]
    decided = [generation_decided(tok, k, b) for k, b in zip(known, budgets, strict=True)]
    assert decided == [True, True, False, False, True]
    assert generation_decided(tok, known[2], len(known[2]))  # a spent budget decides too

    prompts = [p for p, _, _ in cases]
    alone = generate_answers(generate_fn, tok, prompts, budgets)
    assert seen == [[]] * len(cases)
    todo = [i for i, d in enumerate(decided) if not d]
    resumed = generate_answer_ids(
        generate_fn, tok, [prompts[i] for i in todo], [budgets[i] for i in todo], known=[known[i] for i in todo]
    )
    assert sorted(map(tuple, seen[len(cases) :])) == sorted(tuple(known[i]) for i in todo)
    assert [answer_text(tok, r) for r in resumed] == [alone[i] for i in todo]
    for i in (0, 1, 4):
        assert answer_text(tok, kept_ids(tok, known[i], budgets[i])) == alone[i]


def test_prediction_shown_is_what_teacher_forcing_computes_on_a_greedy_answer() -> None:
    """The untouched model's probe references skip their teacher-forced pass when the generation shows it."""
    tok = build_tiny_tokenizer()
    model = build_tiny_model("gpt2")
    greedy = greedy_generate(model)

    prompts = ["The capital of France is", "Who made the Volvo B12M?", "法国的首都是"]
    generated = generate_answer_ids(greedy, tok, prompts, [6, 6, 6], batch_size=3)
    checked = 0
    for prompt, row in zip(prompts, generated, strict=True):
        answer = first_line(answer_text(tok, row)).strip()
        # "zh" joins an answer to its prompt without a space, as this byte-level model generated it
        shown = prediction_shown(row, encode_answer(tok, answer, "zh")) if answer else None
        if shown is None:
            continue
        forced = teacher_forced(hf_logits(model), tok, [(prompt, answer, "zh")])[0]
        assert (shown.pred_ids, shown.target_ids) == (forced.pred_ids, forced.target_ids)
        checked += 1
    assert checked  # the seeded model's answers round-trip at least once

    assert prediction_shown([5, 6, 7], [5, 6]) == TokenPrediction([5, 6], [5, 6], next_id=7)
    assert prediction_shown([5, 6], [5, 6]).next_id is None  # nothing generated after the answer
    assert prediction_shown([5, 9, 7], [5, 6]) is None  # re-encoded, the answer is other ids
