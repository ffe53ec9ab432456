#!/usr/bin/env bash
# The multi-rank checks the one-GPU machine allows (issue: many ranks): the NCCL communicator at
# world size 1 and its join timeout, two pipeline stages on one device (gpu_test Nccl*), and a
# whole job under `mpirun -np 1 ... --mpi` on CUDA (NCCL for the distillation tensors) against
# the same job in one process. Usage: tests/gpu/multirank_gpu_checks.sh BUILD_DIR OUT_DIR
set -euo pipefail
BUILD=${1:?build dir (scripts/build-worker)}
OUT=${2:?output dir}
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
"$BUILD/tests/gpu_test" --gtest_filter='Nccl*' 2>&1 | tee "$OUT/nccl_test.log" | tail -20
work=$(mktemp -d)
"$BUILD/tests/write_tiny_job" "$work" > /dev/null
python3 - "$work/job.json" <<'PY'
import json, sys
p = sys.argv[1]
j = json.load(open(p))
j["device"] = "cuda"
json.dump(j, open(p, "w"), indent=1)
PY
"$BUILD/cli/hybridize" run "$work/job.json" --storage "$work/one" > "$OUT/run_one.log" 2>&1
mpirun -np 1 --bind-to none "$BUILD/cli/hybridize" run "$work/job.json" --mpi \
  --storage "$work/mpi" > "$OUT/run_mpi.log" 2>&1
grep -E "mpi: |distilling on" "$OUT/run_mpi.log"
python3 - "$work/one/tiny/report.json" "$work/mpi/tiny/report.json" <<'PY' | tee "$OUT/compare.txt"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
same = True
for ra, rb in zip(a["search"]["rounds"], b["search"]["rounds"]):
    for ca, cb in zip(ra["candidates"], rb["candidates"]):
        ok = ca["id"] == cb["id"] and abs(ca["score"] - cb["score"]) < 1e-6
        same &= ok
        print(ca["id"], ca["score"], cb["score"], "same" if ok else "DIFFERENT")
ma = [l["final_mse"] for l in a["distill"]["layers"]]
mb = [l["final_mse"] for l in b["distill"]["layers"]]
print("distill final mse", ma, mb)
same &= all(abs(x - y) <= 1e-3 * max(1.0, abs(x)) for x, y in zip(ma, mb))
print("reports", "equal" if same else "DIFFER")
sys.exit(0 if same else 1)
PY
