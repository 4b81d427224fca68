"""The neuron study (§3.2, Fig. 1): corpora, whole-corpus counts (Eq. 4), selection and intersection (Eq. 5-6),
the CSV / plot / counts files and ``mkedit analyze lafns`` end to end on tiny models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mkedit.analysis.lafn_study as lafn_study
import mkedit.cli as cli
import mkedit.cli_analyze as cli_analyze
from conftest import build_tiny_model, build_tiny_tokenizer
from mkedit.analysis import (
    csv_columns,
    load_corpora,
    load_corpus,
    load_counts,
    parse_corpus_spec,
    run_lafn_study,
    save_counts,
    select_study,
    write_csv,
)
from mkedit.analysis.corpora import Corpus
from mkedit.arch import get_adapter
from mkedit.errors import DataFormatError, UnknownLanguageError
from mkedit.models.loader import LoadedModel

EN = [
    "Paris is the capital of France.",
    "The Eiffel Tower is in Paris.",
    "Berlin is in Germany.",
    "Volvo makes buses.",
    "Mount Everest is the highest mountain on Earth.",
    "Tokyo is in Japan.",
    "Water boils at 100 degrees.",
]
ZH = [
    "巴黎是法国的首都。",
    "埃菲尔铁塔在巴黎。",
    "柏林在德国。",
    "沃尔沃生产公共汽车。",
    "珠穆朗玛峰是地球上最高的山。",
    "东京在日本。",
    "水在100度沸腾。",
]


def corpus(lang: str, sentences: list[str]) -> Corpus:
    return Corpus(lang, "text", Path(f"{lang}.txt"), tuple(sentences), len(sentences), "0" * 64)


def brute_force_counts(model: torch.nn.Module, tokenizer, sentences: list[str]) -> dict[int, torch.Tensor]:
    """Eq. 4 the slow way: one sentence per forward (no padding, no chunks, with the output head), summing
    ``act_fn(h W1) > 0`` over every token position."""
    adapter = get_adapter(model)
    counts = {layer: torch.zeros(adapter.d_ffn, dtype=torch.long) for layer in range(adapter.n_layers)}

    def count(layer: int, out: torch.Tensor) -> None:  # returns None: the output stays as it is
        counts[layer] += (out[0] > 0).sum(0)

    handles = [
        adapter.activation_module(layer).register_forward_hook(lambda _m, _i, out, layer=layer: count(layer, out))
        for layer in range(adapter.n_layers)
    ]
    try:
        with torch.no_grad():
            for sentence in sentences:
                model(input_ids=torch.tensor([tokenizer(sentence)["input_ids"]]))
    finally:
        for handle in handles:
            handle.remove()
    return counts


# ---------------------------------------------------------------- Eq. 4-6 on tiny models


@pytest.mark.parametrize("family", ["qwen2", "gpt2", "bloom"])  # gated FFN (Eq. 3) and plain ones (Eq. 2)
def test_whole_corpus_counts_equal_a_brute_force_count(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_tiny_model(family).double()  # float64: batching cannot flip a sign near zero
    tokenizer = build_tiny_tokenizer()
    monkeypatch.setattr(lafn_study, "_CHUNK_BATCHES", 1)  # several count_activations chunks, summed
    progress: list[tuple[str, int, int]] = []
    study = run_lafn_study(
        model,
        tokenizer,
        [corpus("en", EN), corpus("zh", ZH)],
        beta=0.5,
        batch_size=3,
        progress=lambda *args: progress.append(args),
    )
    for lang, sentences in (("en", EN), ("zh", ZH)):
        expected = brute_force_counts(model, tokenizer, sentences)
        for layer in study.layers:
            assert torch.equal(study.counts[lang][layer], expected[layer]), (lang, layer)
        assert study.tokens[lang] == sum(len(tokenizer(s)["input_ids"]) for s in sentences)
    assert progress[-1] == ("zh", len(ZH), len(ZH)) and ("en", 3, len(EN)) in progress
    assert study.layers == (0, 1, 2, 3) and study.d_ffn == get_adapter(model).d_ffn


def test_selection_and_shared_set_follow_eq5_and_eq6() -> None:
    torch.manual_seed(1)
    counts = {lang: {layer: torch.randint(0, 50, (40,)) for layer in (2, 5)} for lang in ("en", "zh", "fr")}
    beta = 0.6
    study = select_study(counts, beta, d_ffn=40)
    for layer in (2, 5):
        sets = {}
        for lang in ("en", "zh", "fr"):
            c = counts[lang][layer].tolist()
            sets[lang] = {j for j, n in enumerate(c) if n / max(c) > beta}
            assert set(study.neurons[lang][layer].tolist()) == sets[lang]
        assert set(study.shared[layer].tolist()) == sets["en"] & sets["zh"] & sets["fr"]
        row = next(r for r in study.rows() if r.layer == layer)
        assert row.per_language == {lang: len(s) for lang, s in sets.items()}
        assert row.shared == len(sets["en"] & sets["zh"] & sets["fr"])
        assert row.shared_share["zh"] == pytest.approx(row.shared / len(sets["zh"]))
        assert row.shared_of_ffn == pytest.approx(row.shared / 40)
        assert row.chance == pytest.approx(40 * len(sets["en"]) * len(sets["zh"]) * len(sets["fr"]) / 40**3)


def test_layers_subset_and_negative_layers(tiny_tokenizer) -> None:
    model = build_tiny_model("llama")
    study = run_lafn_study(model, tiny_tokenizer, [corpus("en", EN[:3]), corpus("zh", ZH[:3])], layers=[1, -1])
    assert study.layers == (1, 3)
    with pytest.raises(ValueError, match="out of range"):
        run_lafn_study(model, tiny_tokenizer, [corpus("en", EN[:3]), corpus("zh", ZH[:3])], layers=[4])
    with pytest.raises(ValueError, match="at least 2 languages"):
        run_lafn_study(model, tiny_tokenizer, [corpus("en", EN[:3])])


def test_csv_columns_values_and_counts_round_trip(tmp_path: Path) -> None:
    counts = {
        "en": {0: torch.tensor([10, 9, 1, 0]), 1: torch.tensor([4, 4, 4, 0])},
        "zh": {0: torch.tensor([10, 1, 9, 8]), 1: torch.tensor([0, 0, 0, 0])},
    }
    study = select_study(counts, 0.5, d_ffn=4)
    path = write_csv(study, tmp_path / "lafns.csv")
    with open(path, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == csv_columns(["en", "zh"])
    assert csv_columns(["en", "zh"]) == [
        "layer",
        "d_ffn",
        "en",
        "zh",
        "shared",
        "shared_of_en",
        "shared_of_zh",
        "shared_of_ffn",
        "shared_by_chance",
    ]
    # layer 0: en {0, 1}, zh {0, 2, 3} -> shared {0}; layer 1: zh has no active neuron -> nothing shared
    assert rows[0] == {
        "layer": "0",
        "d_ffn": "4",
        "en": "2",
        "zh": "3",
        "shared": "1",
        "shared_of_en": "0.5",
        "shared_of_zh": "0.3333",
        "shared_of_ffn": "0.25",
        "shared_by_chance": "1.5",
    }
    assert rows[1]["zh"] == "0" and rows[1]["shared"] == "0" and rows[1]["shared_of_zh"] == "0.0"
    again = load_counts(save_counts(study, tmp_path / "counts.safetensors"))
    assert list(again) == ["en", "zh"]
    assert all(torch.equal(again[lang][layer], counts[lang][layer]) for lang in counts for layer in (0, 1))
    assert select_study(again, 0.5, 4).rows() == study.rows()


# ---------------------------------------------------------------- corpora


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_text_and_mzsre_corpora(tmp_path: Path) -> None:
    plain = write(tmp_path / "en.txt", "One  sentence.\n\nTwo.\n")
    text = load_corpus(f"en:{plain}")
    assert text.kind == "text" and text.sentences == ("One sentence.", "Two.") and text.available == 2
    folder = tmp_path / "mzsre"
    write(folder / "zsre_mend_train_en_3.txt", "Who made X?\tA\nWhere is Y?\tB\nWhat is Z?\tC\n")
    write(folder / "zsre_mend_train_cz_3.txt", "Kdo vyrobil X?\tA\nKde je Y?\nCo je Z?\tC\n")  # one answer lost
    en = load_corpus(f"en:{folder}")
    cs = load_corpus(f"cs:{folder}")  # the data set's own code for Czech is cz
    assert en.kind == cs.kind == "mzsre" and cs.source.name == "zsre_mend_train_cz_3.txt"
    assert en.sentences == ("Who made X?", "Where is Y?", "What is Z?")
    assert cs.sentences == ("Kdo vyrobil X?", "Kde je Y?", "Co je Z?")
    assert load_corpus(f"en:{folder / 'zsre_mend_train_en_3.txt'}").sentences == en.sentences  # the file itself
    assert load_corpus(f"en:text:{folder / 'zsre_mend_train_en_3.txt'}").sentences[0] == "Who made X? A"
    # a seeded sample by line index: aligned files stay aligned
    a, b = load_corpus(f"en:{folder}", limit=2, seed=3), load_corpus(f"cs:{folder}", limit=2, seed=3)
    assert [en.sentences.index(s) for s in a.sentences] == [cs.sentences.index(s) for s in b.sentences]
    assert a.sentences_sha256 == load_corpus(f"en:{folder}", limit=2, seed=3).sentences_sha256
    with pytest.raises(DataFormatError, match="no de file; its languages: cz, en"):
        load_corpus(f"de:{folder}")


def test_pararel_corpus_fills_subject_and_object(tmp_path: Path) -> None:
    folder = tmp_path / "pararel"
    write(folder / "patterns" / "P19.jsonl", '{"pattern": "[X] was born in [Y]."}\n{"pattern": "[X] is from [Y]."}\n')
    write(folder / "trex" / "P19.jsonl", "".join(f'{{"sub_label": "S{i}", "obj_label": "O{i}"}}\n' for i in range(3)))
    write(folder / "trex" / "P31.jsonl", '{"sub_label": "S", "obj_label": "O"}\n')  # no patterns: skipped
    full = load_corpus(f"en:{folder}")
    assert full.kind == "pararel" and full.available == 6
    assert set(full.sentences) == {f"S{i} {verb} O{i}." for i in range(3) for verb in ("was born in", "is from")}
    capped = load_corpus(f"en:{folder}", per_relation=4, seed=1)
    assert len(capped.sentences) == 4 and set(capped.sentences) <= set(full.sentences)
    assert len(load_corpus(f"en:{folder}", limit=2).sentences) == 2
    with pytest.raises(DataFormatError, match="English only"):
        load_corpus(f"zh:{folder}")


@pytest.mark.parametrize(
    ("spec", "error", "fragment"),
    [
        ("xx:{dir}/en.txt", UnknownLanguageError, "unknown language code 'xx'"),
        ("en:{dir}/missing.txt", DataFormatError, "no such file"),
        ("en:{dir}/empty.txt", DataFormatError, "holds no sentences"),
        ("en:{dir}/latin1.txt", DataFormatError, "not UTF-8"),
        ("{dir}/en.txt", DataFormatError, "is not LANG:PATH"),
        ("en:{dir}", DataFormatError, "neither PARAREL"),
    ],
)
def test_bad_corpus_specs(tmp_path: Path, spec: str, error: type, fragment: str) -> None:
    write(tmp_path / "en.txt", "A sentence.\n")
    write(tmp_path / "empty.txt", "\n  \n")
    (tmp_path / "latin1.txt").write_bytes("Caf\xe9 au lait.\n".encode("latin-1"))
    with pytest.raises(error, match=fragment):
        load_corpus(spec.format(dir=tmp_path))


def test_corpora_need_two_distinct_languages(tmp_path: Path) -> None:
    en = write(tmp_path / "en.txt", "A sentence.\n")
    with pytest.raises(DataFormatError, match="at least 2 languages, got 1"):
        load_corpora([f"en:{en}"])
    with pytest.raises(DataFormatError, match="language en has more than one corpus"):
        load_corpora([f"en:{en}", f"EN:{en}"])
    assert parse_corpus_spec(f"cz:mzsre:{en}").lang == "cs"


# ---------------------------------------------------------------- mkedit analyze lafns


@pytest.fixture
def corpora_files(tmp_path: Path) -> tuple[Path, Path]:
    return write(tmp_path / "en.txt", "\n".join(EN) + "\n"), write(tmp_path / "zh.txt", "\n".join(ZH) + "\n")


def invoke(*args: str):
    return CliRunner().invoke(cli.app, ["analyze", "lafns", *args])


def test_cli_end_to_end_on_a_saved_tiny_model(tmp_path: Path, corpora_files: tuple[Path, Path]) -> None:
    folder = tmp_path / "tiny-qwen2"
    build_tiny_model("qwen2").save_pretrained(str(folder))
    build_tiny_tokenizer().save_pretrained(str(folder))
    en, zh = corpora_files
    out = tmp_path / "study"
    common = ["--model", str(folder), "--corpus", f"en:{en}", "--corpus", f"zh:{zh}", "--device", "cpu"]
    result = invoke(*common, "--beta", "0.5", "--out", str(out))
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert {p.name for p in out.iterdir()} == {"lafns.csv", "lafns.png", "study.json", "counts.safetensors"}
    assert (out / "lafns.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "shared/FFN" in result.stdout and "most shared neurons in layers" in result.stdout
    assert "en sentences" in result.stderr  # progress on stderr
    study = json.loads((out / "study.json").read_text(encoding="utf-8"))
    assert study["beta"] == 0.5 and study["d_ffn"] == 128 and study["layers_counted"] == [0, 1, 2, 3]
    assert [(c["lang"], c["sentences"], c["kind"]) for c in study["corpora"]] == [("en", 7, "text"), ("zh", 7, "text")]
    assert all(len(c["source_sha256"]) == 64 and len(c["sentences_sha256"]) == 64 for c in study["corpora"])
    with open(out / "lafns.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["layer"]) for r in rows] == [0, 1, 2, 3] and study["rows"][0]["shared"] == int(rows[0]["shared"])

    as_json = invoke(*common, "--layers", "0,-1", "--json", "--out", str(tmp_path / "two"))
    assert as_json.exit_code == 0, as_json.stderr
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [line["layer"] for line in lines] == [0, 3] and list(lines[0]) == csv_columns(["en", "zh"])


@pytest.fixture
def tiny_loaded(monkeypatch: pytest.MonkeyPatch) -> LoadedModel:
    """The tiny gated model as ``mkedit analyze`` loads it (no files written)."""
    loaded = LoadedModel(build_tiny_model("llama"), build_tiny_tokenizer(), "tiny-llama")
    monkeypatch.setattr(cli_analyze, "load_quietly", lambda *args, **kwargs: loaded)
    return loaded


def test_cli_without_matplotlib_names_the_pip_line_and_still_writes_the_csv(
    tiny_loaded, corpora_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_analyze, "matplotlib_available", lambda: False)
    en, zh = corpora_files
    result = invoke("--corpus", f"en:{en}", "--corpus", f"zh:{zh}", "--out", str(tmp_path / "o"), "--json")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "o" / "lafns.csv").is_file() and not (tmp_path / "o" / "lafns.png").exists()
    assert "pip install 'mkedit[analysis]'" in result.stderr


def test_cli_layer_out_of_range_is_one_error_line(tiny_loaded, corpora_files, tmp_path: Path) -> None:
    en, zh = corpora_files
    result = invoke("--corpus", f"en:{en}", "--corpus", f"zh:{zh}", "--layers", "2,9", "--out", str(tmp_path / "o"))
    assert_one_error_line(result, "--layers 2,9", "out of range")


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although the input was already known to be bad")

    monkeypatch.setattr(cli_analyze, "load_quietly", refuse)


@pytest.mark.parametrize(
    ("corpus_args", "extra", "fragments"),
    [
        (["xx:{en}", "zh:{zh}"], [], ["unknown language code 'xx'"]),
        (["en:{en}", "zh:{dir}/missing.txt"], [], ["no such file"]),
        (["en:{en}"], [], ["at least 2 languages, got 1"]),
        ([], [], ["at least 2 languages, got 0"]),
        (["en:{en}", "zh:{zh}"], ["--layers", "one,two"], ["--layers 'one,two'"]),
        (["en:{en}", "zh:{zh}"], ["--beta", "1"], ["selects no neuron"]),
    ],
)
def test_cli_bad_input_fails_before_loading_the_model(
    no_model, corpora_files, tmp_path: Path, corpus_args: list[str], extra: list[str], fragments: list[str]
) -> None:
    en, zh = corpora_files
    args = [a for spec in corpus_args for a in ("--corpus", spec.format(en=en, zh=zh, dir=tmp_path))]
    result = invoke(*args, *extra, "--out", str(tmp_path / "o"))
    assert_one_error_line(result, *fragments)
    assert not (tmp_path / "o").exists()


def assert_one_error_line(result, *fragments: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
