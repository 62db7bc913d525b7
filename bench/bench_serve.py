"""Load on ``qvimclap serve``: concurrent searches against the real command on 127.0.0.1, against the cost of
the same search called in-process.

1. A library: by default a synthetic corpus (``--refs`` references) embedded with a seeded random
   ``qvim:scratch:mn04`` and indexed, in a temporary folder; or ``--index`` (with ``--model`` and
   ``--queries``, e.g. the demo's).
2. In-process: :func:`qvimclap.api.search` on each query file in turn (what one request does, without HTTP),
   after a warm-up, in the main thread (as the CLI) and in a worker thread (as a server request): per-query
   latency p50 / p95 and queries per second. On a busy machine torch's default intra-op threads make the
   main-thread number much slower; the worker-thread row is the one a request pays.
3. Served: ``qvimclap serve --port 0`` in a subprocess (loopback only); ``--clients`` threads each send
   ``--requests`` multipart ``POST /api/search`` requests, back to back. Every answer must be 200 with
   ``k`` hits equal to the in-process answer for that file; latency p50 / p95, throughput, failures.

Bounded: every request has a timeout, the whole run stops after ``--max-seconds`` and the server is always
stopped. Prints a Markdown table.

    flock /tmp/qvimclap-heavy.lock .venv/bin/python bench/bench_serve.py
    .venv/bin/python bench/bench_serve.py --index demo/indexes/references.faiss --model demo/model \\
        --queries demo/corpus
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"  # never anything else: this sends hundreds of requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, help="An index to serve (default: build a small one).")
    parser.add_argument("--model", help="Query encoder for --index (default: the one it records).")
    parser.add_argument(
        "--queries", type=Path, help="Dataset whose imitations are the queries (with --index)."
    )
    parser.add_argument("--refs", type=int, default=100, help="References in the built library.")
    parser.add_argument("--num-queries", type=int, default=16, help="Distinct query files, cycled.")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="Requests per client.")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=900.0, help="Stop the whole run after this.")
    args = parser.parse_args()
    deadline = time.monotonic() + args.max_seconds

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        index_path, model, queries = _library(args, Path(tmp))
        expected, in_process = _in_process(index_path, model, queries, args.k)
        served = _served(index_path, model, queries, expected, args, deadline)
    _report(args, len(queries), in_process, served)


def _library(args: argparse.Namespace, tmp: Path) -> tuple[Path, str | None, list[Path]]:
    from qvimclap import api
    from qvimclap.data import open_dataset
    from qvimclap.data.synth import make_corpus

    if args.index is not None:
        if args.queries is None:
            sys.exit("--index needs --queries (a dataset whose imitations are sent)")
        return args.index, args.model, open_dataset(args.queries).queries[: args.num_queries]
    print(f"building a library of {args.refs} synthetic references (qvim:scratch:mn04) ...", flush=True)
    corpus = make_corpus(tmp / "corpus", num_references=args.refs, imitations_per_reference=1, seed=0)
    api.embed_dataset(corpus, "qvim:scratch:mn04", tmp / "lib.h5", progress=False)
    index_path = api.build_index(tmp / "lib.h5", tmp / "lib.faiss")
    return index_path, None, open_dataset(corpus).queries[: args.num_queries]


def _in_process(
    index_path: Path, model: str | None, queries: list[Path], k: int
) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """The expected ids per query file, and the per-query seconds of api.search in this process: in the main
    thread (as the CLI runs it) and in a worker thread (as a server request runs it)."""
    from qvimclap import api

    index = api.load_index(index_path)
    embedder = api.load_embedder(model if model else api.query_spec(index.embedder_spec))
    api.search(queries[0], index, k, encoder=embedder)  # warm-up
    expected: dict[str, list[str]] = {}
    seconds: dict[str, list[float]] = {"main thread": [], "worker thread": []}

    def measure(where: str, passes: int) -> None:
        for _ in range(passes):
            for query in queries:
                start = time.perf_counter()
                hits = api.search(query, index, k, encoder=embedder)
                seconds[where].append(time.perf_counter() - start)
                expected[str(query)] = [hit.id for hit in hits]

    measure("main thread", 1)
    worker = threading.Thread(target=measure, args=("worker thread", 2))
    worker.start()
    worker.join()
    return expected, {where: np.asarray(values) for where, values in seconds.items()}


def _served(
    index_path: Path,
    model: str | None,
    queries: list[Path],
    expected: dict[str, list[str]],
    args: argparse.Namespace,
    deadline: float,
) -> dict[str, object]:
    import httpx

    command = [sys.executable, "-m", "qvimclap.cli", "serve", "--index", str(index_path)]
    command += ["--host", HOST, "--port", "0"] + (["--model", model] if model else [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = _wait_for_url(server)
        payloads = [(str(q), q.name, q.read_bytes()) for q in queries]
        with httpx.Client(timeout=60) as warm:  # one request first: the server's own warm-up
            warm.post(f"{url}/api/search?k={args.k}", files={"audio": payloads[0][1:]}).raise_for_status()
        latencies: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()

        def client(offset: int) -> None:
            with httpx.Client(timeout=120) as http:
                for i in range(args.requests):
                    if time.monotonic() > deadline:
                        with lock:
                            failures.append("not sent: --max-seconds reached")
                        continue
                    key, name, data = payloads[(offset + i) % len(payloads)]
                    start = time.perf_counter()
                    try:
                        response = http.post(f"{url}/api/search?k={args.k}", files={"audio": (name, data)})
                        ok = response.status_code == 200
                        ids = [hit["id"] for hit in response.json()["hits"]] if ok else None
                        problem = (
                            None if ids == expected[key] else f"{response.status_code}: {response.text[:80]}"
                        )
                    except (httpx.HTTPError, ValueError, KeyError) as err:
                        problem = f"{type(err).__name__}: {err}"
                    elapsed = time.perf_counter() - start
                    with lock:
                        latencies.append(elapsed)
                        if problem:
                            failures.append(problem)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"latencies": np.asarray(latencies), "failures": failures, "wall_s": wall}


def _wait_for_url(server: subprocess.Popen) -> str:
    lines = []
    for line in server.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if found := re.search(r"open (http://127\.0\.0\.1:\d+)/", line):
            return found.group(1)
    sys.exit("qvimclap serve did not start:\n" + "".join(lines))


def _report(
    args: argparse.Namespace, num_queries: int, in_process: dict[str, np.ndarray], served: dict
) -> None:
    lat: np.ndarray = served["latencies"]  # type: ignore[assignment]
    failures: list[str] = served["failures"]  # type: ignore[assignment]
    sent = args.clients * args.requests
    print(f"\n{num_queries} distinct query files, k={args.k}, {os.cpu_count()} CPU cores; loopback only\n")
    print("| path | requests | failed | throughput (queries/s) | p50 latency (ms) | p95 latency (ms) |")
    print("|---|---|---|---|---|---|")
    for where, x in in_process.items():
        print(
            f"| in-process `api.search`, one at a time, {where} | {len(x)} | 0 | {1 / x.mean():.1f} "
            f"| {1000 * np.median(x):.0f} | {1000 * np.percentile(x, 95):.0f} |"
        )
    throughput = len(lat) / served["wall_s"]
    print(
        f"| `qvimclap serve`, {args.clients} clients × {args.requests} requests | {sent} | {len(failures)} "
        f"| {throughput:.1f} | {1000 * np.median(lat):.0f} | {1000 * np.percentile(lat, 95):.0f} |"
    )
    ratio = throughput * in_process["worker thread"].mean()
    print(f"\nserved throughput / in-process (worker thread) throughput: {ratio:.2f}")
    for problem in sorted(set(failures))[:5]:
        print(f"failure: {problem} (x{failures.count(problem)})")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
