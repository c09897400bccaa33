"""Compression stages: each makes the trained model cheaper, and the ledger proves by how much.

A stage has up to three hooks, used in the order the user lists the stages (`compression=[a,b,c]`):
- `check(datamodule, model)`: fail before any training when the stage cannot apply;
- `wrap(task, datamodule)`: change how the main fit trains (distillation adds a teacher's soft targets);
- `apply(model, context)`: transform the trained model after fit, fine-tuning it when the stage needs to.
`baseline` names what the ledger compares against (the trained model; for distillation, the teacher).

Modules: `base` (the `Stage` class, its `Context` and the knob checks), `registry` (what each stage declares
in its option file, and the checks derived from it; no torch), `chain` (runs the stages, measures cost and
metrics after each, saves the final artifact through `artifact`), and the stages: `pruning`, `quantization`,
`distillation`. A state_dict is saved for fp32 stages, an exported program once a stage `exports`
(quantization, bf16) — which is why such a stage must come last.

This file imports nothing: the config checks read `registry` before torch is imported, and no submodule
imports its package back.
"""

import logging

# torchao's import logs that its CUDA kernels are absent (a CPU machine) and a torch deprecation note: noise here.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
