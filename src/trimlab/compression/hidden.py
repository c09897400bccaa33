"""Intermediate-layer distillation for transformer students (`compression.distill.hidden`), after TinyBERT (Jiao et
al. 2020): beside the logits, the student's hidden states at mapped layers learn to match the teacher's, through
one learned projection from the student's width to the teacher's:

    L = L_logits + weight · mean over (s, t) in layer_map of MSE(W · pool(h_student[s]), pool(h_teacher[t]))

TinyBERT compares states token by token, which needs one tokenizer for both models. Here each layer's states are
pooled over the sentence first (the masked mean, as the models pool for their heads), so the student keeps its own
tokenizer and the teacher's states are computed in the same single pass as its logits, then cached with them.
`layer_map` pairs 1-based block numbers, student first: `[[1, 3], [2, 6]]` maps a 2-block student onto a 6-layer
MiniLM. W starts as the identity where the widths match: identical models then have a loss of exactly zero.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trimlab.errors import ConfigError


def blocks(model: nn.Module) -> list[nn.Module]:
    """The encoder blocks, in order: trimlab's transformer (`blocks`) or a Hugging Face BERT-style encoder."""
    if isinstance(getattr(model, "blocks", None), nn.ModuleList):
        return list(model.blocks)
    layers = getattr(getattr(getattr(model, "encoder", None), "encoder", None), "layer", None)
    if isinstance(layers, nn.ModuleList):
        return list(layers)
    raise ConfigError(
        f"compression.distill.hidden matches transformer blocks, and {type(model).__name__} has none; use it with "
        "model=transformer or model=hf_encoder students and teachers, or set compression.distill.hidden=null"
    )


def width(model: nn.Module) -> int:
    """The hidden width: the input of the classifier head both text models end in."""
    return int(model.head[-1].in_features)


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class LayerStates:
    """Forward hooks that keep the output of the chosen blocks of a model's latest forward pass."""

    def __init__(self, model: nn.Module, numbers: list[int]) -> None:
        found = blocks(model)
        if not all(1 <= n <= len(found) for n in numbers):
            raise ConfigError(f"compression.distill.hidden.layer_map names block(s) {numbers} of "
                              f"{type(model).__name__}, which has blocks 1 to {len(found)}")  # fmt: skip
        self.numbers, self.outputs = list(numbers), {}
        self.handles = [found[n - 1].register_forward_hook(self.keeper(n)) for n in dict.fromkeys(numbers)]

    def keeper(self, number: int):
        def keep(module: nn.Module, args: Any, output: Any) -> None:
            self.outputs[number] = output[0] if isinstance(output, tuple) else output

        return keep

    def pooled(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, layers, width): each chosen block's output of the latest forward, pooled over the sentence."""
        return torch.stack([masked_mean(self.outputs[n], attention_mask) for n in self.numbers], 1)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def projection(student_width: int, teacher_width: int) -> nn.Linear:
    linear = nn.Linear(student_width, teacher_width)
    if student_width == teacher_width:
        with torch.no_grad():
            linear.weight.copy_(torch.eye(student_width))
            linear.bias.zero_()
    return linear


def hidden_state_loss(student: torch.Tensor, teacher: torch.Tensor, project: nn.Module) -> torch.Tensor:
    """MSE between the projected pooled student states and the teacher's, both (N, layers, width)."""
    return F.mse_loss(project(student.float()), teacher.float())


class HiddenStates:
    """What the distillation loss adds for hidden states: the student's hooks, the projection, the weight."""

    def __init__(self, weight: float = 1.0, layer_map: Any = ((2, 6),)) -> None:
        pairs = [tuple(int(n) for n in pair) for pair in layer_map or ()]
        if not pairs or any(len(pair) != 2 for pair in pairs) or not float(weight) >= 0:
            raise ConfigError(
                f"compression.distill.hidden: weight={weight} must be >= 0 and layer_map={layer_map} a list of "
                "[student block, teacher block] pairs, e.g. [[1, 3], [2, 6]]"
            )
        self.weight, self.pairs = float(weight), pairs
        self.student_layers, self.teacher_layers = [s for s, _ in pairs], [t for _, t in pairs]
        self.student: LayerStates | None = None
        self.project: nn.Module | None = None

    def attach(self, student: nn.Module, teacher: nn.Module) -> None:
        """Hooks on the student's mapped blocks; a projection from its width to the teacher's."""
        LayerStates(teacher, self.teacher_layers).remove()  # checks the teacher's block numbers now
        self.student = LayerStates(student, self.student_layers)
        self.project = projection(width(student), width(teacher))

    def loss(self, attention_mask: torch.Tensor, teacher_states: torch.Tensor) -> torch.Tensor:
        self.project.to(attention_mask.device)  # in place: the optimizer keeps its references
        return self.weight * hidden_state_loss(self.student.pooled(attention_mask), teacher_states, self.project)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.project.parameters()) if self.project is not None else []

    def facts(self) -> dict[str, Any]:
        return {"weight": self.weight, "layer_map": [list(pair) for pair in self.pairs]}


@torch.no_grad()  # not inference_mode: the cached tensors take part in the student's autograd graph
def teacher_pass(teacher: nn.Module, loader: Any, layers: list[int] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The teacher's logits over a loader and, with `layers`, its pooled states there."""
    from trimlab.batches import forward

    hooks = LayerStates(teacher, layers) if layers else None
    logits, states = [], []
    try:
        for inputs, _ in loader:
            logits.append(forward(teacher, inputs).float().cpu())
            if hooks is not None:
                states.append(hooks.pooled(inputs["attention_mask"]).float().cpu())
    finally:
        if hooks is not None:
            hooks.remove()
    return torch.cat(logits), (torch.cat(states) if hooks is not None else None)


def teacher_outputs(
    teacher: nn.Module, dataset: Any, data: Any, layers: list[int] | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`teacher_pass` over a dataset in order of length, results back in the dataset's order: batches of
    similar lengths pad little, which makes a pass over short phrases several times faster."""
    from torch.utils.data import DataLoader, Subset

    order = length_order(dataset)
    loader = DataLoader(Subset(dataset, order.tolist()), batch_size=data.eval_batch_size, collate_fn=data.collate)
    logits, states = teacher_pass(teacher, loader, layers)
    restore = torch.argsort(order)
    return logits[restore], (None if states is None else states[restore])


def length_order(dataset: Any) -> torch.Tensor:
    """Indices of a dataset of token-id sequences by length; the identity for fixed-size inputs."""
    inputs = getattr(dataset, "inputs", None)
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], torch.Tensor):
        return torch.argsort(torch.tensor([len(x) for x in inputs]), stable=True)
    return torch.arange(len(dataset))
