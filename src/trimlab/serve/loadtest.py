"""trimlab-loadtest: requests/s, latency percentiles and errors of a trimlab-serve server at each concurrency, and
what a million predictions cost there: `usd_per_million = price_per_hour / 3600 / requests_per_s × 1e6`.

A closed loop (aiohttp): `concurrency` clients each send one request (of `--items` inputs, default 1), wait for
its answer and send the next, for `--duration` seconds or until `--requests` requests in all. A prediction is
one input, so with `--items N` the price is per `requests_per_s × N` predictions per second. Only loopback
servers are loaded. The inputs are synthetic items of the served run's modality (`/info` says which), so no
dataset is needed. Results go to `<run_dir>/serve_bench.json` and the run's summary gets a `cost.serving` block, which
`trimlab-compare` shows and ranks runs by (`serving.usd_per_million`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from trimlab.errors import ConfigError, TrimlabError, user_errors

LOOPBACK = ("127.0.0.1", "localhost", "::1")
JSON = {"Content-Type": "application/json"}
WARMUP_REQUESTS = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trimlab-loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts (default 1,8,32)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per concurrency level (default 15)")
    parser.add_argument("--requests", type=int, default=None, help="stop a level after this many requests")
    parser.add_argument("--items", type=int, default=1, help="inputs per request (default 1: a prediction each)")
    parser.add_argument(
        "--image-format",
        choices=("list", "png"),
        default="list",
        help="how images are sent: nested lists of pixels (default) or base64 PNG files",
    )
    parser.add_argument("--run-dir", default=None, help="where serve_bench.json goes (default: the served run's)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds one request may take (default 30)")
    return parser.parse_args(argv)


def levels(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1 or max(values) > 1024:
        raise ConfigError(f"--concurrency {text}: pass comma-separated integers in 1-1024, e.g. 1,8,32")
    return values


def check_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme != "http" or parsed.hostname not in LOOPBACK:
        raise ConfigError(f"{url}: trimlab-loadtest loads servers on this machine only; pass http://127.0.0.1:<port>")
    return url.rstrip("/")


def example_item(info: dict[str, Any], seed: int, image_format: str = "list") -> Any:
    """One synthetic input of the served modality: a text, an image (pixels in [0, 1] as nested lists, or a base64
    8-bit PNG), or a base64 WAV."""
    import numpy as np

    rng = np.random.default_rng(seed)
    modality = info["input"]["modality"]
    if modality == "text":
        words = ["the", "film", "was", "a", "quiet", "triumph", "and", "never", "dull", "news", "market", "team"]
        return " ".join(rng.choice(words, size=12))
    if modality == "vision":
        _, height, width = info["input_shape"]
        if image_format == "list":
            return rng.random((height, width)).round(3).tolist()
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()
    import soundfile as sf

    rate, samples = info["sample_rate"], info["input_shape"][-1]
    buffer = io.BytesIO()
    sf.write(buffer, (0.1 * rng.standard_normal(samples)).astype("float32"), rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode()


async def level(session: Any, url: str, bodies: list[bytes], clients: int, duration: float, cap: int | None,
                items: int) -> dict:  # fmt: skip
    """`clients` closed-loop clients for `duration` seconds (or `cap` answers in all): every loop is bounded."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + duration
    budget = {"left": cap if cap is not None else 10**9}

    async def client(index: int) -> None:
        sent = 0
        while time.monotonic() < deadline and budget["left"] > 0:
            budget["left"] -= 1
            body = bodies[(index + sent * clients) % len(bodies)]
            start = time.perf_counter()
            try:
                async with session.post(f"{url}/predict", data=body, headers=JSON) as response:
                    await response.read()
                    status = response.status
            except (TimeoutError, OSError) as err:
                status = type(err).__name__
            if status == 200:
                latencies.append(time.perf_counter() - start)
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1
            sent += 1

    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - start
    return figures(clients, latencies, errors, elapsed, items)


def figures(clients: int, latencies: list[float], errors: dict[str, int], elapsed: float, items: int) -> dict:
    ordered = sorted(latencies)

    def percentile(q: float) -> float | None:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else None

    return {
        "concurrency": clients, "requests": len(ordered), "errors": sum(errors.values()), "error_kinds": errors,
        "duration_s": round(elapsed, 3), "requests_per_s": round(len(ordered) / elapsed, 2) if elapsed else 0.0,
        "items_per_request": items,
        "predictions_per_s": round(len(ordered) * items / elapsed, 2) if elapsed else 0.0,
        "latency_ms_p50": round(1000 * statistics.median(ordered), 3) if ordered else None,
        "latency_ms_p95": percentile(0.95), "latency_ms_p99": percentile(0.99),
    }  # fmt: skip


async def load(url: str, clients: list[int], duration: float, cap: int | None, timeout: float, items: int,
               image_format: str = "list") -> dict:  # fmt: skip
    import aiohttp

    limits = aiohttp.TCPConnector(limit=max(clients))
    async with aiohttp.ClientSession(connector=limits, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        try:
            async with session.get(f"{url}/info") as response:
                info = await response.json()
        except (aiohttp.ClientError, OSError, ValueError) as err:
            raise TrimlabError(f"no trimlab-serve server answers at {url}/info ({err}); start trimlab-serve") from err
        # Bodies encoded once: the client shares the machine with the server, and JSON of many pixels is not free.
        bodies = [json.dumps({"inputs": [example_item(info, seed * items + i, image_format) for i in range(items)]})
                  .encode() for seed in range(16)]  # fmt: skip
        await level(session, url, bodies, min(clients), 30.0, WARMUP_REQUESTS, items)  # connections, first graphs
        results = [await level(session, url, bodies, c, duration, cap, items) for c in clients]
    for result in results:
        result["image_format"] = image_format if info["input"]["modality"] == "vision" else None
    return {"info": info, "levels": results}


def serving_block(info: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """`cost.serving`: the served variant, each level, and the headline figures: predictions/s and cost per
    million at the busiest level, latency at the least busy one."""
    price = float(info.get("price_per_hour") or 0.0)
    for result in results:
        rate = result["predictions_per_s"]
        result["usd_per_million"] = round(price / 3600 / rate * 1e6, 6) if rate else None
    busiest = max(results, key=lambda r: r["predictions_per_s"])
    calmest = min(results, key=lambda r: r["concurrency"])
    return {
        "variant": info.get("variant"), "runtime": info.get("runtime"), "version": info.get("version"),
        "batching": info.get("batching"), "cpu": info.get("cpu"), "cpu_capability": info.get("cpu_capability"),
        "price_per_hour": price, "requests_per_s": busiest["requests_per_s"],
        "items_per_request": busiest["items_per_request"], "predictions_per_s": busiest["predictions_per_s"],
        "usd_per_million": busiest["usd_per_million"], "at_concurrency": busiest["concurrency"],
        "latency_ms_p50": calmest["latency_ms_p50"], "latency_ms_p99": calmest["latency_ms_p99"],
        "ledger": info.get("ledger"), "levels": results,
    }  # fmt: skip


def record(run_dir: Path, block: dict[str, Any]) -> Path:
    """serve_bench.json beside the summary, and `cost.serving` in it (the summary rewritten atomically)."""
    from trimlab.report import write_json

    summary_path = run_dir / "summary.json"
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as err:
        raise TrimlabError(f"cannot read {summary_path} ({err}); pass --run-dir <the served run's dir>") from err
    write_json(run_dir / "serve_bench.json", block)
    summary.setdefault("cost", {})["serving"] = block
    write_json(summary_path, summary)
    return run_dir / "serve_bench.json"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with user_errors():
        url, clients = check_url(args.url), levels(args.concurrency)
        if args.duration <= 0 or args.items < 1 or (args.requests is not None and args.requests < 1):
            raise ConfigError("--duration must be > 0, --items >= 1 and --requests >= 1")
        outcome = asyncio.run(
            load(url, clients, args.duration, args.requests, args.timeout, args.items, args.image_format)
        )
        block = serving_block(outcome["info"], outcome["levels"])
        path = record(Path(args.run_dir or outcome["info"]["run_dir"]), block)
    for result in block["levels"]:
        print(f"concurrency {result['concurrency']:>4}: {result['requests_per_s']:>9.1f} req/s "
              f"({result['predictions_per_s']:.1f} predictions/s)  p50 "
              f"{result['latency_ms_p50']} ms  p95 {result['latency_ms_p95']} ms  p99 {result['latency_ms_p99']} ms  "
              f"errors {result['errors']}  ${result['usd_per_million']}/M")  # fmt: skip
    print(path.absolute(), flush=True)


if __name__ == "__main__":
    main()
