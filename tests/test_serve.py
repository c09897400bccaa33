"""trimlab-serve as a real server process on a free loopback port, spoken to over HTTP: its answers equal
trimlab-predict's, bad requests get their own 4xx while good ones are answered, concurrent requests share a
batch, a load test writes every figure, and SIGTERM answers what is open and exits 0."""

from __future__ import annotations

import base64
import io
import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, assert_clear_error, cli_env, run_cli

pytest.importorskip("litserve")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, body: bytes | dict, timeout: float = 60) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/predict", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
    except (urllib.error.URLError, ConnectionError) as err:  # refused: the server no longer takes connections
        return 0, {"error": repr(err)}


def get(url: str, path: str) -> dict:
    with urllib.request.urlopen(f"{url}{path}", timeout=30) as response:
        return json.loads(response.read())


class Server:
    def __init__(self, run_dir: Path, cwd: Path, *overrides: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(cwd / f"serve-{self.port}.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [str(BIN / "trimlab-serve"), f"run_dir={run_dir}", f"port={self.port}", *overrides],
            cwd=cwd, env=cli_env(cwd), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (cwd / f"serve-{self.port}.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("the server did not become healthy in 120 s")

    def stop(self) -> None:
        """The whole process group: LitServe's forked HTTP servers outlive a killed main process otherwise."""
        import contextlib
        import os

        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A 1-epoch digits run, served with a batching window wide enough for concurrent requests to meet."""
    cwd = tmp_path_factory.mktemp("serve")
    run_dir = cwd / "run"
    result = run_cli("trainer.max_epochs=1", f"hydra.run.dir={run_dir}", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    server = Server(run_dir, cwd, "max_batch_size=16", "batch_timeout_ms=30", "max_items=64", "max_body_mb=1")
    yield {"server": server, "run_dir": run_dir, "cwd": cwd}
    server.stop()


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 8, 8)).astype(np.float32)


def png_base64(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((image * 255).round().astype(np.uint8), mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_predictions_equal_trimlab_predict_for_lists_and_png(served):
    url, cwd, run_dir = served["server"].url, served["cwd"], served["run_dir"]
    pixels = images(5)
    np.save(cwd / "inputs.npy", pixels)
    result = run_cli(f"run_dir={run_dir}", f"inputs={cwd / 'inputs.npy'}", f"output={cwd / 'p.csv'}", cwd=cwd,
                     script="trimlab-predict")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = (cwd / "p.csv").read_text().splitlines()[1:]
    expected = [(int(r.split(",")[1]), float(r.split(",")[3])) for r in rows]

    status, answer = post(url, {"inputs": pixels.tolist()})
    assert status == 200, answer
    got = [(p["class_index"], p["probability"]) for p in answer["predictions"]]
    assert [g[0] for g in got] == [e[0] for e in expected]
    assert np.allclose([g[1] for g in got], [e[1] for e in expected], atol=1e-5)
    first = answer["predictions"][0]
    assert len(first["probabilities"]) == 10 and abs(sum(first["probabilities"]) - 1) < 1e-4
    assert first["class_name"] == str(first["class_index"])

    quantized = (pixels[0] * 255).round() / 255  # what a PNG holds
    status, answer = post(url, {"inputs": [png_base64(pixels[0]), quantized.tolist()]})
    assert status == 200, answer
    from_png, from_list = answer["predictions"]
    assert from_png["class_index"] == from_list["class_index"]
    assert np.allclose(from_png["probabilities"], from_list["probabilities"], atol=1e-5)


BAD = [
    (b'{"inputs": [[0.1, 0.2', "JSON decode error: "),  # and where the parser stopped
    ({"inputs": []}, "at least 1 item"),
    ({"inputs": ["not an image"]}, "inputs[0]"),
    ({"inputs": [[[0.5] * 3] * 3]}, "shaped (3, 3)"),
    (b'{"inputs": [[[NaN, 0, 0, 0, 0, 0, 0, 0]]]}', "inputs[0]"),
    ({"inputs": [[[2.0] * 8] * 8]}, "in [0, 1]"),
    ({"inputs": [7]}, "valid"),
    ({"pixels": [[[0.5] * 8] * 8]}, "inputs"),
    ({"inputs": [[[0.5] * 8] * 8] * 65}, "at most 64"),
]


def test_bad_requests_get_4xx_naming_the_field_and_good_ones_are_still_answered(served):
    url = served["server"].url
    good_images = images(4, seed=1)
    _, reference = post(url, {"inputs": good_images.tolist()})
    nan_row = b'{"inputs": [' + json.dumps([[0.5] * 8] * 7).encode()[:-1] + b", [NaN, 0, 0, 0, 0, 0, 0, 0]]]}"
    bad = [*BAD, (nan_row, "NaN"), ({"inputs": ["A" * (2 * 2**20)]}, "too large")]
    jobs = [("bad", i % len(bad)) for i in range(200)] + [("good", i % 4) for i in range(50)]
    np.random.default_rng(0).shuffle(jobs)

    def send(job):
        kind, index = job
        if kind == "good":
            return job, post(url, {"inputs": [good_images[index].tolist()]})
        return job, post(url, bad[index][0])

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(send, jobs))
    for (kind, index), (status, answer) in outcomes:
        if kind == "good":
            assert status == 200, answer
            assert answer["predictions"][0]["probabilities"] == pytest.approx(
                reference["predictions"][index]["probabilities"], abs=1e-5)  # fmt: skip
        else:
            body, fragment = bad[index]
            assert 400 <= status < 500, (body[:80], status, answer)
            assert fragment in json.dumps(answer), (fragment, answer)
    assert post(url, {"inputs": good_images[:1].tolist()})[0] == 200


def test_concurrent_requests_arrive_in_one_batch_and_info_counts_them(served):
    url = served["server"].url
    before = get(url, "/info")["served"]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: post(url, {"inputs": images(1, seed=i).tolist()}), range(12)))
    assert all(status == 200 for status, _ in answers)
    assert max(answer["batch_requests"] for _, answer in answers) > 1
    info = get(url, "/info")
    assert info["served"]["requests"] - before["requests"] == 12
    assert info["served"]["batches"] - before["batches"] < 12 and info["served"]["max_batch_requests"] > 1
    assert info["class_names"] == [str(d) for d in range(10)] and info["input"]["modality"] == "vision"
    assert info["runtime"] == "torch" and info["ledger"]["latency_ms_p50"] > 0 and 0 < info["ledger"]["test/acc"] <= 1
    schema = get(url, "/openapi.json")
    assert "/predict" in schema["paths"] and "PredictRequest" in json.dumps(schema)


class CountingAPI:
    """Stands in for ClassifierAPI in the batcher: answers each request with its items and the batch it met."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches, self.fail_on = [], fail_on

    def predict(self, batch):
        self.batches.append(list(batch.inputs))
        if self.fail_on in batch.inputs:
            raise RuntimeError("the runtime lost its session")
        return [{"count": count, "batch_requests": len(batch.counts)} for count in batch.counts]

    def encode_response(self, output):
        return output


def batcher_answers(api, groups, max_batch_size=8, batch_timeout_s=0.2, timeout_s=5.0, also_open=0):
    """Each group of requests sent at once (all open on the server together, with `also_open` others still being
    read), the groups one after another."""
    import asyncio

    from trimlab.serve.inprocess import Batcher

    async def main():
        batcher = Batcher(api, max_batch_size, batch_timeout_s, timeout_s)
        await batcher.start()
        outcomes = []
        for group in groups:
            batcher.open_requests = len(group) + also_open
            started = time.monotonic()
            answers = await asyncio.gather(*(batcher.predict(items) for items in group), return_exceptions=True)
            outcomes.append((answers, time.monotonic() - started))
        await batcher.stop()
        return outcomes

    return asyncio.run(main())


def test_the_batcher_runs_a_lone_request_at_once_and_gathers_open_ones_up_to_max_batch_size():
    api = CountingAPI()
    (lone, lone_s), (many, _) = batcher_answers(api, [[["a"]], [[str(i)] for i in range(11)]], max_batch_size=8)
    assert lone == [{"count": 1, "batch_requests": 1}] and lone_s < 0.1  # the 0.2 s window was not waited for
    assert [answer["batch_requests"] for answer in many] == [8] * 8 + [3] * 3
    assert [len(batch) for batch in api.batches] == [1, 8, 3]


def test_a_batch_that_raises_fails_only_its_own_requests_and_the_batcher_goes_on():
    from fastapi import HTTPException

    api = CountingAPI(fail_on="bad")
    (first, _), (second, _) = batcher_answers(api, [[["x"], ["bad"]], [["y"]]])
    assert all(isinstance(e, HTTPException) and e.status_code == 500 for e in first)
    assert "RuntimeError: the runtime lost its session" in first[0].detail
    assert second == [{"count": 1, "batch_requests": 1}]


def test_a_request_that_waits_past_timeout_s_gets_504():
    from fastapi import HTTPException

    class Slow(CountingAPI):
        def predict(self, batch):
            time.sleep(0.5)
            return super().predict(batch)

    ((answers, _),) = batcher_answers(Slow(), [[["a"]]], batch_timeout_s=0.0, timeout_s=0.1, also_open=1)
    assert isinstance(answers[0], HTTPException) and answers[0].status_code == 504
    assert "timeout_s=0.1" in answers[0].detail


def test_a_batch_that_raises_fails_its_requests_with_500_and_a_reason():
    from fastapi import HTTPException

    from trimlab.serve.api import Batch, ClassifierAPI

    api = ClassifierAPI("unused", {}, 1, None, max_batch_size=4, batch_timeout=0.0)

    def broken(items):
        raise RuntimeError("the runtime lost its session")

    api.run = broken
    with pytest.raises(HTTPException) as raised:
        api.predict(Batch([np.zeros((1, 8, 8), np.float32)] * 3, [2, 1]))
    assert raised.value.status_code == 500
    assert "2 request(s) failed: RuntimeError: the runtime lost its session" in raised.value.detail


def test_loadtest_writes_every_figure_and_a_serving_cost_block(served):
    url, run_dir, cwd = served["server"].url, served["run_dir"], served["cwd"]
    result = run_cli(url, "--concurrency", "1,4", "--duration", "2", "--requests", "60", "--image-format", "png",
                     cwd=cwd, script="trimlab-loadtest")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    bench = json.loads((run_dir / "serve_bench.json").read_text())
    assert [level["concurrency"] for level in bench["levels"]] == [1, 4]
    for level in bench["levels"]:
        assert level["requests"] > 0 and level["errors"] == 0 and level["requests"] <= 60
        for key in ("requests_per_s", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "usd_per_million"):
            assert level[key] > 0, key
        assert level["predictions_per_s"] == level["requests_per_s"] and level["items_per_request"] == 1
        assert level["image_format"] == "png"  # and the server answered every PNG body (no errors)
        assert level["usd_per_million"] == pytest.approx(0.10 / 3600 / level["requests_per_s"] * 1e6, rel=1e-3)
    assert bench["cpu"] and bench["cpu_capability"] and bench["variant"] == "torch/eager"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["cost"]["serving"]["usd_per_million"] == bench["usd_per_million"]
    compared = run_cli(str(run_dir), "--csv", str(cwd / "cmp.csv"), "--pareto", "test/acc:serving.usd_per_million",
                       "--png", str(cwd / "p.png"), cwd=cwd, script="trimlab-compare")  # fmt: skip
    assert compared.returncode == 0, compared.stderr[-2000:]
    assert "serving.usd_per_million" in (cwd / "cmp.csv").read_text().splitlines()[0]
    assert "serving.usd_per_million" in compared.stdout


def test_command_line_errors_are_one_line(served):
    cwd, run_dir, port = served["cwd"], served["run_dir"], served["server"].port
    helped = run_cli("--help", cwd=cwd, script="trimlab-serve")
    assert helped.returncode == 0 and "max_batch_size" in helped.stdout and "batch_timeout_ms" in helped.stdout
    assert_clear_error(run_cli(cwd=cwd, script="trimlab-serve"), "run_dir is required")
    assert_clear_error(run_cli(f"run_dir={run_dir}", f"port={port}", cwd=cwd, script="trimlab-serve"),
                       "cannot listen on 127.0.0.1")  # fmt: skip
    assert_clear_error(run_cli(f"run_dir={run_dir}", "workers=2", cwd=cwd, script="trimlab-serve"),
                       "workers=2 needs engine=litserve")  # fmt: skip
    assert_clear_error(run_cli("http://example.com:80", cwd=cwd, script="trimlab-loadtest"),
                       "loads servers on this machine only")  # fmt: skip


def test_engine_litserve_answers_the_same_batches_concurrent_requests_and_drains_on_sigterm(served):
    cwd, run_dir, url = served["cwd"], served["run_dir"], served["server"].url
    pixels = images(3, seed=7).tolist()
    litserve = Server(run_dir, cwd, "engine=litserve", "max_batch_size=16", "batch_timeout_ms=30")
    try:
        assert get(litserve.url, "/info")["batching"]["engine"] == "litserve"
        (status, answer), (_, reference) = post(litserve.url, {"inputs": pixels}), post(url, {"inputs": pixels})
        assert status == 200 and "predictions" in reference, (answer, reference)
        for got, expected in zip(answer["predictions"], reference["predictions"], strict=True):
            assert got["class_index"] == expected["class_index"]
            assert np.allclose(got["probabilities"], expected["probabilities"], atol=1e-6)
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda i: post(litserve.url, {"inputs": images(1, seed=i).tolist()}), range(12)))
        assert all(status == 200 for status, _ in answers)
        assert get(litserve.url, "/info")["served"]["max_batch_requests"] > 1
        litserve.process.send_signal(signal.SIGTERM)
        assert litserve.process.wait(60) == 0
    finally:
        litserve.stop()


def test_sigterm_answers_open_requests_then_exits_0(served):
    """Requests in flight when SIGTERM comes are answered; later ones are refused (no connection), never failed."""
    server = served["server"]
    batch = {"inputs": images(64, seed=3).tolist()}
    with ThreadPoolExecutor(16) as pool:
        pending = [pool.submit(post, server.url, batch) for _ in range(400)]
        time.sleep(1.0)
        server.process.send_signal(signal.SIGTERM)
        outcomes = [future.result(timeout=90) for future in pending]
    assert server.process.wait(60) == 0
    statuses = [status for status, _ in outcomes]
    assert set(statuses) <= {200, 0}, sorted(set(statuses))
    assert statuses.count(200) >= 16, statuses.count(200)
    assert all(answer["predictions"][0]["class_name"] for status, answer in outcomes if status == 200)


def test_a_base64_wav_item_is_read_as_its_file_is(tmp_path):
    import soundfile as sf
    import torch

    from trimlab.data.speech import WavFolderDataModule, load_clips

    path = tmp_path / "clip.wav"
    sf.write(path, (0.3 * np.sin(np.arange(6000) / 5)).astype(np.float32), 8000)
    datamodule = WavFolderDataModule(root=str(tmp_path), sample_rate=16000, clip_seconds=1.0)
    item = datamodule.serve_item(base64.b64encode(path.read_bytes()).decode())
    assert torch.equal(item, load_clips([path], 16000, 16000)[0])
    for bad, fragment in (("bm90IGEgd2F2", "is base64 but not a WAV file"), ("%%", "base64"), (3, "got int")):
        with pytest.raises(ValueError) as raised:
            datamodule.serve_item(bad)
        assert fragment in str(raised.value), str(raised.value)


def test_a_runtime_s_fp32_target_serves_fp32_where_the_run_deployed_int8_there(tmp_path):
    from trimlab.serve import model

    (tmp_path / "deployed").mkdir()
    manifest = {"target": "onnxruntime", "variant": "int8", "runtime": "onnxruntime", "version": "1",
                "files": ["model.onnx"]}  # fmt: skip
    (tmp_path / "deployed" / "manifest.json").write_text(json.dumps(manifest))
    ledger = {"onnxruntime": {"int8": {"latency_ms_p50": 0.1}, "fp32": {"latency_ms_p50": 0.3}}}
    summary = {"cost": {"deploy": ledger}, "metrics": {"test/acc": 0.9}}
    assert model.plan(tmp_path, summary, "onnxruntime")["variant"] == "onnxruntime/int8"
    fp32 = model.plan(tmp_path, summary, "onnxruntime/fp32")
    assert fp32["variant"] == "onnxruntime/fp32" and fp32["source"] == "built"
    assert fp32["target"] == "onnxruntime" and fp32["ledger"]["latency_ms_p50"] == 0.3
