"""trimlab-serve's default engine (`engine=fastapi`): FastAPI + uvicorn, with the model in the HTTP process.

Why not LitServe here: LitServe runs the model in worker processes, so every request crosses processes twice
(in on a queue, out over ZeroMQ) and is pickled both ways. On a 2-core machine those crossings cost more than a
small model's forward pass: LitServe served 500-1,000 requests/s for every model here, while FastAPI + uvicorn
alone answers 3,000-5,000/s (experiments/serving/ceiling.py). In one process a request is an asyncio future:
the batcher gathers the waiting ones, runs them in one model thread (torch and the runtimes release the GIL
while they compute, so the event loop keeps reading requests) and resolves them. When no other request is open,
there is nothing to read meanwhile, and the batch runs in the event loop itself (the hop to the thread and back
costs 0.3-0.8 ms, a small model's whole forward pass). `engine=litserve` stays for more
than one model worker (`workers=N`).

The batching window: a batch runs when it holds `max_batch_size` requests, when `batch_timeout_ms` has passed
since its first one, or when no other `/predict` request is open on the server, since then nothing can join
it: a lone request never waits for the window.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pydantic_core
from fastapi import FastAPI, HTTPException, Response

from trimlab.serve.api import Batch, ClassifierAPI, FastJSONRoute
from trimlab.serve.requests import PredictRequest

log = logging.getLogger("trimlab.serve")


class Batcher:
    """Requests in an asyncio queue, answered a batch at a time by `api` in one model thread."""

    def __init__(self, api: ClassifierAPI, max_batch_size: int, batch_timeout_s: float, timeout_s: float) -> None:
        self.api, self.max_batch_size, self.batch_timeout_s, self.timeout_s = (
            api, max_batch_size, batch_timeout_s, timeout_s)  # fmt: skip
        self.open_requests = 0  # /predict requests the server holds, read or not (see OpenRequests)
        self.queue: asyncio.Queue | None = None
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="trimlab-model")

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self.serve_batches(), name="trimlab-batcher")

    async def stop(self) -> None:
        self.task.cancel()
        self.model_thread.shutdown(wait=True)

    async def predict(self, items: list[Any]) -> dict[str, Any]:
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((items, future))
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            raise HTTPException(504, f"no answer within timeout_s={self.timeout_s:g} s; the server is "
                                     "overloaded: lower the load, or raise timeout_s") from None  # fmt: skip

    async def serve_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self.gather()
            batch = [(items, future) for items, future in batch if not future.done()]  # timed out while queued
            if not batch:
                continue
            try:
                requests = [items for items, _ in batch]
                if self.open_requests <= len(batch):  # nothing to read meanwhile: skip the hop to the thread
                    answers = self.answer(requests)
                else:
                    answers = await loop.run_in_executor(self.model_thread, self.answer, requests)
            except Exception as err:  # noqa: BLE001 - the batch's own requests get the reason; the server goes on
                detail = err.detail if isinstance(err, HTTPException) else f"{type(err).__name__}: {err}"
                for _, future in batch:
                    if not future.done():
                        future.set_exception(HTTPException(500, detail))
                continue
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(answer)

    async def gather(self) -> list[tuple[list[Any], asyncio.Future]]:
        """The next batch: the first request waiting, then those that join within the window."""
        batch = [await self.queue.get()]
        deadline = asyncio.get_running_loop().time() + self.batch_timeout_s
        while len(batch) < self.max_batch_size:
            if self.queue.empty():
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0 or self.open_requests <= len(batch):
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), min(remaining, 0.001)))
                except TimeoutError:
                    continue  # open requests still being read: look again, until the deadline
            else:
                batch.append(self.queue.get_nowait())
        return batch

    def answer(self, requests: list[list[Any]]) -> list[dict[str, Any]]:
        outputs = self.api.predict(Batch([item for items in requests for item in items], [len(r) for r in requests]))
        return [self.api.encode_response(output) for output in outputs]


class OpenRequests:
    """ASGI middleware counting the `/predict` requests the server holds, from their first byte to their answer:
    the batcher's sign of whether another request may still join a batch."""

    def __init__(self, app: Any, batcher: Batcher) -> None:
        self.app, self.batcher = app, batcher

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict":
            await self.app(scope, receive, send)
            return
        self.batcher.open_requests += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.batcher.open_requests -= 1


def build_app(api: ClassifierAPI, cfg: Any, max_body: int) -> FastAPI:
    """The app: `POST /predict` through the batcher, `GET /health`; `/info` is added by the caller."""
    from contextlib import asynccontextmanager

    from litserve.middlewares import MaxSizeMiddleware

    batcher = Batcher(api, int(cfg.max_batch_size), float(cfg.batch_timeout_ms) / 1000, float(cfg.timeout_s))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="trimlab-serve", lifespan=lifespan)
    app.router.route_class = FastJSONRoute

    @app.post("/predict")
    async def predict(request: PredictRequest) -> Response:
        answer = await batcher.predict(request.inputs)
        return Response(pydantic_core.to_json(answer), media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        return Response("ok", media_type="text/plain")

    app.add_middleware(MaxSizeMiddleware, max_size=max_body)
    app.add_middleware(OpenRequests, batcher=batcher)
    return app


def run(app: FastAPI, cfg: Any) -> None:
    """uvicorn in this process. SIGTERM (and SIGINT) stop taking connections and answer the open requests (the
    batcher runs until they are done), then `run` returns, so the process exits 0."""
    import uvicorn

    config = uvicorn.Config(app, host=str(cfg.host), port=int(cfg.port), log_level=str(cfg.log_level),
                            timeout_graceful_shutdown=float(cfg.timeout_s) + 5)  # fmt: skip
    # uvicorn raises the signal again after its graceful shutdown; with these handlers that is a no-op
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    log.info("serving with FastAPI + uvicorn in one process")
    uvicorn.Server(config).run()
