"""stdout carries only a command's result: `mkedit ask --json | jq` must work even while models load and log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import build_tiny_model, build_tiny_tokenizer

MKEDIT = [sys.executable, "-c", "from mkedit.cli import app; app()"]


def test_ask_json_prints_only_json_lines_on_stdout(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-qwen2"
    build_tiny_model("qwen2").save_pretrained(str(folder))
    build_tiny_tokenizer().save_pretrained(str(folder))
    questions = ["Who makes the Volvo B12M?", "谁制造了沃尔沃B12M？"]
    command = [*MKEDIT, "ask", "--model", str(folder), "--device", "cpu", "--json", "--max-new-tokens", "3"]
    done = subprocess.run([*command, *questions], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [json.loads(line)["question"] for line in lines] == questions
    assert "loading" in done.stderr  # the log went to stderr, not stdout


def test_errors_go_to_stderr(tmp_path: Path) -> None:
    done = subprocess.run(
        [*MKEDIT, "report", str(tmp_path / "missing")], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1 and done.stdout == "" and "error" in done.stderr
