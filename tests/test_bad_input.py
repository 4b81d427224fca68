"""Bad input gets one clear ``error: ...`` line on stderr and a non-zero exit, never a traceback or garbage:
hand-edited caches, empty questions, edit files where nothing can be edited, paths that hold no model,
``data check --strict``, the report folder, and Ctrl-C in long runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mkedit.cli as cli
import mkedit.cli_eval as cli_eval
import mkedit.runtime.cache as cache_module
from conftest import build_tiny_model, build_tiny_tokenizer
from mkedit.data.editable import editable_groups
from mkedit.errors import CacheError, ModelLoadError, NothingToEditError, SubjectNotFoundError
from mkedit.methods.lu_lafns.config import LuLafnConfig
from mkedit.methods.lu_lafns.editor import LuLafnEditor
from mkedit.models import load_model
from mkedit.models.fingerprint import model_fingerprint
from mkedit.models.loader import LoadedModel
from mkedit.runtime.cache import INDEX_FILE, Edit, EditCache
from mkedit.runtime.deltas import neuron_deltas, neuron_tensors
from mkedit.runtime.edited_model import EditedModel
from mkedit.types import EditGroup, EditRequest

NAME = "tiny-llama"
SUBJECT = "Volvo B12M"
QUESTION = "Who makes the Volvo B12M?"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_tiny_model("llama", seed=0)  # 4 layers, 128 FFN neurons


@pytest.fixture
def loaded(model, monkeypatch: pytest.MonkeyPatch) -> LoadedModel:
    """The tiny model as ``mkedit`` commands load it (``load_quietly`` patched: no files, no packaged model)."""
    result = LoadedModel(model, build_tiny_tokenizer(), NAME)
    monkeypatch.setattr(cli, "load_quietly", lambda *args, **kwargs: result)
    monkeypatch.setattr(cli_eval, "load_model", lambda *args, **kwargs: result)
    return result


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands that must fail before loading any model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although the input was already known to be bad")

    monkeypatch.setattr(cli, "load_quietly", refuse)
    monkeypatch.setattr(cli_eval, "load_model", refuse)


def invoke(*args: str):
    return CliRunner().invoke(cli.app, list(args))


def assert_one_error_line(result, *fragments: str, code: int = 1) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert result.stdout == "", result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


# ---------------------------------------------------------------- 1. hand-edited caches


def lu_config() -> dict:
    return LuLafnConfig(layers=(1, 3)).to_dict()


def neuron_edit(edit_id: str = "e1", subject: str = SUBJECT, tensors: dict | None = None) -> Edit:
    if tensors is None:
        tensors = neuron_tensors({1: (torch.tensor([3, 7, 9]), torch.tensor([0.5, -1.0, 2.0]))})
    return Edit(edit_id, {"en": [subject]}, tensors, {"answers": {"en": "Volkswagen"}}, "lu-lafns")


def save_cache(model, folder: Path, *edits: Edit, config: dict | None = None) -> Path:
    cache = EditCache(model_fingerprint(model, NAME), "lu-lafns", lu_config() if config is None else config)
    for edit in edits or (neuron_edit(),):
        cache.add(edit)
    return cache.save(folder)


def format_2_cache(model, folder: Path, record: dict) -> Path:
    """A cache whose records are in ``cache.json`` (format 2), as a person would hand-edit them."""
    from safetensors.torch import save_file

    from mkedit.models.loader import sha256_file

    folder.mkdir()
    tensors = neuron_tensors({1: (torch.tensor([3, 7]), torch.tensor([0.5, -1.0]))})
    save_file({f"e1/{name}": t for name, t in tensors.items()}, str(folder / "deltas-0.safetensors"))
    index = {
        "format": "mkedit-edit-cache",
        "version": 2,
        "model": model_fingerprint(model, NAME).to_dict(),
        "method": "lu-lafns",
        "method_config": lu_config(),
        "tensors_file": "deltas-0.safetensors",
        "tensors_sha256": sha256_file(folder / "deltas-0.safetensors"),
        "edits": [{"id": "e1", "subjects": {"en": [SUBJECT]}, "tensors": sorted(tensors), "info": {}, **record}],
    }
    (folder / INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ({"subjects": {"en": SUBJECT}}, "subjects['en'] must be a list of strings, not one string"),
        ({"subjects": {"en": [SUBJECT, ""]}}, "non-empty strings"),
        ({"subjects": {"en": [SUBJECT, 7]}}, "non-empty strings"),
        ({"subjects": [SUBJECT]}, "subjects must be an object"),
        ({"id": ""}, "id must be a non-empty string"),
        ({"id": 12}, "id must be a non-empty string"),
        ({"info": ["x"]}, "info must be an object"),
        ({"tensors": "1/idx"}, "tensors must be a list"),
    ],
)
def test_hand_edited_records_are_refused(model, tmp_path: Path, record: dict, fragment: str) -> None:
    folder = format_2_cache(model, tmp_path / "cache", record)
    with pytest.raises(CacheError, match="cache") as err:
        EditCache.load(folder)
    assert fragment in str(err.value)


def test_a_valid_format_2_cache_still_loads(model, tmp_path: Path) -> None:
    cache = EditCache.load(format_2_cache(model, tmp_path / "cache", {}), model)
    assert cache.get("e1").subjects == {"en": [SUBJECT]}


def test_records_in_shards_are_checked_too(model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A v3 shard whose records hold a string of subjects (each character would be a trigger)."""
    real = cache_module._record
    monkeypatch.setattr(cache_module, "_record", lambda edit: {**real(edit), "subjects": {"en": SUBJECT}})
    folder = save_cache(model, tmp_path / "cache")
    monkeypatch.undo()
    with pytest.raises(CacheError, match=r"edit 'e1': subjects\['en'\] must be a list of strings"):
        EditCache.load(folder)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda index: index["method_config"].update(site="mlp_out"), "method_config.site must be one of act_fn"),
        (lambda index: index.update(method_config=[1]), "method_config must be an object"),
        (lambda index: index.update(method=""), "method must be a method name"),
        (lambda index: index["shards"][0].update(file="../elsewhere.safetensors"), "must be a file name"),
        (lambda index: index.update(removed=[["e1"]]), "removed[0] must be a pair"),
    ],
)
def test_hand_edited_index_is_refused(model, tmp_path: Path, change, fragment: str) -> None:
    folder = save_cache(model, tmp_path / "cache")
    index = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
    change(index)
    (folder / INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(CacheError) as err:
        EditCache.load(folder)
    assert fragment in str(err.value)


def test_adapters_refuse_an_unknown_site(model) -> None:
    from mkedit.arch import get_adapter

    with pytest.raises(ValueError, match="unknown neuron site 'mlp_out'"):
        get_adapter(model).site_module(0, "mlp_out")  # type: ignore[arg-type]


def raw_tensors(idx: list[int], val: list[float], layer: int = 1, dtype=torch.int16) -> dict[str, torch.Tensor]:
    return {f"{layer}/idx": torch.tensor(idx, dtype=dtype), f"{layer}/val": torch.tensor(val)}


@pytest.mark.parametrize(
    ("tensors", "fragment"),
    [
        (raw_tensors([3, -2], [1.0, 2.0]), "negative neuron index (-2)"),
        (raw_tensors([3, 500], [1.0, 2.0]), "neuron index 500, out of range for an FFN of 128 neurons"),
        (raw_tensors([3, 4], [1.0, 2.0], layer=9), "layer 9 is out of range for a 4-layer model"),
        (raw_tensors([3, 4, 5], [1.0, 2.0]), "3 neuron indices but 2 values"),
        ({"1/idx": torch.tensor([3.0, 4.0]), "1/val": torch.tensor([1.0, 2.0])}, "expected integer indices"),
        ({"1/val": torch.tensor([1.0])}, "tensor 1/idx is missing"),
        ({"-1/idx": torch.tensor([3], dtype=torch.int16), "-1/val": torch.tensor([1.0])}, "negative layer index"),
    ],
)
def test_bad_stored_neurons_fail_when_first_decoded(model, tmp_path: Path, tensors: dict, fragment: str) -> None:
    """Loading stays lazy (no tensor is read); the first use of the edit raises a CacheError naming it."""
    folder = save_cache(model, tmp_path / "cache", neuron_edit("bad-edit", tensors=tensors))
    cache = EditCache.load(folder, model)  # loads: tensors are checked when decoded
    with pytest.raises(CacheError, match="edit 'bad-edit'") as err:
        EditedModel(model, build_tiny_tokenizer(), cache).ask([QUESTION], max_new_tokens=1)
    assert fragment in str(err.value)


def test_good_neurons_decode_with_model_ranges(model) -> None:
    deltas = neuron_deltas(neuron_edit(), n_layers=4, width=128)
    assert deltas[1][0].tolist() == [3, 7, 9]


def test_ask_with_a_damaged_cache_prints_one_error_line(tmp_path: Path, no_model) -> None:
    """A cache refused on load is refused before the model loads."""
    folder = tmp_path / "cache"
    format_2_cache(build_tiny_model("llama"), folder, {"subjects": {"en": SUBJECT}})
    result = invoke("ask", "--cache", str(folder), QUESTION)
    assert_one_error_line(result, "must be a list of strings")


def test_ask_with_out_of_range_neurons_prints_one_error_line(model, loaded, tmp_path: Path) -> None:
    folder = save_cache(model, tmp_path / "cache", neuron_edit("e9", tensors=raw_tensors([3, 4000], [1.0, 2.0])))
    result = invoke("ask", "--cache", str(folder), "--max-new-tokens", "1", QUESTION)
    assert_one_error_line(result, "edit 'e9'", "neuron index 4000, out of range")


# ---------------------------------------------------------------- 2. empty questions


@pytest.mark.parametrize(("questions", "number"), [([""], "1"), (["Who leads Russia?", "  "], "2")])
def test_empty_questions_are_refused_before_loading(no_model, questions: list[str], number: str) -> None:
    result = invoke("ask", *questions)
    assert_one_error_line(result, f"question {number} is empty")


# ---------------------------------------------------------------- 3. nothing to edit


def write_edits(path: Path, groups: list[dict]) -> Path:
    path.write_text(json.dumps(groups, ensure_ascii=False), encoding="utf-8")
    return path


UNPLACEABLE = {"id": "g1", "en": {"subject": "Zyxwvut", "src": QUESTION, "alt": "Volkswagen"}}
PLACEABLE = {"id": "g2", "en": {"subject": SUBJECT, "src": QUESTION, "alt": "Volkswagen"}}


def test_edit_with_no_editable_group_fails_before_loading(tmp_path: Path, no_model) -> None:
    edits = write_edits(tmp_path / "edits.json", [UNPLACEABLE])
    result = invoke("edit", "--edits", str(edits), "--out", str(tmp_path / "out"))
    assert_one_error_line(result, "nothing to edit", "edits.json")
    assert "skipped g1" in result.stderr and "'Zyxwvut' not in" in result.stderr
    assert not (tmp_path / "out").exists()


def test_editable_groups_leave_out_unplaceable_languages() -> None:
    both = EditGroup(
        (EditRequest("en", SUBJECT, QUESTION, "VW"), EditRequest("fr", "Zyxwvut", "Qui dirige la Russie ?", "X")),
        "g1",
    )
    alone = EditGroup((EditRequest("en", "Zyxwvut", "Who leads Russia?", "Boris"),), "g2")
    notes: list[str] = []
    kept = editable_groups([both, alone], True, notes.append)
    assert [(g.group_id, g.langs) for g in kept] == [("g1", ["en"])]
    assert notes[0].startswith("g1: leaving out fr") and notes[1].startswith("skipped g2")
    assert editable_groups([alone], False) == [alone]  # weight edits do not need the subject's position
    with pytest.raises(NothingToEditError, match="all 1 group"):
        editable_groups([alone], True)


def test_edit_exits_1_when_every_group_fails_to_edit(loaded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups that pass the pre-check but whose edit fails: exit 1, no cache folder, not "0 edit(s)"."""

    def fail(*args, **kwargs):
        raise SubjectNotFoundError("no token covers the subject")

    monkeypatch.setattr(LuLafnEditor, "edit", fail)
    monkeypatch.setattr(LuLafnEditor, "edit_facts", fail, raising=False)
    edits = write_edits(tmp_path / "edits.json", [PLACEABLE])
    result = invoke("edit", "--edits", str(edits), "--out", str(tmp_path / "out"), "--set", "layers=1,3")
    assert_one_error_line(result, "nothing was edited", "was not created")
    assert "no token covers the subject" in result.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 4. paths that hold no model


def test_a_gguf_path_that_is_not_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("fake.gguf").write_text("not a model", encoding="utf-8")
    with pytest.raises(ModelLoadError, match=r"^\./fake\.gguf is not a GGUF file \(bad magic"):
        load_model("./fake.gguf", device="cpu")
    result = invoke("ask", "--model", "./fake.gguf", "--device", "cpu", QUESTION)
    assert_one_error_line(result, "./fake.gguf is not a GGUF file (bad magic")


def test_a_folder_without_a_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("folder").mkdir()
    (Path("folder") / "notes.txt").write_text("hello", encoding="utf-8")
    expected = "./folder has no model: expected config.json with model weights (*.safetensors / *.bin) or a .gguf file"
    with pytest.raises(ModelLoadError) as err:
        load_model("./folder", device="cpu")
    assert str(err.value) == expected
    (Path("folder") / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match=r"it holds model\.gguf: pass that file as --model"):
        load_model("./folder", device="cpu")
    result = invoke("ask", "--model", "./folder", "--device", "cpu", QUESTION)
    assert_one_error_line(result, "./folder has no model")


def test_a_model_folder_without_tokenizer(model, tmp_path: Path) -> None:
    model.save_pretrained(str(tmp_path / "m"))
    with pytest.raises(ModelLoadError, match="has no tokenizer"):
        load_model(str(tmp_path / "m"), device="cpu")


# ---------------------------------------------------------------- 5. streams, data check --strict, report folder


@pytest.mark.parametrize(
    "args",
    [
        ["edit", "--edits", "{tmp}/missing.json", "--out", "{tmp}/out"],
        ["ask", "--cache", "{tmp}/missing", QUESTION],
        ["eval", "--data", "{tmp}/missing.json", "--out", "{tmp}/run"],
        ["report", "{tmp}/missing"],
        ["data", "check", "{tmp}/missing.json"],
        ["demo", "--model", "{tmp}/missing.gguf"],
        ["edit", "--edits", "{tmp}/missing.json", "--out", "{tmp}/out", "--set", "[bold]x"],
    ],
)
def test_every_command_prints_errors_on_stderr(tmp_path: Path, no_model, args: list[str]) -> None:
    result = invoke(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    line = assert_one_error_line(result)
    if "--set" in args:
        assert "[bold]x" in line  # markup in a message is printed as text, not interpreted


def test_data_check_strict(tmp_path: Path) -> None:
    path = write_edits(tmp_path / "edits.json", [UNPLACEABLE, PLACEABLE])
    plain = invoke("data", "check", str(path))
    assert plain.exit_code == 0 and "Subject not found" in plain.stdout
    strict = invoke("data", "check", "--strict", str(path))
    assert strict.exit_code == 1
    assert "error: 1 record field(s) whose subject was not found (--strict)" in strict.stderr
    as_json = invoke("data", "check", "--strict", "--json", str(path))
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["unplaced"]
    fine = invoke("data", "check", "--strict", str(write_edits(tmp_path / "ok.json", [PLACEABLE])))
    assert fine.exit_code == 0, fine.stderr
    assert "--strict" in invoke("data", "check", "--help").stdout


def summary_dir(folder: Path) -> Path:
    from mkedit.runtime.atomic import write_json_atomic
    from test_report import _summary

    write_json_atomic(folder / "summary.json", _summary())
    return folder


def test_report_writes_next_to_the_run_never_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = summary_dir(tmp_path / "run")
    result = invoke("report", str(run))
    assert result.exit_code == 0, result.stderr
    assert (run / "report" / "report.md").is_file() and not (tmp_path / "mkedit-report").exists()
    several = invoke("report", str(run), str(summary_dir(tmp_path / "other")))
    assert_one_error_line(several, "give --out")
    out = invoke("report", str(run), str(tmp_path / "other"), "--out", str(tmp_path / "both"))
    assert out.exit_code == 0 and (tmp_path / "both" / "report.md").is_file()


# ---------------------------------------------------------------- 6. Ctrl-C


def test_ctrl_c_in_edit_says_what_was_saved(model, loaded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = save_cache(
        model, tmp_path / "cache", neuron_edit("e1", "Russia"), neuron_edit("e2", "Boris"), config=lu_config()
    )

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(LuLafnEditor, "edit", interrupt)
    monkeypatch.setattr(LuLafnEditor, "edit_facts", interrupt, raising=False)
    edits = write_edits(tmp_path / "edits.json", [PLACEABLE])
    result = invoke("edit", "--edits", str(edits), "--out", str(out))
    assert result.exit_code == 130, (result.stdout, result.stderr)
    assert f"interrupted: 2 edit(s) saved in {out}; run the same command again to resume" in result.stderr
    fresh = invoke("edit", "--edits", str(edits), "--out", str(tmp_path / "new"), "--set", "layers=1,3")
    assert fresh.exit_code == 130 and f"no edit saved yet in {tmp_path / 'new'}" in fresh.stderr


def test_ctrl_c_in_eval_says_what_was_saved(loaded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "records.jsonl").write_text(
        "".join(json.dumps({"record_id": f"r{n}"}) + "\n" for n in range(3)) + '{"record_id": "r3", "tru',
        encoding="utf-8",
    )

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_eval, "run_evaluation", interrupt)
    data = write_edits(tmp_path / "edits.json", [PLACEABLE])
    result = invoke("eval", "--data", str(data), "--out", str(run), "--specificity", "none", "--set", "layers=1,3")
    assert result.exit_code == 130, (result.stdout, result.stderr)
    assert "interrupted: 3 record(s) saved in" in result.stderr and "run the same command again" in result.stderr
