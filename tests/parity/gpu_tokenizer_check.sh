#!/usr/bin/env bash
# On the GPU machine: build (CPU-only targets suffice) and run the tokenizer parity check
# against `tokenizers`. Results under ${OUT:-out}/tokenizer.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-out}"
mkdir -p "$OUT"
TORCH_PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
if [ ! -f build-gpu/build.ninja ]; then
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DHYB_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" > "$OUT/configure.log" 2>&1 \
    || { tail -40 "$OUT/configure.log"; exit 1; }
fi
cmake --build build-gpu -j16 --target hybridize > "$OUT/build.log" 2>&1 || { grep error "$OUT/build.log" | head -30; exit 1; }
python3 tests/parity/tokenizer_parity.py --cli build-gpu/cli/hybridize --out "$OUT/tokenizer"
