#!/usr/bin/env python3
"""Logits parity of `hybridize logits` against Hugging Face transformers (independent reference).

Run on the GPU machine after building (see ../shared/GPU.md):
    python3 tests/parity/run_parity.py --cli build-gpu/cli/hybridize --out $OUT/parity

For each family variant it builds a tiny random-weight model with transformers, saves it in the
Hugging Face layout, runs our binary on the same token ids and compares logits:
  * fp32 on CPU and on CUDA: max |ours - transformers fp32 (CPU)| <= 1e-4
  * bf16 on CUDA: max |ours bf16 - transformers fp32| <= 2 x max |transformers bf16 - fp32|
Writes parity.json and prints a table. Exit code 1 if any check fails.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file

FP32_TOL = 1e-4


def variants():
    base = dict(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                max_position_embeddings=512)
    v = []
    # Llama: GQA, tied embeddings, llama3 rope scaling, attention bias.
    v.append(("llama_gqa_tied_llama3", transformers.LlamaConfig(
        **base, tie_word_embeddings=True, attention_bias=True, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=32))))
    # Llama: plain MHA, untied, explicit head_dim != hidden/heads.
    v.append(("llama_mha_headdim", transformers.LlamaConfig(
        **{**base, "num_key_value_heads": 4}, head_dim=24, tie_word_embeddings=False)))
    # Qwen2: q/k/v bias, GQA 4/1, sliding window on the upper layers, linear rope.
    v.append(("qwen2_bias_sliding", transformers.Qwen2Config(
        **{**base, "num_key_value_heads": 1}, use_sliding_window=True, sliding_window=7,
        max_window_layers=1, tie_word_embeddings=False,
        rope_scaling=dict(rope_type="linear", factor=2.0))))
    # Qwen3: q/k RMSNorm, explicit head_dim, yarn rope.
    v.append(("qwen3_qknorm_yarn", transformers.Qwen3Config(
        **base, head_dim=32, tie_word_embeddings=False, rope_theta=1000000.0,
        rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64))))
    # Qwen3 tied, default rope.
    v.append(("qwen3_tied", transformers.Qwen3Config(**base, head_dim=16, tie_word_embeddings=True)))
    # Mistral: sliding window shorter than the sequence.
    v.append(("mistral_sliding", transformers.MistralConfig(
        **base, sliding_window=9, tie_word_embeddings=False)))
    return v


def randomize(model, seed):
    """Weights large enough that logits are O(1..10), so 1e-4 is a real test."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def hf_logits(model, ids, device, dtype):
    m = model.to(device=device, dtype=dtype)
    with torch.no_grad():
        out = m(input_ids=ids.to(device)).logits.float().cpu()
    model.to(device="cpu", dtype=torch.float32)
    return out


def ours(cli, model_dir, ids_path, out_path, device, dtype):
    cmd = [cli, "logits", "--model", model_dir, "--input", ids_path, "--output", out_path,
           "--device", device, "--dtype", dtype]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr}")
    return load_file(out_path)["logits"]


def other_spelling(src_dir, dst_dir):
    """Copy of the model whose config uses the other rope spelling (rope_scaling <-> rope_parameters)."""
    shutil.copytree(src_dir, dst_dir)
    with open(os.path.join(src_dir, "config.json")) as f:
        c = json.load(f)
    if "rope_parameters" in c:
        rp = c.pop("rope_parameters")
        c["rope_theta"] = rp.pop("rope_theta", 10000.0)
        c["rope_scaling"] = None if rp.get("rope_type", "default") == "default" else rp
    else:
        rp = dict(c.pop("rope_scaling", None) or {"rope_type": "default"})
        rp["rope_theta"] = c.pop("rope_theta", 10000.0)
        c["rope_parameters"] = rp
    with open(os.path.join(dst_dir, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    return "rope_parameters" in c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seq", type=int, default=40)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    have_cuda = torch.cuda.is_available()
    results = {"transformers": transformers.__version__, "torch": torch.__version__,
               "device": torch.cuda.get_device_name(0) if have_cuda else "cpu", "models": []}
    ok = True
    for i, (name, config) in enumerate(variants()):
        torch.manual_seed(i)
        model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
        model.eval()
        randomize(model, 100 + i)
        if model.config.tie_word_embeddings:
            model.tie_weights()
        d = os.path.join(args.out, name)
        shutil.rmtree(d, ignore_errors=True)
        # The third variant is saved sharded to exercise model.safetensors.index.json.
        shard = "40KB" if i == 2 else "2GB"
        model.save_pretrained(d, safe_serialization=True, max_shard_size=shard)
        ids = torch.randint(0, config.vocab_size, (2, args.seq), generator=torch.Generator().manual_seed(i))
        ids_path = os.path.join(d, "ids.safetensors")
        save_file({"input_ids": ids}, ids_path)

        ref32 = hf_logits(model, ids, "cpu", torch.float32)
        row = {"name": name, "sharded": os.path.exists(os.path.join(d, "model.safetensors.index.json")),
               "logit_absmax": ref32.abs().max().item()}
        got = ours(args.cli, d, ids_path, os.path.join(d, "ours_cpu_fp32.safetensors"), "cpu", "fp32")
        row["cpu_fp32_maxdiff"] = (got - ref32).abs().max().item()
        ok &= row["cpu_fp32_maxdiff"] <= FP32_TOL
        alt = d + "_alt_spelling"
        shutil.rmtree(alt, ignore_errors=True)
        row["alt_spelling_is_rope_parameters"] = other_spelling(d, alt)
        got_alt = ours(args.cli, alt, ids_path, os.path.join(alt, "o.safetensors"), "cpu", "fp32")
        row["alt_spelling_maxdiff"] = (got_alt - ref32).abs().max().item()
        ok &= row["alt_spelling_maxdiff"] <= FP32_TOL
        if have_cuda:
            got = ours(args.cli, d, ids_path, os.path.join(d, "ours_cuda_fp32.safetensors"), "cuda", "fp32")
            row["cuda_fp32_maxdiff"] = (got - ref32).abs().max().item()
            ok &= row["cuda_fp32_maxdiff"] <= FP32_TOL
            hf16 = hf_logits(model, ids, "cuda", torch.bfloat16)
            got16 = ours(args.cli, d, ids_path, os.path.join(d, "ours_cuda_bf16.safetensors"), "cuda", "bf16")
            row["hf_bf16_vs_fp32_maxdiff"] = (hf16 - ref32).abs().max().item()
            row["ours_bf16_vs_fp32_maxdiff"] = (got16 - ref32).abs().max().item()
            row["hf_bf16_vs_fp32_meandiff"] = (hf16 - ref32).abs().mean().item()
            row["ours_bf16_vs_fp32_meandiff"] = (got16 - ref32).abs().mean().item()
            ok &= row["ours_bf16_vs_fp32_maxdiff"] <= 2 * row["hf_bf16_vs_fp32_maxdiff"]
        results["models"].append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(alt, ignore_errors=True)
        for f in os.listdir(d):
            if f.endswith(".safetensors"):
                os.remove(os.path.join(d, f))  # keep configs only in $OUT
    results["pass"] = bool(ok)
    with open(os.path.join(args.out, "parity.json"), "w") as f:
        json.dump(results, f, indent=2)
    print("PARITY", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
