"""``mkedit serve`` throughput: requests per second and latency, with and without an edited subject.

Starts ``mkedit serve`` (a subprocess, on a free port) on ``--model`` with ``--cache``, or with a cache of
one synthetic LU-LAFNs edit made here (a made-up subject, ΔV on ``--neurons`` random neurons of each of the
preset's layers: serving costs the same whatever ΔV holds). Then sends ``--requests`` sequential greedy chat
completions of each kind through the openai client, alternating a question naming the edited subject with
one naming no subject, so both kinds see the same load; every response's ``mkedit_edits_applied`` is
checked. Prints a table on stdout (or one JSON object with ``--json``); the server's log goes to stderr.

    python benchmarks/serve_throughput.py --requests 20 --max-tokens 16
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from openai import APIConnectionError, OpenAI

from mkedit.methods.lu_lafns.config import preset_for
from mkedit.models import DEFAULT_MODEL, load_model
from mkedit.models.device import add_device_options
from mkedit.models.fingerprint import model_fingerprint
from mkedit.runtime.cache import INDEX_FILE, Edit, EditCache
from mkedit.runtime.deltas import neuron_tensors

SUBJECT = "Kalomer Vinsel"  # made up: no other prompt names it
EDITED_QUESTION = "Who founded {subject}?"
PLAIN_QUESTION = "What is the capital of France?"


def make_cache(model_name: str, device: str, dtype: str, neurons: int, folder: Path) -> Path:
    """A cache of one synthetic edit of ``SUBJECT`` for the model (reused when ``folder`` holds one)."""
    if (folder / INDEX_FILE).is_file():
        return folder
    loaded = load_model(model_name, device=device, dtype=dtype)
    config = preset_for(loaded.name).config
    n_layers, d_ffn = loaded.model.config.num_hidden_layers, loaded.model.config.intermediate_size
    gen = torch.Generator().manual_seed(0)
    deltas = {
        layer % n_layers: (
            torch.randperm(d_ffn, generator=gen)[:neurons].sort().values,
            0.05 * torch.randn(neurons, generator=gen),
        )
        for layer in config.layers
    }
    cache = EditCache(model_fingerprint(loaded.model, loaded.name), "lu-lafns", config.to_dict())
    tensors = neuron_tensors(deltas, config.store_values, config.store_fraction)
    cache.add(Edit("synthetic", {"en": [SUBJECT]}, tensors, {}, "lu-lafns"))
    return cache.save(folder)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, cache: Path, port: int) -> tuple[subprocess.Popen, OpenAI]:
    """``mkedit serve`` in a subprocess (its output on our stderr), once it answers ``/v1/models``."""
    command = [sys.executable, "-m", "mkedit.cli", "serve", "--model", args.model, "--cache", str(cache)]
    command += ["--port", str(port), "--device", args.device, "--dtype", args.dtype]
    server = subprocess.Popen(command, stdout=sys.stderr, stderr=sys.stderr)
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
    deadline = time.monotonic() + args.start_timeout
    while True:
        try:
            client.models.list()
            return server, client
        except APIConnectionError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise SystemExit("mkedit serve did not start (its log is above)") from None
            time.sleep(1)


def ask(client: OpenAI, model: str, question: str, max_tokens: int) -> tuple[float, list[str], int]:
    """Seconds, edits applied and completion tokens of one greedy chat completion."""
    start = time.perf_counter()
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0
    )
    seconds = time.perf_counter() - start
    assert completion.usage is not None
    return seconds, completion.model_extra["mkedit_edits_applied"], completion.usage.completion_tokens


def summary(kind: str, runs: list[tuple[float, list[str], int]]) -> dict[str, float | int | str]:
    ms = [1000 * seconds for seconds, _, _ in runs]
    return {
        "queries": kind,
        "requests": len(runs),
        "requests_per_s": len(runs) / (sum(ms) / 1000),
        "mean_ms": statistics.fmean(ms),
        "p50_ms": statistics.median(ms),
        "p95_ms": statistics.quantiles(ms, n=20, method="inclusive")[18] if len(ms) > 1 else ms[0],
        "tokens_per_request": statistics.fmean(tokens for _, _, tokens in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    add_device_options(parser)
    parser.add_argument("--cache", type=Path, help="Edit cache to serve (default: one synthetic edit, made once)")
    parser.add_argument("--subject", help="Subject of an edit in --cache (default: the first edit's first subject)")
    parser.add_argument("--requests", type=int, default=20, help="Requests of each kind")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--neurons", type=int, default=3000, help="Neurons per layer of the synthetic edit")
    parser.add_argument("--work", type=Path, default=Path("runs/serve-throughput"))
    parser.add_argument("--start-timeout", type=float, default=900, help="Seconds to wait for the server")
    parser.add_argument("--json", action="store_true", help="One JSON object on stdout instead of the table")
    args = parser.parse_args()

    cache = args.cache or make_cache(
        args.model, args.device, args.dtype, args.neurons, args.work / Path(args.model).name
    )
    subject = args.subject or sorted(next(iter(EditCache.load(cache))).surfaces())[0]
    questions = {"edited subject": EDITED_QUESTION.format(subject=subject), "no subject": PLAIN_QUESTION}
    server, client = start_server(args, cache, free_port())
    runs: dict[str, list[tuple[float, list[str], int]]] = {kind: [] for kind in questions}
    try:
        for question in questions.values():  # warm-up, not counted
            ask(client, args.model, question, args.max_tokens)
        for _ in range(args.requests):
            for kind, question in questions.items():
                runs[kind].append(ask(client, args.model, question, args.max_tokens))
    finally:
        server.terminate()
        server.wait(timeout=60)
    if not all(edits for _, edits, _ in runs["edited subject"]) or any(edits for _, edits, _ in runs["no subject"]):
        raise SystemExit(f"unexpected edits applied: {json.dumps({k: [e for _, e, _ in v] for k, v in runs.items()})}")
    rows = [summary(kind, kind_runs) for kind, kind_runs in runs.items()]
    if args.json:
        print(json.dumps({"model": args.model, "max_tokens": args.max_tokens, "rows": rows}))
        return
    print("| queries | requests | requests/s | mean ms | p50 ms | p95 ms | tokens/request |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['queries']} | {r['requests']} | {r['requests_per_s']:.2f} | {r['mean_ms']:.0f} | "
            f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['tokens_per_request']:.1f} |"
        )


if __name__ == "__main__":
    main()
