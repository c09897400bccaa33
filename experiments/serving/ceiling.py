"""The HTTP stack's own ceiling: a FastAPI + uvicorn server that parses and validates `{"inputs": [...]}` like
trimlab-serve, runs no model and answers a constant, loaded by trimlab-loadtest the same way.

    python experiments/serving/ceiling.py               # concurrency 1, 8, 32, 10 s each
    python experiments/serving/ceiling.py --duration 15

No server can answer faster on this machine than this one does with nothing to compute: its requests/s at
concurrency 32 bounds what dynamic batching can reach, whatever the model. Results: `ceiling.json` beside this
file, with the CPU. (No `from __future__ import annotations`: FastAPI reads the body's annotation as a class.)
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import BIN, HERE, free_port, wait_healthy

INFO = {"variant": "no model", "runtime": "none", "version": None, "input": {"modality": "vision"},
        "input_shape": [1, 8, 8], "price_per_hour": 1.0}  # fmt: skip


def app() -> Any:
    from fastapi import FastAPI
    from pydantic import BaseModel, Field

    class Body(BaseModel):
        inputs: list[str | list[Any]] = Field(min_length=1)

    server = FastAPI()
    answer = {"class_index": 0, "class_name": "0", "probability": 1.0, "probabilities": [1.0] + [0.0] * 9}

    @server.post("/predict")
    async def predict(body: Body) -> dict[str, Any]:
        return {"predictions": [answer] * len(body.inputs)}

    @server.get("/info")
    async def info() -> dict[str, Any]:
        return INFO

    @server.get("/health")
    async def health() -> str:
        return "ok"

    return server


def measure(concurrency: str, duration: float) -> dict[str, Any]:
    """Start the no-model server, load it, stop it; the load test's JSON."""
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        wait_healthy(server, port, limit_s=60)
        with tempfile.TemporaryDirectory() as run_dir:
            (Path(run_dir) / "summary.json").write_text("{}")
            subprocess.run([str(BIN / "trimlab-loadtest"), f"http://127.0.0.1:{port}", "--concurrency", concurrency,
                            "--duration", str(duration), "--run-dir", run_dir], check=True)  # fmt: skip
            result = json.loads((Path(run_dir) / "serve_bench.json").read_text())
        if any(level["errors"] for level in result["levels"]):  # a ceiling of failed requests is no ceiling
            raise SystemExit(f"the no-model server answered errors: {[lv['error_kinds'] for lv in result['levels']]}")
        return result
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    if args.serve:
        import uvicorn

        uvicorn.run(app(), host="127.0.0.1", port=args.serve, log_level="warning")
        return
    from trimlab.report import cpu_capability, cpu_model

    levels = measure(args.concurrency, args.duration)["levels"]
    results = {"cpu": cpu_model(), "cpu_capability": cpu_capability(), "duration_s": args.duration, "levels": levels}
    (HERE / "ceiling.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
