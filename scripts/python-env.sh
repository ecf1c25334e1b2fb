#!/usr/bin/env bash
# Creates .venv/ with PyTorch and transformers, for the fixture and benchmark scripts.
# Developers run it; CI never needs Python.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -r scripts/requirements.txt
.venv/bin/python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
