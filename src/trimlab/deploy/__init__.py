"""Deploy targets: the run's final model measured in other runtimes beside `torch.compile`, in one ledger, and the
cheapest variant within tolerance deployed (`deployed/`).

One module per runtime on a small `base`: `inductor` (the baseline), `ort` (ONNX Runtime fp32 and int8), `ov`
(OpenVINO default precision, f32 and NNCF int8); `ledger` measures every variant, `choice` picks one and writes
it, `run` is what the pipeline calls, `deployed` reads the chosen one back (trimlab-eval, trimlab-predict), `rows`
flattens the ledger for tables and sweep objectives. The runtimes come with the optional extra `trimlab[deploy]`
(exact pins in requirements.lock).
"""
