"""Deploy targets: each runtime's export round-trip against the torch model's logits (a tiny CNN and a tiny text
encoder), a variant that cannot be built recorded `unsupported` rather than raised, the choice by objective and
tolerance, the bad settings refused before training, and one digits run across all three runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from conftest import FAST, run_cli
from trimlab.batches import forward
from trimlab.deploy.choice import choose, write_deployed
from trimlab.deploy.inductor import Inductor
from trimlab.deploy_checks import check_deploy
from trimlab.errors import ConfigError
from trimlab.models.text import TransformerClassifier
from trimlab.models.vision import SmallCNN

# fp32 runtimes match torch to float rounding; int8 and bf16 only to what their precision keeps.
TOLERANCE = {"fp32": 1e-4, "int8": 0.05, "default": 0.05}


def tiny_models() -> dict[str, tuple[torch.nn.Module, object]]:
    torch.manual_seed(0)
    cnn = SmallCNN([1, 8, 8], 3, widths=(4, 8)).eval()
    text = TransformerClassifier([16], 3, vocab_size=50, dim=16, depth=1, heads=2).eval()
    mask = torch.ones(5, 16, dtype=torch.long)
    mask[:, 12:] = 0
    return {"cnn": (cnn, torch.randn(5, 1, 8, 8)),
            "text": (text, {"input_ids": torch.randint(1, 50, (5, 16)), "attention_mask": mask})}  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """Every ONNX Runtime and OpenVINO variant of both tiny models, built once (an ONNX export takes seconds)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from trimlab.deploy.ort import OnnxRuntime
    from trimlab.deploy.ov import OpenVino

    out = {}
    for kind, (model, example) in tiny_models().items():
        folder = tmp_path_factory.mktemp(kind)
        context = {"scratch": folder / "export", "calibration": [example, example]}
        for target in (OnnxRuntime(), OpenVino()):
            for variant in target.variants(model):
                built = target.build(model, variant, example, folder / target.name / variant, context)
                out[kind, target.name, variant] = (forward(model, example), forward(built.runner, example), built)
    return out


@pytest.mark.parametrize("kind", ["cnn", "text"])
@pytest.mark.parametrize("target,variant", [("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                                            ("openvino", "default"), ("openvino", "fp32")])  # fmt: skip
def test_each_runtime_reproduces_the_torch_logits(exported, kind, target, variant):
    expected, served, built = exported[kind, target, variant]
    assert served.shape == expected.shape and served.dtype == torch.float32
    assert torch.allclose(served, expected, atol=TOLERANCE[variant]), (served - expected).abs().max()
    assert all(path.is_file() for path in built.files) and built.version


def test_the_runners_take_any_batch_size(exported):
    """Dynamic batch (and sequence) dimensions: batch 1 and a shorter text than the export example."""
    models = tiny_models()
    cnn, image = models["cnn"]
    runner = exported["cnn", "onnxruntime", "fp32"][2].runner
    assert torch.allclose(runner(image[:1]), cnn(image[:1]), atol=1e-4)
    text, batch = models["text"]
    short = {key: value[:1, :8] for key, value in batch.items()}
    openvino = exported["text", "openvino", "fp32"][2].runner
    assert torch.allclose(openvino(**short), text(**short), atol=1e-4)


def test_inductor_serves_large_batches_in_chunks_of_the_compiled_size(tmp_path, monkeypatch):
    """The wiring only (torch.compile itself is exercised by the compression tests and the run below)."""
    monkeypatch.setattr(torch, "compile", lambda model, **_: model)
    model, example = tiny_models()["cnn"]
    built = Inductor().build(model, "fp32", example, tmp_path, {"max_length": 16, "chunk": 2})
    assert torch.allclose(built.runner(example), model(example), atol=1e-6)
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "recipe.json").is_file()


def test_a_variant_that_cannot_be_built_is_recorded_not_raised(tmp_path):
    pytest.importorskip("onnxruntime")
    from trimlab.deploy import ledger
    from trimlab.deploy.ort import OnnxRuntime

    model, example = tiny_models()["cnn"]
    graph = torch.fx.symbolic_trace(model)  # stands for an int8 stage's exported program
    data = TensorDataset(example, torch.tensor([0, 1, 2, 0, 1]))
    datamodule = type("DM", (), {"class_names": ["a", "b", "c"], "test_dataloader": lambda self: DataLoader(data),
                                 "train_dataloader": lambda self: DataLoader(data)})()  # fmt: skip
    cfg = OmegaConf.create({"latency_batch_size": 1, "throughput_batch_size": 4, "latency_warmup": 1,
                            "latency_repeats": 2, "throughput_repeats": 2, "price_per_hour": 0.1})  # fmt: skip
    found, built = ledger.measure_all([OnnxRuntime(int8=False)], graph, datamodule, cfg, tmp_path, {})
    assert found["onnxruntime"]["fp32"]["status"] == "unsupported"
    assert "cannot be exported to ONNX" in found["onnxruntime"]["fp32"]["reason"] and not built


LEDGER = {
    "inductor": {"fp32": {"status": "ok", "test/acc": 0.95, "latency_ms_p50": 0.4, "throughput_samples_per_s": 900}},
    "onnxruntime": {
        "fp32": {"status": "ok", "test/acc": 0.95, "latency_ms_p50": 0.2, "throughput_samples_per_s": 800},
        "int8": {"status": "ok", "test/acc": 0.93, "latency_ms_p50": 0.1, "throughput_samples_per_s": 1000},
    },
    "openvino": {"default": {"status": "unsupported", "reason": "TypeError: no"}},
}


def test_the_cheapest_variant_within_tolerance_is_chosen_and_the_table_says_why():
    picked = choose(LEDGER, 0.95, "latency", 0.5)
    assert picked["chosen"] == "onnxruntime/fp32"  # int8 is faster but 2 points worse
    rows = {row["variant"]: row for row in picked["why"]}
    assert picked["why"][0]["chosen"] and rows["onnxruntime/int8"]["acc_delta_pt"] == -2.0
    assert not rows["onnxruntime/int8"]["eligible"] and rows["openvino/default"]["reason"] == "TypeError: no"
    assert choose(LEDGER, 0.95, "latency", 3)["chosen"] == "onnxruntime/int8"
    assert choose(LEDGER, 0.95, "throughput", 0.5)["chosen"] == "inductor/fp32"
    assert choose(LEDGER, 0.99, "latency", 0.5)["chosen"] is None


def test_the_deployed_folder_is_written_whole_with_its_manifest(tmp_path):
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"onnx")
    built = type("Built", (), {"files": [artifact], "runtime": "onnxruntime", "version": "1.31.1", "settings": {}})
    entry = {"test/acc": 0.9, "latency_ms_p50": 0.1}
    manifest = write_deployed(tmp_path, "onnxruntime/fp32", built, entry, torch.zeros(2, 1, 8, 8), ["a", "b"])
    assert json.loads((tmp_path / "deployed" / "manifest.json").read_text()) == manifest
    assert manifest["inputs"] == {"input": {"dtype": "float32", "shape": [None, 1, 8, 8]}}
    assert manifest["variant"] == "fp32" and manifest["packages"]["torch"].startswith("2.13")
    assert (tmp_path / "deployed" / "model.onnx").read_bytes() == b"onnx" and not (tmp_path / "deployed.tmp").exists()


@pytest.mark.parametrize(
    "deploy,message",
    [
        ({"objective": "speed", "tolerance_pt": 0.5}, "deploy.objective=speed is unknown"),
        ({"objective": "latency", "tolerance_pt": -1}, "must be a number >= 0"),
        ({"objective": "latency", "tolerance_pt": 0.5,
          "fake": {"_target_": "x.Y", "_packages_": ["no_such_runtime_pkg"]}}, "pip install 'trimlab[deploy]'"),
    ],
)  # fmt: skip
def test_bad_deploy_settings_are_refused_before_training(deploy, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_deploy(OmegaConf.create({"deploy": deploy}))


@pytest.mark.slow
def test_a_digits_run_measures_every_runtime_and_deploys_the_choice(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    result = run_cli(*FAST, "trainer.max_epochs=1", "deploy=[inductor,onnxruntime,openvino]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    ledger = summary["cost"]["deploy"]
    assert set(ledger) == {"inductor", "onnxruntime", "openvino", "best"}
    assert ledger["inductor"]["fp32"]["vs_inductor"]["latency"] == 1.0
    for target, variants in ledger.items():
        for variant, found in ({} if target == "best" else variants).items():
            assert found["status"] == "ok", (target, variant, found)
            assert found["latency_ms_p50"] > 0 and found["size_bytes"] > 0 and 0 <= found["test/acc"] <= 1
    chosen = summary["deploy"]["chosen"]
    manifest = json.loads((run_dir / "deployed" / "manifest.json").read_text())
    assert f"{manifest['target']}/{manifest['variant']}" == chosen == ledger["best"]["variant"]
    assert manifest["class_names"] == [str(n) for n in range(10)]
    assert all((run_dir / "deployed" / name).is_file() for name in manifest["files"])
    assert not (run_dir / "deploy.scratch").exists()
    print(json.dumps({k: v for k, v in ledger.items() if k != "best"}, indent=1))
