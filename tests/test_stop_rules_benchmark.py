"""``benchmarks/stop_rules.py`` reads both early-stop rules off one trajectory: the edit runs to ``max_steps``,
and the step each rule would stop at is where the mean, or the highest, sequence NLL first falls below the
threshold; an editor with that rule stops exactly there."""

from __future__ import annotations

from conftest import build_tiny_model, build_tiny_tokenizer, load_benchmark
from mkedit.methods.lu_lafns import LuLafnConfig, LuLafnEditor
from mkedit.types import EditGroup, EditRequest

GROUP = EditGroup(
    (
        EditRequest("en", "Lake Tana", "Which country is Lake Tana in?", "Peru"),
        EditRequest("zh", "塔纳湖", "塔纳湖位于哪个国家？", "秘鲁"),
    ),
    group_id="tana",
)
CONFIG = LuLafnConfig(layers=(1, 2), beta=0.0, max_steps=12, learning_rate=0.5, lambda_kl=0.0)


def test_first_below() -> None:
    stop_rules = load_benchmark("stop_rules")
    assert stop_rules.first_below([3.0, 0.5, 0.05, 0.01], 0.1) == 3
    assert stop_rules.first_below([3.0, 0.5], 0.1) is None


def test_each_rule_stops_where_the_trace_says() -> None:
    stop_rules = load_benchmark("stop_rules")
    model, tokenizer = build_tiny_model("qwen2"), build_tiny_tokenizer()
    never = LuLafnEditor(model, tokenizer, CONFIG.replace(early_stop_nll=0.0), "tiny")
    probe = stop_rules.trace(never, GROUP, threshold=1e9)
    assert probe["steps_run"] == 12 and probe["mean_stop"] == probe["every_stop"] == 1
    assert probe["final_worst_nll"] >= probe["final_mean_nll"] > 0
    # a threshold between the final mean and the final worst NLL: the mean rule stops, the other does not
    threshold = (probe["final_mean_nll"] + probe["final_worst_nll"]) / 2
    row = stop_rules.trace(never, GROUP, threshold)
    assert row["steps_run"] == 12 and row["every_stop"] is None and row["mean_stop"] is not None
    stopped = []
    mean_rule = LuLafnEditor(model, tokenizer, CONFIG.replace(early_stop_nll=threshold, early_stop="mean"), "tiny")
    mean_rule.edit(GROUP, on_step=stopped.append)
    assert len(stopped) == row["mean_stop"]
