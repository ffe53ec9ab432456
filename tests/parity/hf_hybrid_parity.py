#!/usr/bin/env python3
"""Exported hybrids in Hugging Face transformers against `hybridize` on the same directories.

Run on the GPU machine (torch + transformers there) after `hf_hybrid_parity.sh prepare` built the
fixtures here:
    python3 tests/parity/hf_hybrid_parity.py --fixtures out/hf-parity --out $OUT/hf-parity.json

For every fixture directory (an exported hybrid with ids.safetensors, prompt.safetensors and the
outputs of `hybridize logits` / `hybridize generate` on them):
  * AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True), fp32: the class is the
    directory's Hybridize*ForCausalLM;
  * logits on CPU, and on CUDA with the PyTorch mixers: max |transformers - hybridize| <= 1e-4;
  * decoding with the model's cache (prefill 9 tokens, then one token at a time) gives the same
    logits as the full forward (<= 1e-4);
  * greedy `generate` (10 new tokens, no stop token) gives the ids `hybridize generate` gave;
  * where `fla` imports, the CUDA logits with its kernels are reported (fla's chunked kernels may
    round differently, e.g. TF32 matmuls); they must stay within 1e-2 of hybridize, which no
    wrong formula would.
Writes a JSON summary and prints a table. Exit code 1 if any check fails.
"""
import argparse
import datetime
import json
import os
import platform
import sys

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

TOL = 1e-4
FLA_TOL = 1e-2
NEW_TOKENS = 10


def load(path, dtype_kw):
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True,
                                                **{dtype_kw: torch.float32}).eval()


def maxdiff(a, b):
    return (a.float().cpu() - b.float().cpu()).abs().max().item()


def check_fixture(d, dtype_kw, have_cuda, have_fla):
    name = os.path.basename(d.rstrip("/"))
    config = json.load(open(os.path.join(d, "config.json")))
    ids = load_file(os.path.join(d, "ids.safetensors"))["input_ids"]
    prompt = load_file(os.path.join(d, "prompt.safetensors"))["input_ids"]
    want = load_file(os.path.join(d, "hybridize_logits.safetensors"))["logits"]
    want_gen = load_file(os.path.join(d, "hybridize_generate.safetensors"))["output_ids"]
    row = {"name": name, "family": config["model_type"],
           "mixer": config["linear_attention"]["mixer"], "layer_types": config["layer_types"],
           "logit_absmax": want.abs().max().item()}
    os.environ["HYBRIDIZE_USE_FLA"] = "0"
    model = load(d, dtype_kw)
    row["class"] = type(model).__name__
    ok = row["class"] == config["architectures"][0]
    with torch.no_grad():
        full = model(input_ids=ids).logits
        row["cpu_fp32_maxdiff"] = maxdiff(full, want)
        ok &= row["cpu_fp32_maxdiff"] <= TOL

        out = model(input_ids=ids[:, :9], use_cache=True)
        cache, parts = out.past_key_values, [out.logits]
        for t in range(9, ids.shape[1]):
            out = model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            parts.append(out.logits)
        row["cached_decode_maxdiff"] = maxdiff(torch.cat(parts, dim=1), full)
        ok &= row["cached_decode_maxdiff"] <= TOL

        # An explicit mask: generate() would otherwise infer padding from pad_token_id.
        gen = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                             max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
        row["generate_ids"] = gen[0, prompt.shape[1]:].tolist()
        row["hybridize_generate_ids"] = want_gen[0, prompt.shape[1]:].tolist()
        row["generate_equal"] = gen.tolist() == want_gen.tolist()
        ok &= row["generate_equal"]

        if have_cuda:
            model.to("cuda")
            row["cuda_fp32_maxdiff"] = maxdiff(model(input_ids=ids.cuda()).logits, want)
            ok &= row["cuda_fp32_maxdiff"] <= TOL
            gen = model.generate(prompt.cuda(), attention_mask=torch.ones_like(prompt).cuda(),
                                 max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)
            row["cuda_generate_equal"] = gen.cpu().tolist() == want_gen.tolist()
            ok &= row["cuda_generate_equal"]
            if have_fla and row["mixer"] != "linear_elu":
                os.environ["HYBRIDIZE_USE_FLA"] = "1"
                try:
                    row["cuda_fla_maxdiff"] = maxdiff(model(input_ids=ids.cuda()).logits, want)
                    ok &= row["cuda_fla_maxdiff"] <= FLA_TOL
                except Exception as e:  # report, and count it as a failure
                    row["cuda_fla_error"] = f"{type(e).__name__}: {e}"
                    ok = False
                os.environ["HYBRIDIZE_USE_FLA"] = "0"
    row["ok"] = bool(ok)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", required=True, help="directory written by hf_hybrid_parity.sh prepare")
    ap.add_argument("--out", required=True, help="JSON summary to write")
    args = ap.parse_args()
    torch.manual_seed(0)
    # fp32 means fp32: no TF32 in cuBLAS or cuDNN.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    have_cuda = torch.cuda.is_available()
    try:
        import fla  # noqa: F401
        have_fla = True
    except ImportError:
        have_fla = False
    major = int(transformers.__version__.split(".")[0])
    dtype_kw = "dtype" if major >= 5 else "torch_dtype"
    summary = {"date": datetime.date.today().isoformat(), "transformers": transformers.__version__,
               "torch": torch.__version__, "python": platform.python_version(),
               "device": torch.cuda.get_device_name(0) if have_cuda else "cpu",
               "fla": have_fla, "tolerance": TOL, "fixtures": []}
    dirs = sorted(os.path.join(args.fixtures, n) for n in os.listdir(args.fixtures)
                  if os.path.isfile(os.path.join(args.fixtures, n, "hybridize_logits.safetensors")))
    if not dirs:
        print(f"no fixtures under {args.fixtures}", file=sys.stderr)
        return 1
    ok = True
    for d in dirs:
        try:
            row = check_fixture(d, dtype_kw, have_cuda, have_fla)
        except Exception as e:
            import traceback
            traceback.print_exc()
            row = {"name": os.path.basename(d), "ok": False, "error": f"{type(e).__name__}: {e}"}
        ok &= row["ok"]
        summary["fixtures"].append(row)
        print(f"{row['name']:28s} ok={row['ok']!s:5s} cpu={row.get('cpu_fp32_maxdiff', float('nan')):.2e} "
              f"cuda={row.get('cuda_fp32_maxdiff', float('nan')):.2e} "
              f"cached={row.get('cached_decode_maxdiff', float('nan')):.2e} "
              f"gen={row.get('generate_equal')} fla={row.get('cuda_fla_maxdiff', '-')} "
              f"{row.get('error', '')}", flush=True)
    summary["all_ok"] = bool(ok)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{summary['device']}, fla={have_fla}: {'all ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
