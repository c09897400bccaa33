"""The inference worker: LitServe's `LitAPI` for a run's classifier.

LitServe batches requests (up to `max_batch_size` within `batch_timeout`); a request may hold several items, so
a batch is every item of its requests, run through the model at once and split back per request. A batch that
raises fails its own requests with a 500 naming the error; the worker goes on with the next batch.

No `from __future__ import annotations` here: LitServe reads `decode_request`'s annotation as a class, to make
FastAPI validate the body with it.
"""

import json
import logging
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import pydantic_core
import torch
from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError  # pinned litserve: its loop's own markers
from litserve.loops.simple_loops import BatchedLoop
from litserve.utils import LitAPIStatus, LoopResponseType

from trimlab.serve.requests import PredictRequest

log = logging.getLogger(__name__)


class WindowLoop(BatchedLoop):
    """LitServe's batching window (`max_batch_size` requests within `batch_timeout`), opened by the first request:
    an idle worker blocks on its queue instead of polling it every millisecond, and `batch_timeout=0` takes the
    requests already queued, without waiting (LitServe's own loop spins then)."""

    def get_batch_requests(self, lit_api: ls.LitAPI, request_queue: Any, transport: Any) -> tuple[list, list]:
        import time
        from queue import Empty

        payloads, timed_out = [], []
        deadline = None
        while len(payloads) + len(timed_out) < lit_api.max_batch_size:
            try:
                if deadline is None:
                    request = request_queue.get(timeout=1.0)  # wakes up now and then to see a stop
                    deadline = time.monotonic() + lit_api.batch_timeout
                else:
                    remaining = deadline - time.monotonic()
                    request = request_queue.get(timeout=remaining) if remaining > 0 else request_queue.get_nowait()
            except Empty:
                break
            if request == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, x_enc = request
            self.put_response(transport, response_queue_id, uid, (), LitAPIStatus.START, LoopResponseType.REGULAR)
            limit = lit_api.request_timeout
            if limit not in (-1, False) and time.monotonic() - timestamp > limit:
                timed_out.append((response_queue_id, uid))
            else:
                payloads.append((response_queue_id, uid, x_enc))
        return payloads, timed_out


class PipeQueueServer(ls.LitServer):
    """LitServer whose request queues are pipes (`multiprocessing.Queue`) instead of its manager's queue proxies:
    a proxy's `put` is a round trip to the manager process, made inside the HTTP event loop, and its `get` another
    one in the worker, which on a 2-core machine costs more than a small model's forward pass. The HTTP servers
    (forked) and the inference workers (spawned, the queue passed in) share the pipe directly. Bodies are parsed
    by `FastJSONRequest`."""

    def _init_manager(self, num_api_servers: int) -> Any:
        import multiprocessing

        manager = super()._init_manager(num_api_servers)
        spawn = multiprocessing.get_context("spawn")
        self.litapi_request_queues = {path: spawn.Queue() for path in self.litapi_request_queues}
        return manager

    def register_endpoints(self) -> None:
        self.app.router.route_class = FastJSONRoute
        super().register_endpoints()

    def setup_auth(self, lit_api: ls.LitAPI | None = None) -> Any:
        """LitServe's own choice (an API key, the API's `authorize`), but its no-auth dependency as a coroutine:
        FastAPI awaits that in the event loop, where a plain function goes through its thread pool per request."""
        from litserve.server import no_auth

        auth = super().setup_auth(lit_api)
        return open_access if auth is no_auth else auth


async def open_access() -> None:
    return None


class FastJSONRequest(Request):
    """A body parsed by pydantic-core's JSON parser: 2-3x the standard library's speed on arrays of pixels (the
    HTTP process's largest cost per image item). NaN and Infinity parse, as they do there, so the item's own
    check names them; a body that is no JSON is FastAPI's usual 422."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = pydantic_core.from_json(body)
            except ValueError as err:
                raise json.JSONDecodeError(str(err), body.decode(errors="replace"), 0) from None
        return self._json


class FastJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(FastJSONRequest(request.scope, request.receive))

        return route


@dataclass
class Batch:
    inputs: Any
    counts: list[int]


class ClassifierAPI(ls.LitAPI):
    """Answers `POST /predict` with each item's class index, class name and probabilities. `counters` (shared
    with the HTTP processes, which show them in `/info`) hold batches, requests and items served, and the most
    requests one batch held."""

    def __init__(self, run_dir: str, served: dict[str, Any], threads: int, counters: Any, max_batch_size: int,
                 batch_timeout: float) -> None:  # fmt: skip
        import warnings

        with warnings.catch_warnings():  # max_batch_size=1: LitServe warns that batch() will not be called
            warnings.simplefilter("ignore")
            loop = WindowLoop() if max_batch_size > 1 else "auto"
            super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, loop=loop)
        self.run_dir, self.served, self.threads, self.counters = run_dir, served, threads, counters

    def setup(self, device: str) -> None:
        from hydra.utils import instantiate

        from trimlab.factory import load_run
        from trimlab.serve import model

        torch.set_num_threads(self.threads)
        run_dir = Path(self.run_dir)
        cfg, summary = load_run(run_dir)
        self.datamodule = instantiate(cfg.data)
        self.datamodule.restore(run_dir, summary["data"])
        self.class_names = list(self.datamodule.class_names)
        self.scratch = tempfile.TemporaryDirectory(prefix="trimlab-serve-")
        self.runner = model.load(run_dir, cfg, summary, self.datamodule, self.served, Path(self.scratch.name))
        self.buckets = model.buckets(self.served, int(cfg.cost.throughput_batch_size))
        for size in self.buckets:  # every batch shape the server will run, compiled (inductor) before serving
            self.forward(model.example_batch(self.datamodule, size))
        log.info("serving %s (%s %s) from %s", self.served["variant"], self.served["runtime"],
                 self.served["version"], run_dir)  # fmt: skip

    def decode_request(self, request: PredictRequest) -> list[np.ndarray]:
        return request.inputs

    def batch(self, inputs: list[list[np.ndarray]]) -> Batch:
        return Batch([item for items in inputs for item in items], [len(items) for items in inputs])

    def predict(self, x: Batch | list[np.ndarray]) -> list[dict[str, Any]] | dict[str, Any]:
        single = not isinstance(x, Batch)  # max_batch_size=1: LitServe calls predict per request
        batch = Batch(x, [len(x)]) if single else x
        try:
            probabilities = self.run(batch.inputs)
        except Exception as err:  # noqa: BLE001 - the batch's requests get the reason; the server goes on
            log.exception("a batch of %d request(s) failed", len(batch.counts))
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            raise HTTPException(500, f"the batch of {len(batch.counts)} request(s) failed: "
                                     f"{type(err).__name__}: {first}") from err  # fmt: skip
        self.count(batch)
        answers, start = [], 0
        for count in batch.counts:
            answers.append({"rows": probabilities[start : start + count], "batch_requests": len(batch.counts)})
            start += count
        return answers[0] if single else answers

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        predictions = []
        for row in output["rows"]:
            index = int(np.argmax(row))
            predictions.append({"class_index": index, "class_name": self.class_names[index],
                                "probability": float(row[index]), "probabilities": row.tolist()})  # fmt: skip
        return {"predictions": predictions, "batch_requests": output["batch_requests"]}

    def run(self, items: list[np.ndarray]) -> np.ndarray:
        from trimlab.serve import model

        inputs = model.collate(self.datamodule, [torch.from_numpy(item) for item in items])
        return self.forward(model.pad_to_bucket(inputs, self.buckets))[: len(items)]

    def forward(self, inputs: Any) -> np.ndarray:
        from trimlab.batches import forward

        with torch.inference_mode():
            logits = forward(self.runner, inputs)
        return torch.as_tensor(logits).float().softmax(-1).numpy()

    def count(self, batch: Batch) -> None:
        if self.counters is None:
            return
        with self.counters.get_lock():
            self.counters[0] += 1
            self.counters[1] += len(batch.counts)
            self.counters[2] += sum(batch.counts)
            self.counters[3] = max(self.counters[3], len(batch.counts))
