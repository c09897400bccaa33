"""trimlab-serve: a finished run's model behind HTTP.

`POST /predict` answers `{"inputs": [...]}` with each item's class and probabilities (the numbers
`trimlab-predict` gives); `GET /health`; `GET /info` says what is served (run, model, runtime, class names, input
spec, the ledger's latency and accuracy) and how many batches and requests it has answered; `/docs` is FastAPI's
OpenAPI page. Requests are validated in the HTTP process (`serve.requests`), then batched and run by the
engine: FastAPI + uvicorn with the model in the same process (`serve.inprocess`, the default; why it is the
default is said there), or LitServe with the model in worker processes (`serve.api`, `engine=litserve`).
SIGTERM drains: the server stops taking connections, answers what it holds, and the process exits 0.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import hydra
from fastapi.exceptions import RequestValidationError
from omegaconf import DictConfig

from trimlab.errors import ConfigError, TrimlabError, user_errors
from trimlab.launch import config_dir, launch

log = logging.getLogger("trimlab.serve")
HOSTS = ("127.0.0.1", "0.0.0.0", "::")
ENGINES = ("fastapi", "litserve")


def check(cfg: DictConfig) -> None:
    """The serving knobs, before anything loads: one line for a value that cannot work."""
    if cfg.engine not in ENGINES:
        raise ConfigError(f"engine={cfg.engine} is unknown; use one of {', '.join(ENGINES)}")
    if cfg.engine == "fastapi" and int(cfg.workers) > 1:
        raise ConfigError(f"workers={cfg.workers} needs engine=litserve: engine=fastapi runs one model, in the "
                          "HTTP process")  # fmt: skip
    if str(cfg.host) not in HOSTS:
        raise ConfigError(f"host={cfg.host} is not one LitServe binds; use one of {', '.join(HOSTS)}")
    if not 1024 <= int(cfg.port) <= 65535:
        raise ConfigError(f"port={cfg.port} is outside 1024-65535; pass port=<free port, e.g. 8000>")
    for key, low in (("max_batch_size", 1), ("workers", 1), ("max_items", 1), ("batch_timeout_ms", 0),
                     ("max_body_mb", 0.001), ("timeout_s", 1)):  # fmt: skip
        if float(cfg[key]) < low:
            raise ConfigError(f"{key}={cfg[key]} must be >= {low}")
    with socket.socket(socket.AF_INET6 if ":" in str(cfg.host) else socket.AF_INET) as probe:
        try:
            probe.bind((str(cfg.host), int(cfg.port)))
        except OSError as err:
            where = f"{cfg.host}:{cfg.port}"
            raise ConfigError(f"cannot listen on {where} ({err.strerror}); pass port=<a free port>") from err


def build(cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """The server for `cfg.run_dir` (a FastAPI app, or a LitServer with `engine=litserve`), and what `/info`
    says of it."""
    from hydra.utils import instantiate

    from trimlab.factory import load_run
    from trimlab.serve import model, requests
    from trimlab.serve.api import ClassifierAPI

    run_dir = Path(cfg.run_dir).absolute()
    run_cfg, summary = load_run(run_dir)
    if summary.get("status") != "completed":
        raise TrimlabError(f"{run_dir} has no completed summary.json; serve a finished run")
    served = model.plan(run_dir, summary, str(cfg.target))
    datamodule = instantiate(run_cfg.data)
    datamodule.restore(run_dir, summary["data"])
    if not hasattr(datamodule, "serve_item"):
        raise ConfigError(f"{type(datamodule).__name__} has no served input format (serve_item); serve a vision, "
                          "text or speech run, or add serve_item to your DataModule")  # fmt: skip
    requests.accept(datamodule, int(cfg.max_items))
    threads = int(cfg.threads) if cfg.threads else default_threads(cfg)
    counters = multiprocessing.get_context("spawn").Array("q", 4)  # batches, requests, items, most per batch
    api = ClassifierAPI(str(run_dir), served, threads, counters, max_batch_size=int(cfg.max_batch_size),
                        batch_timeout=float(cfg.batch_timeout_ms) / 1000)  # fmt: skip
    max_body = int(float(cfg.max_body_mb) * 2**20)
    info = describe(cfg, run_dir, run_cfg, summary, datamodule, served, threads, max_body)
    if cfg.engine == "fastapi":
        from trimlab.serve import inprocess

        api.setup("cpu")  # the model, loaded (and compiled) before the port opens
        server = app = inprocess.build_app(api, cfg, max_body)
    else:
        server = litserver(cfg, api, max_body)
        app = server.app
    app.add_exception_handler(RequestValidationError, invalid_request)

    @app.get("/info")
    def served_info() -> dict[str, Any]:
        batches, answered, items, most = list(counters)
        return {**info, "served": {"batches": batches, "requests": answered, "items": items,
                                   "max_batch_requests": most}}  # fmt: skip

    return server, info


def default_threads(cfg: DictConfig) -> int:
    """engine=fastapi: every core but one, which the event loop keeps (on 2 cores a second torch thread slowed
    requests down at every concurrency); engine=litserve: the cores divided among its worker processes."""
    cores = os.cpu_count() or 1
    return max(1, cores - 1) if cfg.engine == "fastapi" else max(1, cores // int(cfg.workers))


def litserver(cfg: DictConfig, api: Any, max_body: int) -> Any:
    """`engine=litserve`: the model in `workers` LitServe worker processes."""
    import litserve as ls

    from trimlab.serve.api import PipeQueueServer

    server_class = PipeQueueServer if cfg.fast_queue else ls.LitServer
    return server_class(api, accelerator="cpu", workers_per_device=int(cfg.workers), timeout=float(cfg.timeout_s),
                        max_payload_size=max_body, info_path="/litserve/info",
                        fast_queue=bool(cfg.fast_queue))  # fmt: skip


def describe(cfg: DictConfig, run_dir: Path, run_cfg: Any, summary: dict, datamodule: Any, served: dict,
             threads: int, max_body: int) -> dict[str, Any]:  # fmt: skip
    """What `/info` says of the served run, read once at start."""
    from trimlab.report import cpu_capability, cpu_model

    return {
        "run_id": summary.get("run_id"), "run_dir": str(run_dir), "task_name": summary.get("task_name"),
        "model": str(run_cfg.model.get("_target_", "")).rsplit(".", 1)[-1], **served,
        "class_names": list(datamodule.class_names),
        "input": {"modality": datamodule.modality, "item": datamodule.serve_spec, "max_items": int(cfg.max_items),
                  "max_body_bytes": max_body},
        "batching": {"engine": str(cfg.engine), "max_batch_size": int(cfg.max_batch_size),
                     "batch_timeout_ms": float(cfg.batch_timeout_ms),
                     "workers": int(cfg.workers), "threads_per_worker": threads},
        "input_shape": list(datamodule.input_shape), "sample_rate": getattr(datamodule, "sample_rate", None),
        "price_per_hour": (summary.get("cost") or {}).get("price_per_hour"),
        "cpu": cpu_model(), "cpu_capability": cpu_capability(),
    }  # fmt: skip


async def invalid_request(request: Any, exc: Any) -> Any:
    """A 422 naming each bad field and what was expected, without echoing the input back (it can be megabytes,
    or hold a NaN, which JSON cannot carry)."""
    from fastapi.responses import JSONResponse

    def message(error: dict) -> str:  # a JSON error says where: FastAPI keeps that in ctx
        reason = (error.get("ctx") or {}).get("error") if error.get("type") == "json_invalid" else None
        return f"{error.get('msg', '')}: {reason}" if reason else error.get("msg", "")

    errors = [{"loc": list(e.get("loc", ())), "msg": message(e), "type": e.get("type", "")} for e in exc.errors()]
    if "json" not in request.headers.get("content-type", ""):
        errors.insert(0, {"loc": ["header", "content-type"], "type": "content_type",
                          "msg": "send the body as JSON, with the header Content-Type: application/json"})  # fmt: skip
    return JSONResponse({"detail": errors}, status_code=422)


def drain_on_sigterm(server: Any) -> None:
    """SIGTERM: each HTTP server (a child named LitServer-*) gets it and finishes its open requests (uvicorn's
    graceful shutdown), then LitServe's own shutdown stops the inference workers and `run` returns."""
    main_pid = os.getpid()

    def drain() -> None:
        http = [c for c in multiprocessing.active_children() if c.name.startswith("LitServer-")]
        for child in http:
            os.kill(child.pid, signal.SIGTERM)
        for child in http:
            child.join(timeout=server.uvicorn_graceful_timeout + 5)
        try:
            server._shutdown_event.set()  # what LitServe's run() waits on
        except (OSError, EOFError) as err:  # its manager is gone (the whole process group was signalled)
            log.warning("SIGTERM: LitServe's manager is gone (%s); stopping now", err)
            os._exit(0)

    def on_sigterm(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:  # LitServe's manager, forked from here: it stays until the drain is done
            return
        log.warning("SIGTERM: answering open requests, then stopping")
        threading.Thread(target=drain, name="trimlab-drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="serve")
def run(cfg: DictConfig) -> None:
    # The workers share the cores with the HTTP servers: their threads sleep between batches instead of spinning.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with user_errors():
        check(cfg)
        server, info = build(cfg)
    url = f"http://{cfg.host}:{cfg.port}"
    print(f"trimlab-serve: {info['variant']} ({info['runtime']} {info['version']}) of {info['run_dir']} "
          f"at {url}/predict (docs: {url}/docs)", flush=True)  # fmt: skip
    if cfg.engine == "fastapi":
        from trimlab.serve import inprocess

        inprocess.run(server, cfg)
        return
    drain_on_sigterm(server)
    server.run(host=str(cfg.host), port=int(cfg.port), generate_client_file=False, log_level=str(cfg.log_level))


def main() -> None:
    launch(run, "serve")


if __name__ == "__main__":
    main()
