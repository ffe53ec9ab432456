#!/usr/bin/env bash
# On the GPU machine: CUDA build, every test (CPU and `gpu` labels), then logits parity with
# transformers. Results under ${OUT:-out}/.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-out}"
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
  nvcc --version | tail -2
} > "$OUT/env.txt" 2>&1
TORCH_PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
start=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DHYB_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" > "$OUT/configure.log" 2>&1 \
  || { tail -40 "$OUT/configure.log"; exit 1; }
cmake --build build-gpu -j16 > "$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -40; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
ctest --test-dir build-gpu --output-on-failure -j8 > "$OUT/ctest.log" 2>&1
echo "ctest rc=$?"; tail -15 "$OUT/ctest.log"
python3 tests/parity/run_parity.py --cli build-gpu/cli/hybridize --out "$OUT/parity" 2>&1 | tee "$OUT/parity.log" | grep -v Warning
# Exported hybrids loaded by transformers (trust_remote_code) against hybridize: needs the
# fixtures from `tests/parity/hf_hybrid_parity.sh prepare BUILD_DIR`, carried as out/hf-parity.
if [ -d out/hf-parity ]; then
  bash tests/parity/hf_hybrid_parity.sh check out/hf-parity "$OUT/hf-hybrid-parity.json" 2>&1 \
    | grep -v "Loading weights" | tee "$OUT/hf-hybrid-parity.log" | tail -15
fi
# Linear-attention operator throughput on the GPU (LibTorch-ops reference, the baseline the CUDA
# kernels will be compared against).
build-gpu/bench/linear_attention_bench --device cuda --tokens 512,2048,8192 --repeats 10 \
  --json "$OUT/linear_attention_bench_cuda.json" | tee "$OUT/linear_attention_bench_cuda.md"
# The demo job on the GPU (bf16 teacher, bf16 mixer compute): needs the demo data, carried as
# out/demo-data (scripts/demo builds it).
if [ -f out/demo-data/distill-tokens/meta.json ]; then
  python3 - "$OUT/demo-recall-cuda.json" <<'PY'
import json, os, sys
job = json.load(open("configs/demo-recall.json"))
base = os.path.abspath("configs")
job["job_id"] = "demo-recall-cuda"
job["device"] = "cuda"
job["teacher"] = os.path.join(base, job["teacher"])
job["distill"]["data"] = os.path.join(base, job["distill"]["data"])
for split in ("validation", "test"):
    job["task"][split] = os.path.join(base, job["task"][split])
json.dump(job, open(sys.argv[1], "w"), indent=2)
PY
  ( time build-gpu/cli/hybridize run "$OUT/demo-recall-cuda.json" --storage "$OUT/jobs" ) \
    > "$OUT/demo-recall-cuda.log" 2>&1
  echo "demo job on cuda: rc=$?"; tail -12 "$OUT/demo-recall-cuda.log"
fi
