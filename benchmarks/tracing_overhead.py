"""What tracing costs (issue 22): requests per second of the null model (benchmarks/suite/null_model.py, the
serving path with almost no compute, so the per-call overhead shows) through emotion.v1 gRPC, closed loop:

- ``main-off``: the code of another checkout (``--main``, e.g. /work/main), no OTEL variables;
- ``off``: this checkout, no OTEL variables (tracing off: the default);
- ``on``: this checkout exporting every call's spans over OTLP/HTTP to a sink in this process that answers
  200 and drops the body (``OTEL_BSP_SCHEDULE_DELAY`` 200 ms). The clients send no ``traceparent``, so every
  call is a new root trace: a call span, decode, queue and inference spans, plus one batch span per batch.

The rows run interleaved (``--rounds`` times each configuration), so drift of a shared machine's load
spreads over all of them; the 1-minute load average is recorded before each row::

    python -m benchmarks.tracing_overhead --main /work/main --out benchmarks/results/tracing \\
        [--rounds 3] [--run-s 8] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import build_requests, closed_loop, load_average, machine_description
from benchmarks.loadgen import cpu_flags as loadgen_cpu_flags
from benchmarks.suite.null_model import build_null_model
from emotion2vec_serving.server.process import ServerProcess

FLAGS = ["--no-warmup", "--intra-op-threads", "1"]


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def cpu_flags() -> str:
    """Every flag of the CPU (``loadgen.cpu_flags``), as /proc/cpuinfo lists them."""
    flags = loadgen_cpu_flags(None)
    return "unknown" if flags is None else " ".join(flags)


async def one_row(model: Path, cwd: Path, env: dict[str, str], run_s: float, concurrency: int,
                  requests: list[Any]) -> dict[str, Any]:
    load = load_average()[0]
    with ServerProcess(model, FLAGS, env=env, isolated_env=True, metrics=False, http=False, cwd=cwd,
                       startup_timeout_s=120.0) as proc:
        await closed_loop(proc.target, requests, [0.5] * len(requests), concurrency, 1.0)  # warm the path
        records, wall = await closed_loop(proc.target, requests, [0.5] * len(requests), concurrency, run_s)
    ok = sum(1 for r in records if r.code == "OK")
    return {"rps": ok / wall, "errors": len(records) - ok, "loadavg_1m": load}


HERE = Path(__file__).resolve().parents[1]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    here = HERE
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"
    configs: list[tuple[str, Path, dict[str, str]]] = []
    if args.main:
        configs.append(("main-off", Path(args.main), {}))
    configs += [("off", here, {}),
                ("on", here, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
                              "OTEL_BSP_SCHEDULE_DELAY": "200"})]
    # OTEL_* variables of the caller's shell must not switch tracing on in the "off" rows.
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        del os.environ[key]
    rng = np.random.default_rng(0)
    requests = build_requests([(0.1 * rng.standard_normal(8000)).astype(np.float32) for _ in range(8)])
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in configs}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_null_model(Path(tmp) / "null")
        for _ in range(args.rounds):
            for name, cwd, env in configs:
                row = await one_row(model, cwd, env, args.run_s, args.concurrency, requests)
                rows[name].append(row)
                print(f"{name:9s} {row['rps']:8.1f} req/s  errors {row['errors']}  "
                      f"load {row['loadavg_1m']:.1f}", flush=True)
    sink.shutdown()
    summary = {name: round(statistics.median(r["rps"] for r in rs), 1) for name, rs in rows.items()}
    return {"command": " ".join([sys.executable, "-m", "benchmarks.tracing_overhead", *sys.argv[1:]]),
            "machine": {**machine_description(), "cpu_flags": cpu_flags()},
            "settings": {"rounds": args.rounds, "run_s": args.run_s, "concurrency": args.concurrency,
                         "clip_s": 0.5, "server_flags": FLAGS},
            "median_rps": summary, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--main", help="another checkout to measure as main-off (e.g. /work/main)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tracing"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run-s", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result["median_rps"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
