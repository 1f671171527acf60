#!/usr/bin/env bash
# Create .venv (if missing) and install nearopt into it, CPU torch first.
# Usage: source-free; prints the path of the venv's python on the last line.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NEAROPT_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"
stamp="$venv/.nearopt-installed"
# Reinstall only when the package metadata changed since the last install.
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    "$vpy" -m pip install -q --upgrade pip >&2
    # A plain `torch` requirement would pull a multi-GB CUDA build; the CPU wheel
    # of torch 2.13.0 is available locally, so install it first when torch is absent.
    if ! "$vpy" -c "import torch" 2>/dev/null; then
        "$vpy" -m pip install -q "torch==2.13.0" >&2 || "$vpy" -m pip install -q "torch>=2.3" >&2
    fi
    # dask: `reproduce --scheduler` and its test; docs: scripts/docs (Sphinx + gallery); certify: the certificates' mpmath; fast: numba
    "$vpy" -m pip install -q -e "$root[dev,dask,docs,data,certify,fast]" >&2
    touch "$stamp"
fi
echo "$vpy"
