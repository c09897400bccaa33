#!/usr/bin/env bash
# Build (or reuse) the trimlab environment and link it at .venv.
# The venv lives outside the work tree, keyed by the hash of the lock file, so a warm machine never reinstalls.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
lock_hash=$(cat requirements.lock | sha256sum | cut -c1-16)
cache_root=${TRIMLAB_VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trimlab/venvs}
venv="$cache_root/$lock_hash"

if [ ! -f "$venv/.complete" ]; then
    echo "setup: building environment $venv from requirements.lock"
    rm -rf "$venv"
    mkdir -p "$cache_root"
    "$PYTHON" -m venv "$venv"
    # torch first, alone: pip takes the CPU wheel found on disk before anything could ask for another build.
    "$venv/bin/pip" install --quiet "$(grep '^torch==' requirements.lock)" 2>&1 | { grep -v '^WARNING: Location' || true; }
    "$venv/bin/pip" install --quiet -r requirements.lock 2>&1 | { grep -v '^WARNING: Location' || true; }
    "$venv/bin/pip" check
    "$venv/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
    touch "$venv/.complete"
else
    echo "setup: reusing environment $venv"
fi

if [ -e .venv ] && [ ! -L .venv ]; then
    echo "setup: .venv exists and is not a link to the cached environment; remove it and rerun" >&2
    exit 1
fi
ln -sfn "$venv" .venv

# The project itself, editable, pointing at this checkout (cheap; redone when the checkout moved).
if ! .venv/bin/python - <<PY 2>/dev/null
import pathlib, trimlab
assert pathlib.Path(trimlab.__file__).resolve().is_relative_to(pathlib.Path("src").resolve())
PY
then
    .venv/bin/pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | { grep -v '^WARNING: Location' || true; }
fi
.venv/bin/python -c "import trimlab" && echo "setup: ready (.venv -> $venv)"
