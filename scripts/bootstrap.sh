#!/usr/bin/env bash
# Set up (once) the project's virtual environment in .venv and install kimi-local into it.
#   scripts/bootstrap.sh          what `kimi-local` needs to run
#   scripts/bootstrap.sh --test   plus the test dependencies (pytest, transformers as the oracle, clients, triton)
# torch is pinned to 2.13.0: the CUDA build where an NVIDIA GPU is visible, the CPU build everywhere else (the
# default wheel on PyPI is a multi-GB CUDA build that a CPU-only machine does not need).
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
python=${PYTHON:-python3}
venv=.venv

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

# Reinstall only when the project's requirements or the requested extras change.
stamp="$venv/.kimi-local-$(cat pyproject.toml scripts/bootstrap.sh | sha1sum | cut -c1-12)${extras:+-test}"
if [ -f "$stamp" ]; then
    exit 0
fi

if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "bootstrap: NVIDIA GPU found, installing the CUDA build of torch 2.13.0" >&2
        "${pip[@]}" install "torch==2.13.0"
    else
        echo "bootstrap: no GPU found, installing the CPU build of torch 2.13.0" >&2
        "${pip[@]}" install "torch==2.13.0+cpu" 2>/dev/null \
            || "${pip[@]}" install "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu
    fi
fi
echo "bootstrap: installing kimi-local${extras}" >&2
"${pip[@]}" install -e ".${extras}"
rm -f "$venv"/.kimi-local-*
touch "$stamp"
