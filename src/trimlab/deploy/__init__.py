"""Deploy targets: the run's final model measured in other runtimes beside `torch.compile`, in one ledger, and the
cheapest variant within tolerance deployed (`deployed/`).

One module per runtime on a small `base`: `inductor` (the baseline), `ort` (ONNX Runtime fp32 and int8), `ov`
(OpenVINO default precision and f32); `ledger` measures every variant, `choice` picks one and writes it, `run` is
what the pipeline calls. The runtimes come with the optional extra `trimlab[deploy]` (exact pins in
requirements.lock). NNCF 3.4.0 installs beside torch 2.13.0 without changing it and is pinned in the extra, but
no variant uses it yet: OpenVINO int8 through NNCF is still to be built.
"""
