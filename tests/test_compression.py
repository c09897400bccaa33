"""Compression stages on tiny models: each transformation really happens, and its artifact reloads
(`weights_only=True`, or as an exported program) with the same outputs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from trimlab.compression import artifact
from trimlab.compression.base import Context
from trimlab.compression.distillation import DistillationLoss
from trimlab.compression.pruning import GradualPruning, Prune, PruneStructured, prune_to, sparsity_of
from trimlab.compression.quantization import BFloat16, QuantizationAwareTraining, QuantizeDynamic, QuantizeStatic
from trimlab.compression.registry import build_stages, check_stages
from trimlab.compression_checks import check_listed_once
from trimlab.errors import ConfigError
from trimlab.models.text import TransformerClassifier
from trimlab.models.vision import SmallCNN

OPTIONS = Path(__file__).resolve().parents[1] / "conf" / "compression"


class TinyData:
    """Just what stages read from a DataModule: train batches and the input shape."""

    def __init__(self, inputs, targets, input_shape) -> None:
        self.batches = [(inputs[i : i + 8], targets[i : i + 8]) for i in range(0, len(targets), 8)]
        self.input_shape = input_shape

    def train_dataloader(self):
        return self.batches

    test_dataloader = val_dataloader = train_dataloader


def cnn_context(tmp_path, finetune=None) -> tuple[nn.Module, Context]:
    torch.manual_seed(0)
    model = SmallCNN([1, 8, 8], num_classes=4, widths=[8, 16]).eval()
    inputs, targets = torch.randn(32, 1, 8, 8), torch.randint(0, 4, (32,))
    data = TinyData(inputs, targets, (1, 8, 8))
    keep = finetune or (lambda m, epochs, callbacks, lr_factor=1.0: m)
    return model, Context(cfg=None, datamodule=data, run_dir=tmp_path, sample=inputs[:8], finetune=keep)


def text_context(tmp_path) -> tuple[nn.Module, Context]:
    torch.manual_seed(0)
    model = TransformerClassifier([16], num_classes=2, vocab_size=50, dim=32, depth=1, heads=2).eval()
    ids = torch.randint(3, 50, (16, 12))
    mask = torch.ones_like(ids)
    mask[8:, 9:] = 0
    sample = {"input_ids": ids, "attention_mask": mask}
    data = TinyData(ids, torch.randint(0, 2, (16,)), (16,))
    data.batches = [({"input_ids": ids[:8], "attention_mask": mask[:8]}, torch.zeros(8, dtype=torch.long))]
    return model, Context(cfg=None, datamodule=data, run_dir=tmp_path, sample=sample, finetune=lambda m, *a, **k: m)


def linear_targets(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruning_reaches_the_sparsity_exactly_and_never_compounds(scope):
    model = SmallCNN([1, 8, 8], num_classes=4, widths=[8, 16])
    targets = linear_targets(model)
    total = sum(m.weight.numel() for m, _ in targets)
    for sparsity in (0.3, 0.3, 0.7):  # the same value twice leaves the same zeros; a higher one extends them
        prune_to(targets, sparsity, scope)
        zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
        expected = (
            round(sparsity * total)
            if scope == "global"
            else sum(round(sparsity * m.weight.numel()) for m, _ in targets)
        )
        assert zeros == expected
    assert not any(name.endswith(("_orig", "_mask")) for name in model.state_dict())  # masks made permanent
    assert all(bool((m.weight != 0).any()) for m, _ in targets)  # no layer emptied


def test_global_pruning_keeps_a_weight_in_every_layer():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.fill_(1e-6)  # all smallest: plain global magnitude pruning would empty this layer
    prune_to(linear_targets(model), 0.9, "global")
    assert int((model[1].weight != 0).sum()) >= 1


def test_gradual_schedule_is_cubic_and_ends_at_the_target():
    callback = GradualPruning([], sparsity=0.8, scope="global", updates=10, end_fraction=0.5)
    values = [callback.target_at(step, total=100) for step in range(101)]
    assert values[0] == 0.0 and values[50] == pytest.approx(0.8) and values[100] == pytest.approx(0.8)
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    assert values[10] > 0.8 * 0.1  # cubic: fast at first, then slow
    assert len(set(values[:50])) == 10  # recomputed `updates` times before the end


def test_prune_stage_reloads_into_the_plain_model(tmp_path):
    model, context = cnn_context(tmp_path)
    pruned = Prune(sparsity=0.6, epochs=0).apply(model, context)
    assert sparsity_of(linear_targets(pruned)) == pytest.approx(0.6, abs=1e-3)
    buffer = io.BytesIO()
    torch.save(pruned.state_dict(), buffer)
    buffer.seek(0)
    fresh = SmallCNN([1, 8, 8], num_classes=4, widths=[8, 16]).eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh(context.sample), pruned(context.sample))


def picked(names: list[str], knobs: dict | None = None):
    """The `compression` node of `compression=[names]` as the option files compose it, with `knobs` set."""
    cfg = OmegaConf.create({"compression": {}})
    for name in names:
        cfg.compression = OmegaConf.merge(cfg.compression, OmegaConf.load(OPTIONS / f"{name}.yaml"))
    for key, value in (knobs or {}).items():
        OmegaConf.update(cfg, f"compression.{key}", value)
    return cfg


def test_pruning_knobs_out_of_range_are_refused():
    for sparsity in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=r"compression.prune.sparsity=.* is outside \[0, 1\)"):
            build_stages(picked(["prune"], {"prune.sparsity": sparsity}))
    with pytest.raises(ConfigError, match="channel_ratio"):
        build_stages(picked(["prune_structured"], {"prune_structured.channel_ratio": 1.0}))
    stage = build_stages(picked(["prune"], {"prune.sparsity": 0.0}))[0]  # the low end is in range
    assert isinstance(stage, Prune) and stage.sparsity == 0.0


def test_built_stages_carry_what_their_option_files_declare():
    prune, bf16 = build_stages(picked(["prune", "bf16"]))
    assert (prune.name, prune.exports, prune.precision) == ("prune", False, "32-true")
    assert (bf16.name, bf16.exports, bf16.precision) == ("bf16", True, "bf16")
    assert [s.trains_main_fit for s in check_stages(picked(["distill", "prune"]))] == [True, False]
    with pytest.raises(ConfigError, match="_stage_ declares export; it takes exports"):
        check_stages(picked(["prune"], {"prune._stage_.export": True}))


def test_structured_pruning_removes_channels_and_rebuilds_from_the_saved_shapes(tmp_path):
    model, context = cnn_context(tmp_path)
    stage = PruneStructured(channel_ratio=0.5, epochs=0)
    pruned = stage.apply(model, context).eval()
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [4, 8]  # physically smaller
    assert pruned.head[-1].out_features == 4  # the classes are kept
    assert stage.facts()["macs_after"] < stage.facts()["macs_before"] / 3
    buffer = io.BytesIO()
    torch.save(pruned.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = SmallCNN([1, 8, 8], num_classes=4, widths=[8, 16])
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict(state)
    artifact.resize_to(fresh, state)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.eval()(context.sample), pruned(context.sample))


def test_a_channel_ratio_that_empties_a_layer_is_refused(tmp_path):
    model, context = cnn_context(tmp_path)
    with pytest.raises(ConfigError, match="would remove every channel of Conv2d"):
        PruneStructured(channel_ratio=0.9).check_model(model, context.sample[:2])


def test_a_model_that_opts_out_of_structured_pruning_is_refused_whatever_its_modules_are_named(tmp_path):
    model, context = cnn_context(tmp_path)
    model.encoder = nn.Identity()  # a submodule name alone says nothing about what pruning may cut
    PruneStructured(channel_ratio=0.5).check(context.datamodule, model)
    model.prunable_channels = False  # the model contract's opt-out (trimlab.models)
    with pytest.raises(ConfigError, match="prune_structured cannot prune SmallCNN"):
        PruneStructured(channel_ratio=0.5).check(context.datamodule, model)


def test_structured_pruning_of_a_transformer_touches_only_the_feed_forward_width(tmp_path):
    model, context = text_context(tmp_path)
    pruned = PruneStructured(channel_ratio=0.5, epochs=0).apply(model, context)
    block = pruned.blocks[0]
    assert block.mlp[0].out_features == 32 and block.mlp[3].in_features == 32  # hidden 64 -> 32
    assert block.attention.qkv.out_features == 96 if hasattr(block.attention, "qkv") else True
    assert pruned.embed.weight.shape[1] == 32 if hasattr(pruned, "embed") else True
    assert pruned(**context.sample).shape == (16, 2)


def saved_program_outputs(model: nn.Module, context: Context, tmp_path) -> nn.Module:
    with artifact.staged(tmp_path) as folder:
        artifact.save(model, True, context.sample, folder, ["stage"], 16)
    return artifact.load(tmp_path, None, None)


def test_static_quantization_puts_int8_ops_in_the_graph_and_the_program_reloads(tmp_path):
    model, context = cnn_context(tmp_path)
    reference = model(context.sample)
    stage = QuantizeStatic(calibration_batches=4)
    quantized = stage.apply(model, context)
    ops = stage.facts()["int8_ops"]
    assert ops["quantize_per_tensor"] > 0 and ops["dequantize_per_channel"] > 0 and ops["int8_tensors"] == 3
    assert all(t.dtype != torch.float32 or "bias" in n for n, t in quantized.named_buffers() if t.dim() > 1)
    output = quantized(context.sample)
    assert (output - reference).abs().max() < 0.1  # int8 rounding, not another model
    reloaded = saved_program_outputs(quantized, context, tmp_path)
    assert torch.equal(reloaded(context.sample), output)
    assert reloaded(context.sample[:1]).shape == (1, 4)  # dynamic batch: batch 1 runs too


def test_skip_sensitive_keeps_the_layer_whose_int8_costs_most_val_accuracy_in_fp32(tmp_path):
    model, context = cnn_context(tmp_path)
    data = context.datamodule
    with torch.no_grad():
        # The same function, but the second conv's input has one channel 3000x the others (the first conv's
        # channel 0 up, the second conv's weights on it down; BN of a fresh model and ReLU pass the scale on):
        # int8 of that input, one scale per tensor, rounds the other channels away.
        model.features[0][0].weight[0] *= 3000
        model.features[2][0].weight[:, 0] /= 3000
        data.batches = [(inputs, model(inputs).argmax(-1)) for inputs, _ in data.batches]  # fp32 gets all right
    stage = QuantizeStatic(calibration_batches=1, skip_sensitive=1)
    quantized = stage.apply(model, context)
    facts = stage.facts()
    rise = facts["int8_val_loss_rise"]
    assert sorted(rise) == sorted(facts["int8_val_acc_loss_pt"]) == ["features.0.0", "features.2.0", "head.3"]
    assert facts["kept_fp32"] == ["features.2.0"] and rise["features.2.0"] > 10 * max(rise["features.0.0"],
                                                                                      rise["head.3"])  # fmt: skip
    assert facts["int8_ops"]["int8_tensors"] == 2  # the other two layers are int8
    assert quantized(context.sample).shape == (8, 4)
    with pytest.raises(ConfigError, match="quantize_static.skip_sensitive"):
        QuantizeStatic(skip_sensitive=-1)


def test_dynamic_quantization_of_a_transformer(tmp_path):
    model, context = text_context(tmp_path)
    reference = model(**context.sample)
    stage = QuantizeDynamic()
    quantized = stage.apply(model, context)
    assert stage.facts()["int8_ops"].get("choose_qparams", 0) > 0  # activation scales chosen at run time
    output = quantized(**context.sample)
    assert (output - reference).abs().max() < 0.1
    reloaded = saved_program_outputs(quantized, context, tmp_path)
    assert torch.equal(reloaded(**context.sample), output)
    short = {k: v[:3, :5] for k, v in context.sample.items()}
    assert reloaded(**short).shape == (3, 2)  # dynamic batch and sequence length


def test_qat_fine_tunes_fake_quantized_weights_then_converts_to_int8(tmp_path):
    from types import SimpleNamespace

    seen = {"rates": [], "epoch_states": {}}
    val_losses = {0.01: [0.9, 0.8], 0.1: [0.5, 0.7]}  # what validation says after each epoch, per rate

    def finetune(model, epochs, callbacks, lr_factor=1.0):  # a fit as Lightning runs it, callbacks included
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1 * lr_factor)
        module = SimpleNamespace(backbone=model)
        for epoch in range(epochs):
            for inputs, target in context.datamodule.train_dataloader():
                loss = F.cross_entropy(model(inputs), target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            seen["epoch_states"][(lr_factor, epoch)] = {k: v.clone() for k, v in model.state_dict().items()}
            trainer = SimpleNamespace(callback_metrics={"val/loss": torch.tensor(val_losses[lr_factor][epoch])},
                                      sanity_checking=False, current_epoch=epoch)  # fmt: skip
            for callback in callbacks:
                callback.on_validation_end(trainer, module)
        for callback in callbacks:
            callback.on_fit_end(None, module)
        seen["rates"].append(lr_factor)
        seen["fake_quant"] = sum("FakeQuantize" in type(m).__name__ for m in model.graph_module.modules())
        seen.setdefault("final_states", {})[lr_factor] = model.state_dict()
        return model

    model, context = cnn_context(tmp_path, finetune)
    stage = QuantizationAwareTraining(epochs=2, lr_factors=[0.01, 0.1], calibration_batches=2)
    quantized = stage.apply(model, context)
    assert seen["fake_quant"] >= 3  # weights and activations were fake-quantized while training
    assert seen["rates"] == [0.01, 0.1]  # one fine-tune per rate, each from the same calibrated start
    facts = stage.facts()
    assert facts["qat_lr_factor"] == 0.1 and facts["qat_best_epoch"] == 0  # the lowest val/loss of all: 0.5
    assert facts["qat_val_loss"] == {"0.01": 0.8, "0.1": 0.5}
    kept, best = seen["final_states"][0.1], seen["epoch_states"][(0.1, 0)]
    assert all(torch.equal(kept[k], best[k]) for k in best)  # the fit ended with its best epoch's weights
    assert not all(torch.equal(kept[k], seen["epoch_states"][(0.1, 1)][k]) for k in best)
    assert facts["int8_ops"]["int8_tensors"] == 3
    reloaded = saved_program_outputs(quantized, context, tmp_path)
    assert torch.equal(reloaded(context.sample), quantized(context.sample))
    with pytest.raises(ConfigError, match="must be a list of rates"):
        QuantizationAwareTraining(lr_factors=0.1)


def test_bf16_stage_runs_in_bfloat16_and_returns_float32(tmp_path):
    model, context = cnn_context(tmp_path)
    reference = model(context.sample)
    converted = BFloat16().apply(model, context)
    assert any(t.dtype == torch.bfloat16 for t in converted.state_dict().values())
    output = converted(context.sample)
    assert output.dtype == torch.float32
    assert (output - reference).abs().max() < 0.2
    reloaded = saved_program_outputs(converted, context, tmp_path)
    assert torch.equal(reloaded(context.sample), output)


def test_a_model_that_cannot_be_exported_is_named():
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # control flow on values: torch.export cannot trace it
                return x
            return -x

    with pytest.raises(ConfigError, match="cannot export DataDependent.*in test_compression.forward"):
        artifact.export_program(DataDependent(), torch.randn(4, 3))


def test_distillation_loss_is_hintons():
    torch.manual_seed(0)
    student, teacher, target = torch.randn(6, 3), torch.randn(6, 3), torch.randint(0, 3, (6,))
    t = 2.0
    kl = F.kl_div(F.log_softmax(student / t, -1), F.softmax(teacher / t, -1), reduction="batchmean")
    assert DistillationLoss(t, 1.0)(student, target, teacher, None) == pytest.approx(float(t * t * kl), rel=1e-5)
    assert DistillationLoss(t, 0.0)(student, target, teacher, None) == pytest.approx(
        float(F.cross_entropy(student, target))
    )


def test_an_online_teacher_is_frozen_and_not_part_of_the_student():
    from trimlab.task import ClassificationTask

    teacher = nn.Linear(4, 3)
    student = nn.Linear(4, 3)
    task = ClassificationTask(student, 3, optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    task.distillation = DistillationLoss(2.0, 0.5, teacher.requires_grad_(False))
    assert all(key.startswith("backbone.") for key in task.state_dict())
    assert not any(p is q for p in task.parameters() for q in teacher.parameters())
    loss = task.distillation(student(torch.randn(5, 4)), torch.randint(0, 3, (5,)), None, torch.randn(5, 4))
    loss.backward()
    assert teacher.weight.grad is None and student.weight.grad is not None
    assert not task.distillation.teacher.training  # moved to eval mode when used


def test_a_stage_listed_twice_is_refused():
    with pytest.raises(ConfigError, match="prune is listed twice"):
        check_listed_once(["compression=[prune,quantize_static,prune]"])
    check_listed_once(["compression=[prune,quantize_static]", "model=cnn"])


def test_compiled_timings_sit_beside_the_eager_ones(tmp_path):
    from omegaconf import OmegaConf

    from trimlab.cost import inference_cost

    model, context = cnn_context(tmp_path)
    quantized = QuantizeStatic(calibration_batches=2).apply(model, context)
    cfg = OmegaConf.create({"latency_batch_size": 1, "latency_warmup": 1, "latency_repeats": 3,
                            "throughput_batch_size": 8, "throughput_repeats": 2, "compile": True})  # fmt: skip
    cost = inference_cost(quantized, context.sample, cfg)
    assert cost["compiled"] is True and cost["compile_s"] > 0
    assert cost["latency_ms_p50"] > 0 and cost["latency_ms_p50_eager"] > 0
    assert cost["throughput_samples_per_s"] > 0 and cost["throughput_samples_per_s_eager"] > 0
    import torch._inductor.config as inductor_config

    assert inductor_config.freezing is False  # the setting was scoped to the measurement


def test_loggers_get_the_per_stage_figures_flat():
    from trimlab.report import flat_scores

    summary = {
        "metrics": {"test/acc": 0.9, "after": {"prune": {"test/acc": 0.89, "facts": {"sparsity": 0.5}}}},
        "cost": {"latency_ms_p50": 1.0, "baseline": {"latency_ms_p50": 2.0}, "after": {"prune": {"size_bytes": 10}}},
    }
    assert flat_scores(summary) == {
        "test/acc": 0.9,
        "after/prune/test/acc": 0.89,
        "cost/latency_ms_p50": 1.0,
        "cost/baseline/latency_ms_p50": 2.0,
        "cost/after/prune/size_bytes": 10,
    }


def test_ratios_are_left_out_when_only_one_side_was_compiled():
    from trimlab.compression.chain import improvement

    base = {
        "latency_ms_p50": 4.0,
        "latency_ms_p50_eager": 4.0,
        "throughput_samples_per_s": 10.0,
        "throughput_samples_per_s_eager": 10.0,
        "size_bytes": 100,
        "weights_bytes": 100,
        "compiled": False,
    }
    last = {**base, "latency_ms_p50": 1.0, "compiled": True, "latency_ms_p50_eager": 2.0, "weights_bytes": 25}
    ratios = improvement(base, last, {"size_bytes": 50}, {"test/acc": 0.9}, {"test/acc": 0.89})
    assert ratios["latency"] is None and ratios["throughput"] is None  # compile's own gain is no stage's
    assert ratios["latency_eager"] == 2.0 and ratios["size"] == 2.0 and ratios["weights"] == 4.0
    assert ratios["acc_delta_pt"] == pytest.approx(-1.0)
    both = improvement({**base, "compiled": True}, last, {"size_bytes": 50}, {"test/acc": 0.9}, {"test/acc": 0.9})
    assert both["latency"] == 4.0


def test_importing_the_quantizer_leaves_inductor_settings_alone():
    import torch._inductor.config as inductor_config

    from trimlab.compression.quantization import inductor_options, quantizer

    before = inductor_config.pre_grad_custom_pass
    quantizer()
    assert inductor_config.pre_grad_custom_pass is before
    assert set(inductor_options()) <= {"pre_grad_custom_pass"}  # applied only while compiling a quantized graph


def test_a_failed_save_leaves_no_compressed_folder(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), artifact.staged(tmp_path) as folder:
        (folder / "model.pt").write_bytes(b"half")
        raise RuntimeError("boom")
    assert not (tmp_path / "compressed").exists() and not (tmp_path / "compressed.tmp").exists()
