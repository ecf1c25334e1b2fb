#!/usr/bin/env bash
# Installs a pinned nvcc (CUDA 13.0) with no system CUDA: the PyPI wheels nvidia-cuda-nvcc,
# nvidia-cuda-crt, nvidia-cuda-runtime, nvidia-nvvm and nvidia-cuda-cccl, all of one 13.0
# release, unpacked into .cuda-toolchain/ (ignored by git). nvidia-nvvm is pinned too: a newer
# one emits PTX that a 13.0 driver rejects.
#
#   bash scripts/install-cuda-toolchain.sh      # then: export NVCC=$PWD/.cuda-toolchain/nvidia/cu13/bin/nvcc
#
# build.rs also finds nvcc there without NVCC. Running it again does nothing when the same
# versions are installed. Needs python3 with pip (for `pip download`) and network access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.cuda-toolchain
PINS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-nvvm==13.0.88
    nvidia-cuda-cccl==13.0.85
)
STAMP="$DEST/.installed"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "${PINS[*]}" ] && [ -x "$DEST/nvidia/cu13/bin/nvcc" ]; then
    echo "nvcc already installed: $DEST/nvidia/cu13/bin/nvcc"
    exit 0
fi
case "$(uname -m)" in
    x86_64) PLATFORM=manylinux2014_x86_64 ;;
    aarch64) PLATFORM=manylinux2014_aarch64 ;;
    *) echo "install-cuda-toolchain.sh: no CUDA wheels for $(uname -m)" >&2; exit 1 ;;
esac
rm -rf "$DEST" "$DEST.tmp"
mkdir -p "$DEST.tmp/wheels"
python3 -m pip download --quiet --no-deps --only-binary=:all: --platform "$PLATFORM" \
    --python-version 3.11 --dest "$DEST.tmp/wheels" "${PINS[@]}"
for w in "$DEST.tmp"/wheels/*.whl; do
    python3 -m zipfile -e "$w" "$DEST.tmp/"
done
rm -rf "$DEST.tmp/wheels"
# Wheels do not keep the executable bit.
chmod +x "$DEST.tmp"/nvidia/cu13/bin/* "$DEST.tmp"/nvidia/cu13/nvvm/bin/*
"$DEST.tmp/nvidia/cu13/bin/nvcc" --version | tail -n 2
echo "${PINS[*]}" > "$DEST.tmp/.installed"
mv "$DEST.tmp" "$DEST"
echo "nvcc installed: $DEST/nvidia/cu13/bin/nvcc"
