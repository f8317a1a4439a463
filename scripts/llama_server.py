#!/usr/bin/env python3
"""Run llama.cpp's OpenAI-compatible server (from the xllamacpp wheel) on one GGUF model.

    .venv/bin/python scripts/llama_server.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --port 0 [--threads 1] [--ctx 4096] [--parallel 1] [--lora PATH[:SCALE]]... [--watch-stdin]
        [--kv-f32]

xllamacpp has no command-line entry point, hence this script. Protocol for the caller:
  * stdout carries exactly one line, `READY http://127.0.0.1:<port>`, printed (flushed) once
    GET /health answers 200. Everything else (llama.cpp's log, errors) goes to stderr.
  * The server then runs until SIGTERM/SIGINT (exit 0), or until stdin reaches EOF when
    --watch-stdin is given (so it cannot outlive a parent that held the other end of a pipe).
  * On failure (bad model, port taken, no health in time) it exits non-zero with a message.

Slots: llama.cpp splits n_ctx across n_parallel slots (n_ctx_slot = n_ctx / n_parallel, with
kv_unified off). Here --ctx is the context of ONE request, so n_ctx is set to ctx * parallel.
"""

import argparse
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

# MODELS.md pitfall: OpenMP's default busy-wait made 2 threads collapse to ~1 tok/s on a loaded
# 2-core machine. It must be set before libgomp is loaded, i.e. before importing xllamacpp.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def fail(msg, code=1):
    print(f"llama_server: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def lora_arg(text):
    """PATH or PATH:SCALE (SCALE a float; a path containing ':' still works without one)."""
    path, sep, scale = text.rpartition(":")
    if sep:
        try:
            return path, float(scale)
        except ValueError:
            pass
    return text, 1.0


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="GGUF file")
    ap.add_argument("--port", type=int, default=0, help="0 = pick a free port (default)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    ap.add_argument("--ctx", type=int, default=4096, help="context per request/slot (default 4096)")
    ap.add_argument("--parallel", type=int, default=1, help="parallel slots (default 1)")
    ap.add_argument("--lora", type=lora_arg, action="append", default=[],
                    metavar="PATH[:SCALE]", help="LoRA adapter GGUF (repeatable; scale 1.0)")
    ap.add_argument("--kv-f32", action="store_true",
                    help="f32 KV cache and no flash attention (reference numerics for tests)")
    ap.add_argument("--health-timeout", type=float, default=120.0, metavar="SECONDS")
    ap.add_argument("--watch-stdin", action="store_true",
                    help="exit when stdin reaches EOF (the parent went away)")
    a = ap.parse_args()
    if not os.path.isfile(a.model):
        fail(f"model not found: {a.model}", 2)
    for path, _ in a.lora:
        if not os.path.isfile(path):
            fail(f"LoRA adapter not found: {path}", 2)
    if not 0 <= a.port <= 65535 or a.threads < 1 or a.ctx < 1 or a.parallel < 1:
        fail("--port must be 0..65535; --threads, --ctx, --parallel must be >= 1", 2)
    return a


def main():
    a = parse_args()

    # Keep stdout for the READY line alone: llama.cpp's C++ code writes to the process's fd 1/2
    # directly, so point fd 1 at stderr and write READY to a private duplicate of the real one.
    ready_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    try:
        import xllamacpp
    except ImportError as e:
        fail(f"cannot import xllamacpp ({e}); run scripts/setup.sh")

    params = xllamacpp.CommonParams()
    params.model.path = a.model
    params.hostnames = ["127.0.0.1"]
    params.port = a.port  # 0: the OS picks; Server.listening_address tells which
    params.n_parallel = a.parallel
    params.n_ctx = a.ctx * a.parallel
    params.cpuparams.n_threads = a.threads
    params.cpuparams_batch.n_threads = a.threads
    if a.kv_f32:
        # Defaults are an f16 KV cache and (on CPU, "auto") flash attention with f16
        # accumulation: fine for serving, but noise when comparing numerics with ours (f32).
        params.cache_type_k = xllamacpp.ggml_type.GGML_TYPE_F32
        params.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_F32
        params.flash_attn_type = xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
    if a.lora:
        params.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(p, s) for p, s in a.lora]

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    # Server() loads the model, starts the HTTP and decode threads, and returns; its destructor
    # stops them. It raises if the model cannot be loaded or the port cannot be bound.
    try:
        server = xllamacpp.Server(params)
    except Exception as e:  # noqa: BLE001 - any failure here is fatal and reported as such
        fail(f"server failed to start: {e}")
    url = server.listening_address.rstrip("/")
    if not url.startswith("http://127.0.0.1:"):
        fail(f"unexpected listening address {url!r}")

    deadline = time.monotonic() + a.health_timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass  # 503 while loading, or not listening yet
        if stop.is_set():
            sys.exit(0)
        if time.monotonic() > deadline:
            fail(f"{url}/health did not answer 200 within {a.health_timeout:.0f} s")
        time.sleep(0.05)

    print(f"READY {url}", file=ready_out, flush=True)

    if a.watch_stdin:
        def watch():
            try:
                while sys.stdin.buffer.read(65536):
                    pass
            except OSError:
                pass
            stop.set()
        threading.Thread(target=watch, daemon=True).start()

    # Event.wait with a timeout returns promptly when a signal handler sets it.
    while not stop.wait(1.0):
        pass
    del server  # ~Server: drain and join the server threads
    print("llama_server: stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
