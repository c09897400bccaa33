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

from conftest import FAST, compose_train, preflight_error, run_cli
from trimlab.batches import forward
from trimlab.deploy import deployed
from trimlab.deploy.choice import choose, write_deployed
from trimlab.deploy.inductor import Inductor
from trimlab.deploy_checks import check_deploy
from trimlab.errors import CheckpointError, ConfigError
from trimlab.models.text import TransformerClassifier
from trimlab.models.vision import SmallCNN

# fp32 runtimes match torch to float rounding; int8 and bf16 only to what their precision keeps.
# Run together by `trimlab-train` in deployed_run below; tests/test_every_option.py counts them as run here.
RUNTIMES = ("inductor", "onnxruntime", "openvino")
TOLERANCE = {"fp32": 1e-4, "int8": 0.05, "default": 0.05}
VARIANTS = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "default"), ("openvino", "fp32"),
            ("openvino", "int8")]  # fmt: skip


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
            for variant in target.variants(model, context):
                built = target.build(model, variant, example, folder / target.name / variant, context)
                out[kind, target.name, variant] = (forward(model, example), forward(built.runner, example), built)
    return out


@pytest.mark.parametrize("kind", ["cnn", "text"])
@pytest.mark.parametrize("target,variant", VARIANTS)
def test_each_runtime_reproduces_the_torch_logits(exported, kind, target, variant):
    expected, served, built = exported[kind, target, variant]
    assert served.shape == expected.shape and served.dtype == torch.float32
    assert torch.allclose(served, expected, atol=TOLERANCE[variant]), (served - expected).abs().max()
    assert all(path.is_file() for path in built.files) and built.version


@pytest.mark.parametrize("target,variant", VARIANTS)
def test_a_deployed_variant_serves_exactly_what_the_ledger_scored(exported, tmp_path, target, variant):
    """deployed/ read back (what trimlab-eval and trimlab-predict load) gives the very logits the ledger scored."""
    _, served, built = exported["cnn", target, variant]
    example = tiny_models()["cnn"][1]
    write_deployed(tmp_path, f"{target}/{variant}", built, {"test/acc": 0.5}, example, ["a", "b", "c"])
    manifest = deployed.read_manifest(tmp_path)
    assert manifest["runtime"] == target and manifest["metrics"] == {"test/acc": 0.5}
    runner = deployed.load(tmp_path, None, None, manifest)
    assert torch.equal(runner(example), served)


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


def test_inductor_serves_large_batches_in_chunks_and_reloads_from_deployed(tmp_path, monkeypatch):
    """The wiring only (torch.compile itself is exercised by the compression tests and the runs below): chunks of
    the compiled batch size, and the deployed weights loaded back into the run's model class."""
    from hydra.utils import instantiate

    from trimlab.factory import make_backbone

    monkeypatch.setattr(torch, "compile", lambda model, **_: model)
    cfg = compose_train(output_dir=tmp_path)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    model = make_backbone(cfg, datamodule).eval()
    example = next(iter(datamodule.test_dataloader()))[0][:5]
    built = Inductor().build(model, "fp32", example, tmp_path / "built", {"max_length": 16, "chunk": 2})
    assert torch.allclose(built.runner(example), model(example), atol=1e-6)
    write_deployed(tmp_path, "inductor/fp32", built, {}, example, datamodule.class_names)
    assert sorted(p.name for p in (tmp_path / "deployed").iterdir()) == ["manifest.json", "model.pt", "recipe.json"]
    runner = deployed.load(tmp_path, cfg, datamodule, deployed.read_manifest(tmp_path))
    assert torch.equal(runner(example), model(example))


def test_a_deployed_artifact_without_its_runtime_or_unreadable_is_one_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "deployed"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not an onnx file")
    manifest = {"runtime": "onnxruntime", "version": "1.31.1", "variant": "fp32", "files": ["model.onnx"]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"onnxruntime 1.31.1 cannot load .*model.onnx"):
        deployed.load(tmp_path, None, None, deployed.read_manifest(tmp_path))
    monkeypatch.setattr(deployed.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"served by onnxruntime 1.31.1, which is not installed; pip install"):
        deployed.check_runtime(manifest, tmp_path)
    (folder / "manifest.json").write_text("{")
    with pytest.raises(CheckpointError, match="manifest.json is corrupt"):
        deployed.read_manifest(tmp_path)


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


@pytest.fixture(scope="module")
def deployed_run(tmp_path_factory) -> tuple[Path, dict, str]:
    """A compressed digits run (structured pruning, then int8) measured in all three runtimes."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    cwd = tmp_path_factory.mktemp("deployed_run")
    result = run_cli(
        *FAST,
        "trainer.max_epochs=1",
        "compression=[prune_structured,quantize_static]",
        f"deploy=[{','.join(RUNTIMES)}]",
        "deploy.tolerance_pt=5",
        "deploy.openvino.int8=false",  # NNCF int8: built and read back in the unit tests above
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    return run_dir, json.loads((run_dir / "summary.json").read_text()), result.stdout


@pytest.mark.slow
def test_a_digits_run_measures_every_runtime_and_deploys_the_choice(deployed_run):
    run_dir, summary, printed = deployed_run
    ledger = summary["cost"]["deploy"]
    assert set(ledger) == {*RUNTIMES, "best"}
    assert set(ledger["inductor"]) == {"fp32", "compressed"}  # the trained model (the baseline) and the artifact
    assert ledger["inductor"]["fp32"]["vs_inductor"]["latency"] == 1.0
    for target, variants in ledger.items():
        for variant, found in ({} if target == "best" else variants).items():
            assert found["status"] == "ok", (target, variant, found)
            assert found["latency_ms_p50"] > 0 and found["size_bytes"] > 0 and 0 <= found["test/acc"] <= 1
    # The int8 program does not convert to ONNX: those runtimes export the pruned model and quantize it themselves.
    assert ledger["onnxruntime"]["int8"]["settings"]["exported_from"] == "the model before quantize_static"
    chosen = summary["deploy"]["chosen"]
    manifest = json.loads((run_dir / "deployed" / "manifest.json").read_text())
    assert f"{manifest['target']}/{manifest['variant']}" == chosen == ledger["best"]["variant"]
    assert manifest["class_names"] == [str(n) for n in range(10)]
    assert all((run_dir / "deployed" / name).is_file() for name in manifest["files"])
    assert not (run_dir / "deploy.scratch").exists() and f"* {chosen}" in printed  # the choice table, marked


@pytest.mark.slow
def test_eval_and_predict_serve_the_deployed_variant(deployed_run, tmp_path):
    run_dir, summary, _ = deployed_run
    result = run_cli(f"run_dir={run_dir}", cwd=tmp_path, script="trimlab-eval")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((run_dir / "eval.json").read_text())
    assert evaluated["reproduces"] and evaluated["checkpoint"].startswith(str(run_dir / "deployed"))
    best = summary["cost"]["deploy"]["best"]
    assert evaluated["metrics"]["test/acc"] == best["test/acc"]
    np = pytest.importorskip("numpy")
    np.save(tmp_path / "digits.npy", np.zeros((3, 8, 8), dtype=np.float32))
    result = run_cli(f"run_dir={run_dir}", f"inputs={tmp_path / 'digits.npy'}", f"output={tmp_path / 'p.csv'}",
                     cwd=tmp_path, script="trimlab-predict")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 4


@pytest.mark.slow
def test_compare_shows_the_best_target_and_every_target_on_the_pareto_front(deployed_run, tmp_path):
    run_dir, summary, _ = deployed_run
    result = run_cli(str(run_dir), "--markdown", str(tmp_path / "runs.md"), cwd=tmp_path, script="trimlab-compare")
    assert result.returncode == 0, result.stderr[-3000:]
    head, row = (tmp_path / "runs.md").read_text().splitlines()[::2][:2]
    assert "deploy.best | deploy.best.latency_ms_p50" in head and f"| {summary['deploy']['chosen']} |" in row
    png = tmp_path / "front.png"
    result = run_cli(str(run_dir), "--targets", "--pareto", "test/acc:latency_ms_p50", "--png", str(png),
                     cwd=tmp_path, script="trimlab-compare")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "openvino/fp32" in result.stdout and png.is_file()
    front = result.stdout.split("Pareto front (")[1].splitlines()[0]
    assert run_dir.name in front and "/" in front  # the front is made of (run, target) pairs


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["deploy=[inductor,tensorrt]"], ["unknown option 'tensorrt' for 'deploy'", "onnxruntime, openvino"]),
        (["deploy=[inductor,onnxruntime]", "deploy.tolerance_pt=-1"], ["deploy.tolerance_pt=-1 must be a number >= 0"]),
    ],
)  # fmt: skip
def test_bad_deploy_command_lines_fail_before_any_run_dir(overrides, fragments, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = preflight_error(capsys, *FAST, *overrides)
    assert all(fragment in line for fragment in fragments), line
    assert not (tmp_path / "outputs").exists()


def test_sweep_objectives_on_the_deployed_variant():
    from trimlab.sweep import objective, objective_keys

    key = "cost.deploy.best.latency_ms_p50"
    listed = {"inductor": {"_target_": "trimlab.deploy.inductor.Inductor"}}
    with pytest.raises(ConfigError, match="needs deploy targets beyond inductor"):
        objective_keys(OmegaConf.create({"optimized_metric": key, "deploy": listed}))
    with pytest.raises(ConfigError, match="'speed' is not a deploy ledger figure"):
        objective_keys(OmegaConf.create({"optimized_metric": "cost.deploy.best.speed", "deploy": listed}))
    listed["onnxruntime"] = {"_target_": "trimlab.deploy.ort.OnnxRuntime"}
    cfg = OmegaConf.create({"optimized_metric": ["cost.deploy.best.test/acc", key], "deploy": listed})
    summary = {"status": "completed", "metrics": {}, "cost": {"deploy": {"best": {"test/acc": 0.9, **LEDGER_BEST}}}}
    assert objective(cfg, summary) == [0.9, 0.2]


LEDGER_BEST = {"variant": "onnxruntime/fp32", "status": "ok", "latency_ms_p50": 0.2, "throughput_samples_per_s": 800}


def test_ledger_rows_for_tables_and_tracked_runs():
    from trimlab.deploy import rows

    ledger = {**LEDGER, "best": {**LEDGER_BEST, "test/acc": 0.95}}
    assert rows.best_columns(ledger) == {
        "deploy.best": "onnxruntime/fp32",
        "deploy.best.latency_ms_p50": 0.2,
        "deploy.best.throughput_samples_per_s": 800,
        "deploy.best.test/acc": 0.95,
    }
    run = {"run": "r1", "run_dir": "/runs/r1", "status": "completed", "latency_ms_p50": 0.4, "ledger": ledger}
    pairs = rows.per_target([run, {"run": "r2", "run_dir": "/runs/r2", "status": "completed"}])
    assert [p["run"] for p in pairs] == ["r1 inductor/fp32", "r1 onnxruntime/fp32", "r1 onnxruntime/int8", "r2"]
    assert [p.get("latency_ms_p50") for p in pairs] == [0.4, 0.2, 0.1, None] and len({p["key"] for p in pairs}) == 4
    logged = {
        "cost/deploy/onnxruntime/int8/test/acc": 0.93,
        "cost/deploy/onnxruntime/int8/latency_ms_p50": 0.1,
        "cost/deploy/best/latency_ms_p50": 0.2,
        "cost/deploy/onnxruntime/int8/vs_inductor/latency": 4.0,
    }
    assert rows.ledger_from_flat(logged) == {"onnxruntime": {"int8": {"test/acc": 0.93, "latency_ms_p50": 0.1}},
                                             "best": {"latency_ms_p50": 0.2}}  # fmt: skip


def test_a_sweep_on_the_deployed_variant_plots_its_accuracy_against_its_cost():
    from trimlab.sweep_report import axes

    assert axes(["cost.deploy.best.test/acc", "cost.deploy.best.latency_ms_p50"]) == (
        "deploy.best.test/acc",
        "deploy.best.latency_ms_p50",
    )
    assert axes(["test/acc", "cost.latency_ms_p50"]) == ("test/acc", "latency_ms_p50")
