"""Loading benchmark/edit files in every supported layout, their error messages, and the data check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mkedit.cli_data import data_app
from mkedit.data import check_records, load_edit_groups, load_records, parse_record, render_report
from mkedit.errors import DataFormatError
from mkedit.runtime.subject import find_subject
from mkedit.types import EditGroup
from mkedit.types import TestCase as Case

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def part(subject: str, src: str, alt: str, **extra: Any) -> dict[str, Any]:
    return {"subject": subject, "src": src, "alt": alt, **extra}


def port(question: str, answer: str) -> dict[str, str]:
    return {"New Question": question, "New Answer": answer}


# Three records in the merged MzsRE layout. Subjects in `src`:
#   cz: Mavis Villiersová is inflected in record 0 (placed by the English "Mavis Villiers" + ending), verbatim in 1, 2.
#   ru: verbatim in 0, translated differently in 1 (not found), inflected in 2 (approximate).
MERGED: list[dict[str, Any]] = [
    {
        "en": part(
            "Mavis Villiers",
            "What was the cause of death of Mavis Villiers?",
            "stroke",
            rephrase="Why did Mavis Villiers die?",
            loc="nq question: who wrote hamlet",
            loc_ans="William Shakespeare",
            portability=port("Which organ does the illness that killed Mavis Villiers affect?", "brain"),
        ),
        "zh": part(
            "梅维斯·维利尔斯",
            "梅维斯·维利尔斯的死因是什么？",
            "中风",
            rephrase="梅维斯·维利尔斯是怎么死的？",
            loc="谁写了哈姆雷特",
            loc_ans="威廉·莎士比亚",
        ),
        "cz": part(
            "Mavis Villiersová",
            "Jaká byla příčina smrti Mavis Villiersové?",
            "mrtvice",
            rephrase="Proč zemřela Mavis Villiersová?",
            portability=port("Který orgán postihuje nemoc, na kterou zemřela Mavis Villiersová?", "mozek"),
        ),
        "du": part("Mavis Villiers", "Wat was de doodsoorzaak van Mavis Villiers?", "beroerte"),
        "ru": part("Мэвис Вильерс", "Какова причина смерти Мэвис Вильерс?", "инсульт"),
    },
    {
        "en": part(
            "Call the Doctor",
            "Which artist created Call the Doctor?",
            "Sleater-Kinney",
            rephrase="Who made Call the Doctor?",
            portability=port("Which city is the artist behind Call the Doctor from?", "Olympia"),
        ),
        "zh": part("呼叫医生", "哪位艺术家创作了《呼叫医生》？", "Sleater-Kinney"),
        "cz": part("Call the Doctor", "Který umělec vytvořil Call the Doctor?", "Sleater-Kinney"),
        "du": part("Call the Doctor", "Welke artiest maakte Call the Doctor?", "Sleater-Kinney"),
        "ru": part("Позвонить доктору", "Какой художник создал «Вызовите доктора»?", "Sleater-Kinney"),
    },
    {
        "en": part("Ramesses V", "What disease killed Ramesses V?", "smallpox"),
        "zh": part("拉美西斯五世", "拉美西斯五世死于什么疾病？", "天花"),
        "cz": part("Ramesse V.", "Jaká nemoc zabila Ramesse V.?", "neštovice"),
        "du": part("Ramses V", "Aan welke ziekte stierf Ramses V?", "pokken"),
        "ru": part("Рамсес V", "Какая болезнь убила Рамсеса V?", "оспа"),
    },
]


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


@pytest.fixture
def merged_file(tmp_path: Path) -> Path:
    return write_json(tmp_path / "mzsre_mini.json", MERGED)


# --- layouts -------------------------------------------------------------------------------------


def test_merged_layout_builds_groups_and_tests(merged_file: Path) -> None:
    records = load_records(merged_file)
    assert [r.record_id for r in records] == ["mzsre_mini:0", "mzsre_mini:1", "mzsre_mini:2"]
    first = records[0]
    assert first.group.langs == ["en", "zh", "cs", "nl", "ru"]  # aliases normalised, record order kept
    assert first.group.group_id == "mzsre_mini:0"
    en = first.group.request("en")
    assert (en.subject, en.question, en.answer) == (
        "Mavis Villiers",
        "What was the cause of death of Mavis Villiers?",
        "stroke",
    )
    assert all(req.paraphrases == () for req in first.group.requests)  # test inputs never edit
    assert first.tests["en"] == {
        "reliability": Case("What was the cause of death of Mavis Villiers?", "stroke"),
        "generality": Case("Why did Mavis Villiers die?", "stroke"),
        "locality": Case("nq question: who wrote hamlet", "William Shakespeare"),
        "portability": Case("Which organ does the illness that killed Mavis Villiers affect?", "brain"),
    }
    assert set(first.tests["zh"]) == {"reliability", "generality", "locality"}
    assert set(first.tests["cs"]) == {"reliability", "generality", "portability"}
    assert set(first.tests["nl"]) == {"reliability"}


def test_pair_layout(tmp_path: Path) -> None:
    pairs = [{"en": rec["en"], "zh": rec["zh"]} for rec in MERGED]
    path = write_json(tmp_path / "mzsre_test_duplicate_enzh.json", pairs)
    records = load_records(path)
    assert len(records) == 3
    assert all(r.group.langs == ["en", "zh"] for r in records)
    assert records[1].record_id == "mzsre_test_duplicate_enzh:1"
    assert records[1].group.request("zh").subject == "呼叫医生"


def test_jsonl_edit_file(tmp_path: Path) -> None:
    lines = [
        json.dumps({"en": part("Rome", "Rome is the capital of", "France"), "cz": part("Řím", "Řím je", "Paříž")}),
        "",
        json.dumps(
            {"du": part("Amsterdam", "Amsterdam ligt in", "België", paraphrases=["De stad Amsterdam ligt in"])},
            ensure_ascii=False,
        ),
    ]
    path = tmp_path / "edits.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    groups = load_edit_groups(path)
    assert all(isinstance(g, EditGroup) for g in groups)
    assert [g.langs for g in groups] == [["en", "cs"], ["nl"]]
    assert [g.group_id for g in groups] == ["edits:0", "edits:1"]
    assert groups[1].request("nl").paraphrases == ("De stad Amsterdam ligt in",)
    records = load_records(path)
    assert set(records[0].tests["cs"]) == {"reliability"}


def test_json_list_edit_file_and_single_object(tmp_path: Path) -> None:
    one = {"en": part("Rome", "Rome is the capital of", "France")}
    assert len(load_edit_groups(write_json(tmp_path / "list.json", [one, one]))) == 2
    assert load_edit_groups(write_json(tmp_path / "one.json", one))[0].langs == ["en"]
    # Several objects in a file named .json are read as JSONL.
    (tmp_path / "multi.json").write_text(json.dumps(one) + "\n" + json.dumps(one) + "\n", encoding="utf-8")
    assert len(load_edit_groups(tmp_path / "multi.json")) == 2


def test_language_aliases_and_filter(merged_file: Path) -> None:
    records = load_records(merged_file, langs=["du", "cz"])
    assert records[0].group.langs == ["nl", "cs"]  # filter order
    assert set(records[0].tests) == {"nl", "cs"}
    assert records[0].group.request("cz").subject == "Mavis Villiersová"


def test_langs_filter_missing_language_names_record(merged_file: Path) -> None:
    with pytest.raises(DataFormatError, match=r"mzsre_mini\.json: record 0: has no language \['fr'\]"):
        load_records(merged_file, langs=["en", "fr"])


def test_limit_offset_keep_stable_ids(merged_file: Path) -> None:
    ids = [r.record_id for r in load_records(merged_file, limit=2, offset=1)]
    assert ids == ["mzsre_mini:1", "mzsre_mini:2"]
    assert [r.record_id for r in load_records(merged_file, limit=1)] == ["mzsre_mini:0"]
    assert load_records(merged_file, offset=5) == []
    with pytest.raises(ValueError, match="offset"):
        load_records(merged_file, offset=-1)


# --- errors --------------------------------------------------------------------------------------


def test_missing_field_message_names_file_record_language_field(tmp_path: Path) -> None:
    bad = [MERGED[0], {"en": part("A", "q?", "x"), "fr": {"subject": "A", "src": "q ?"}}]
    path = write_json(tmp_path / "mzsre_test.json", bad)
    with pytest.raises(DataFormatError) as info:
        load_records(path)
    assert str(info.value) == "mzsre_test.json: record 1, language 'fr': field 'alt' is missing"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"alt": 2006}, "field 'alt' must be a non-empty string, got 2006"),
        ({"src": "  "}, "field 'src' must be a non-empty string"),
        ({"loc": "who?"}, "field 'loc_ans' is missing (needed together with 'loc')"),
        ({"portability": {"New Question": "q?"}}, "field 'portability.New Answer' is missing"),
        ({"portability": "q?"}, "field 'portability' must be an object"),
        ({"paraphrases": "p"}, "field 'paraphrases' must be a list of non-empty strings"),
    ],
)
def test_bad_field_values(fields: dict[str, Any], expected: str) -> None:
    raw = {"en": {**part("S", "S is?", "x"), **fields}}
    with pytest.raises(DataFormatError) as info:
        parse_record(raw, source="f.json", index=3)
    assert str(info.value).startswith("f.json: record 3, language 'en': ")
    assert expected in str(info.value)


def test_unknown_language_includes_language_error(tmp_path: Path) -> None:
    path = write_json(tmp_path / "x.json", [{"en": part("S", "S?", "a"), "xx": part("S", "S?", "a")}])
    with pytest.raises(DataFormatError) as info:
        load_records(path)
    message = str(info.value)
    assert message.startswith("x.json: record 0, language 'xx': ")
    assert "unknown language code 'xx'" in message and "cz->cs" in message
    # With a filter, parts in other languages are neither required nor validated.
    assert load_records(path, langs=["en"])[0].group.langs == ["en"]


def test_duplicate_language_via_alias() -> None:
    raw = {"cz": part("S", "S?", "a"), "cs": part("S", "S?", "a")}
    with pytest.raises(DataFormatError, match="appears twice"):
        parse_record(raw, source="f.json", index=0)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("bad.json", '[{"en": {"subject": "S",}}]', r"bad\.json: line 1: not valid JSON"),
        ("bad.jsonl", '{"en": {}}\n\n{"en": oops}\n', r"bad\.jsonl: line 3: not valid JSON"),
        ("list.jsonl", "[1, 2]\n", r"list\.jsonl: line 1: expected one JSON object"),
        ("empty.json", "  \n", r"empty\.json: the file is empty"),
        ("empty_list.json", "[]", r"empty_list\.json: the file holds no records"),
        ("number.json", "42", r"number\.json: expected a JSON list of records, got int"),
        ("strings.json", '["a"]', r"strings\.json: record 0: expected an object keyed by language"),
        ("wrapped.json", '{"data": [1]}', r"wrapped\.json: expected a JSON list of records"),
        ("text.txt", "question\tanswer\n", r"text\.txt: line 1: not valid JSON"),
    ],
)
def test_malformed_files(tmp_path: Path, name: str, content: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError, match=expected):
        load_records(path)


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no such file"):
        load_records(tmp_path / "nope.json")
    (tmp_path / "latin1.json").write_bytes('[{"en": "é"}]'.encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"latin1\.json: not UTF-8"):
        load_records(tmp_path / "latin1.json")


# --- check ---------------------------------------------------------------------------------------


def test_check_counts_verbatim_approximate_not_placed(merged_file: Path) -> None:
    report = check_records(load_records(merged_file))
    assert list(report.languages) == ["en", "zh", "cs", "nl", "ru"]
    src = {code: check.fields["src"] for code, check in report.languages.items()}
    kinds = ("verbatim", "other_language", "approximate", "not_placed")
    assert [getattr(src["en"], k) for k in kinds] == [3, 0, 0, 0]
    # record 0: "Mavis Villiersové" holds the English "Mavis Villiers", taken with its ending
    assert [getattr(src["cs"], k) for k in kinds] == [2, 1, 0, 0]
    assert [getattr(src["ru"], k) for k in kinds] == [1, 0, 1, 1]
    assert report.languages["cs"].records == 3
    assert report.languages["cs"].fields["rephrase"].verbatim == 1  # only record 0 has one
    assert report.languages["nl"].fields["portability"].total == 0
    assert [(m.record_id, m.lang, m.field) for m in report.unplaced] == [("mzsre_mini:1", "ru", "src")]
    surfaces = {(a.record_id, a.lang): a.surface for a in report.approximate}
    assert surfaces == {("mzsre_mini:2", "ru"): "Рамсеса V"}
    json.dumps(report.to_dict(), ensure_ascii=False)  # serialisable


def test_check_langs_filter_and_render(merged_file: Path) -> None:
    report = check_records(load_records(merged_file), langs=["ru", "cz"])
    assert list(report.languages) == ["ru", "cs"]
    table = render_report(report)
    assert table.row_count == 2
    assert [c.header for c in table.columns] == ["lang", "records", "src", "rephrase", "portability"]


# The approximate matcher's span must hug the subject: whole words, no trailing "?" or next word.
@pytest.mark.parametrize(
    ("text", "subject", "surface"),
    [
        ("Какова дата смерти Томаса Фарнеби?", "Томас Фарнаби", "Томаса Фарнеби"),
        ("Jakého pohlaví je Ashleigh Hewson?", "Ashleigh Hewsonová", "Ashleigh Hewson"),
        ("S jakým městem je Gretta Taslakian spojena?", "Gretta Taslakianová", "Gretta Taslakian"),
        ("Дата рождения Миры В.?", "Мира В.", "Миры В."),
        (
            "В каком конфликте участвовал военный корабль США «Брокенборо» (1862 г.)?",
            "Военный корабль США Брокенборо (1862 г.)",
            "военный корабль США «Брокенборо» (1862 г.)",
        ),
        (
            "มีการแข่งขันกีฬาสำคัญอะไรบ้างที่เกิดขึ้นในวันที่เทอร์รี เจนนิงส์เสียชีวิต",
            "เทอร์รี่ เจนนิงส์",
            "เทอร์รี เจนนิงส์",
        ),
    ],
)
def test_approximate_spans_are_tight(text: str, subject: str, surface: str) -> None:
    span = find_subject(text, subject)
    assert span is not None and span.kind == "approximate"
    assert span.surface == surface == text[span.start : span.end]


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_check_table_and_json(merged_file: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(data_app, ["check", str(merged_file), "--langs", "en,cz,ru"])
    assert result.exit_code == 0, result.output
    assert "3 records" in result.output and "cs" in result.output
    assert "mzsre_mini:1 [ru] src" in result.output

    result = runner.invoke(data_app, ["check", str(merged_file), "--limit", "2", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["records"] == 2
    assert payload["languages"]["cs"]["fields"]["src"] == {
        "verbatim": 1,
        "other_language": 1,
        "approximate": 0,
        "not_placed": 0,
    }
    assert payload["unplaced"][0]["record_id"] == "mzsre_mini:1"


def test_cli_check_reports_errors(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("[{", encoding="utf-8")
    result = CliRunner().invoke(data_app, ["check", str(path)])
    assert result.exit_code == 1
    assert "broken.json: line 1" in result.output


# --- real data (CI has it at ../shared/data) -----------------------------------------------------


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared benchmark data not available")
def test_real_benchmark_files_load() -> None:
    merged = load_records(SHARED_DATA / "mzsre" / "mzsre_test.json")
    assert len(merged) == 743
    assert merged[0].group.langs == ["en", "cs", "de", "nl", "es", "fr", "pt", "ru", "th", "tr", "vi", "zh"]
    assert all(len(r.group.requests) == 12 and len(r.tests["fr"]) == 4 for r in merged)
    for pair in ("enzh", "ende"):
        l1, l2 = pair[:2], pair[2:]
        records = load_records(SHARED_DATA / "mzsre" / "original" / f"mzsre_test_duplicate_{pair}.json")
        assert len(records) == 743
        assert records[0].group.langs == [l1, l2]
        # Each language's part is identical in the merged file and the pair file.
        assert [r.tests for r in records] == [{c: r.tests[c] for c in (l1, l2)} for r in merged]
    bizsre = load_records(SHARED_DATA / "bizsre" / "bizsre_test.json")
    assert len(bizsre) == 1037
    assert all(r.group.langs == ["en", "zh"] for r in bizsre)
    report = check_records(merged, langs=["en", "zh", "cz"])
    assert [report.languages[c].fields["src"].verbatim for c in ("en", "zh", "cs")] == [743, 743, 428]
