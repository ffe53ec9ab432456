#!/usr/bin/env bash
# Exported hybrids in Hugging Face transformers against `hybridize` (docs/hybrid_format.md).
#
#   tests/parity/hf_hybrid_parity.sh prepare BUILD_DIR [OUT_DIR]
#       (where hybridize is built) writes tiny hybrids of every family x mixer to OUT_DIR
#       (default out/hf-parity, replaced) and runs `hybridize logits` (fp32, CPU) and greedy
#       `hybridize generate` on each;
#   tests/parity/hf_hybrid_parity.sh check [OUT_DIR] [RESULT_JSON]
#       (where torch + transformers are installed, e.g. the GPU machine) loads each directory with
#       AutoModelForCausalLM(trust_remote_code=True) and compares (hf_hybrid_parity.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
mode="${1:-}"
case "$mode" in
  prepare)
    build="${2:?usage: $0 prepare BUILD_DIR [OUT_DIR]}"
    out="${3:-out/hf-parity}"
    cli="$build/cli/hybridize"
    [ -x "$cli" ] || { echo "$cli: not built" >&2; exit 1; }
    [ -x "$build/tests/hf_hybrid_fixtures" ] || { echo "$build/tests/hf_hybrid_fixtures: not built" >&2; exit 1; }
    rm -rf "$out"
    "$build/tests/hf_hybrid_fixtures" "$out" > /dev/null
    for d in "$out"/*_*/; do
      d="${d%/}"
      "$cli" logits --model "$d" --input "$d/ids.safetensors" \
        --output "$d/hybridize_logits.safetensors" --device cpu --dtype fp32
      "$cli" generate --model "$d" --input "$d/prompt.safetensors" --max-new-tokens 10 \
        --stop-ids none --output "$d/hybridize_generate.safetensors" > /dev/null 2>&1
      echo "$d"
    done
    du -sh "$out"
    ;;
  check)
    out="${2:-out/hf-parity}"
    result="${3:-$out/result.json}"
    # Offline, with the dynamic-module cache outside the fixtures.
    export HF_HUB_OFFLINE=1 HF_HOME="${HF_HOME:-$(mktemp -d)}"
    python3 tests/parity/hf_hybrid_parity.py --fixtures "$out" --out "$result"
    ;;
  *)
    echo "usage: $0 prepare BUILD_DIR [OUT_DIR] | check [OUT_DIR] [RESULT_JSON]" >&2
    exit 2
    ;;
esac
