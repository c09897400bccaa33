"""Secrets never reach a run's files: a secret-looking override is refused before Hydra writes `.hydra/`, and
secret-looking config keys are masked in every record trimlab writes (summary, sweep rows, logger params).

A key looks secret when the last word of its last part is key, token, secret, password, passwd or credential(s)
(`wandb_api_key`, `hf_token`, `apiKey`, `db_password`), in any case. Words elsewhere do not count:
`data.tokenizer` and `data.token_dropout` are ordinary settings.
"""

from __future__ import annotations

import re

from trimlab.errors import ConfigError

SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials"}


def is_secret_key(key: str) -> bool:
    leaf = str(key).lstrip("+~").rsplit(".", 1)[-1]
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", leaf).lower().replace("-", "_").split("_")
    return bool(words) and words[-1] in SECRET_WORDS


def env_var_for(key: str) -> str:
    """The environment variable the library behind a secret reads (or one named after the key)."""
    lowered = key.lower()
    if "wandb" in lowered:
        return "WANDB_API_KEY"
    if "mlflow" in lowered:
        return "MLFLOW_TRACKING_PASSWORD" if "pass" in lowered else "MLFLOW_TRACKING_TOKEN"
    if re.search(r"(^|[._])(hf|hub|huggingface)([._]|$)", lowered) or lowered.lstrip("+~").startswith("hf_"):
        return "HF_TOKEN"
    return re.sub(r"\W+", "_", key.lstrip("+~").rsplit(".", 1)[-1]).upper()


def refuse_secret_overrides(overrides: list[str]) -> None:
    """Hydra saves the command line in .hydra/ (and W&B uploads it): a secret typed there would be kept."""
    for override in overrides:
        key, sep, _ = override.partition("=")
        if sep and is_secret_key(key):
            variable = env_var_for(key)
            raise ConfigError(
                f"{key}=... looks like a secret, and overrides are saved in plain text in the run dir; pass it in "
                f"the environment instead (export {variable}=...; a config reads it as ${{oc.env:{variable}}})"
            )


def redact(value):
    """A config (as plain containers) with every secret-looking key's value replaced."""
    if isinstance(value, dict):
        return {k: "***" if is_secret_key(str(k)) and v else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def redact_overrides(overrides: list[str]) -> list[str]:
    """Command-line overrides with the value of every secret-looking key replaced (`logger.x.api_key=***`)."""
    return [f"{key}=***" if sep and is_secret_key(key) else key + sep + value
            for key, sep, value in (o.partition("=") for o in overrides)]  # fmt: skip
