"""The body of `POST /predict`, validated in the HTTP process before it reaches a batch.

LitServe decodes a whole batch in one call, so one bad item there would fail every request batched with it.
Here FastAPI validates each request on its own: the JSON, the list, and each item by the run's DataModule
(`serve_item`, the same preprocessing `trimlab-predict` applies to files), so a bad request gets its own 422
naming the item, and only model-ready arrays are queued. The DataModule is set once in the server's main process
(`accept`), before the HTTP processes are forked from it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

ACCEPTED: dict[str, Any] = {"datamodule": None, "max_items": 256}


def accept(datamodule: Any, max_items: int) -> None:
    ACCEPTED.update(datamodule=datamodule, max_items=int(max_items))


class PredictRequest(BaseModel):
    """`{"inputs": [...]}`: texts (strings), images (nested lists of pixels in [0, 1], or base64 PNG/JPEG), or
    speech clips (base64 WAV), as the served run's modality takes them (see `GET /info`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": ["a text, for a text model"]}, {"inputs": [[[0.0, 0.5]] * 2]}]},
    )

    inputs: list[str | list[Any]] = Field(min_length=1, description="one item per prediction, in the run's modality")

    def __repr__(self) -> str:  # LitServe formats every request into a debug line, logged or not: keep it cheap
        return f"PredictRequest({len(self.inputs)} items)"

    __str__ = __repr__

    @field_validator("inputs", mode="after")
    @classmethod
    def model_ready(cls, inputs: list[Any]) -> list[np.ndarray]:
        datamodule, limit = ACCEPTED["datamodule"], ACCEPTED["max_items"]
        if datamodule is None:
            raise ValueError("the server has no model loaded yet")
        if len(inputs) > limit:
            raise ValueError(f"holds {len(inputs)} items; at most {limit} per request (serve max_items={limit})")
        items = []
        for index, item in enumerate(inputs):
            try:
                items.append(datamodule.serve_item(item).numpy())
            except ValueError as err:
                raise ValueError(f"inputs[{index}] {err}; this {datamodule.modality} model takes "
                                 f"{datamodule.serve_spec}") from None  # fmt: skip
        return items
