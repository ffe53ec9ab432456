#!/usr/bin/env python3
"""Trains the demo teacher from scratch on the GPU machine with `transformers` (reference
library, not part of the product) and scores it on the demo tasks.

    python3 tools/build_demo_data.py --out out/demo-data           # on a Debian machine
    python3 tools/train_demo_teacher.py --data out/demo-data --out $OUT/demo-teacher --minutes 7

Recipe: byte-level BPE tokenizer (Llama 3 split pattern, 4,096 tokens) trained with `tokenizers`
on the corpus; a Llama-architecture model (6 layers, hidden 256, 8 query / 4 key-value heads,
SwiGLU 768, tied embeddings, ~5.8M parameters, 11.6 MB in bf16) trained with AdamW on packed
256-token sequences of the corpus (75% of each batch) and freshly generated in-context recall
episodes (25%) for a fixed wall-clock budget; saved in bf16 with its
tokenizer.json. Writes scores.json with the test-split scores (recall exact match, gloss
accuracy and length-normalised accuracy with lm-evaluation-harness semantics, KJV perplexity).
"""
import argparse
import json
import math
import os
import random
import time

import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM

LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def build_tokenizer(texts, vocab_size):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    return tok


@torch.no_grad()
def score(model, tok, data_dir, device, limit=None):
    model.eval()
    out = {}
    bos, eos = tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|end_of_text|>")
    # Recall: greedy decoding, cut at a stop string, exact match.
    rows = read_jsonl(os.path.join(data_dir, "tasks/recall/test.jsonl"))[:limit]
    hits = 0
    for r in rows:
        ids = torch.tensor([tok.encode(r["prompt"]).ids], device=device)
        gen = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=eos)
        text = tok.decode(gen[0, ids.shape[1]:].tolist(), skip_special_tokens=True)
        for s in r["stop"]:
            text = text.split(s)[0]
        hits += text.strip() == r["answer"].strip()
    out["recall_exact_match"] = hits / len(rows)
    # Gloss multiple choice, harness semantics (BOS-prefixed context, per-character normalisation).
    rows = read_jsonl(os.path.join(data_dir, "tasks/gloss/test.jsonl"))[:limit]
    acc = acc_norm = 0
    for r in rows:
        ctx = r["context"].rstrip()
        moved = r["context"][len(ctx):]
        lls, norms = [], []
        for c in r["choices"]:
            c_ids = [bos] + tok.encode(ctx, add_special_tokens=False).ids
            w_ids = [bos] + tok.encode(ctx + moved + c, add_special_tokens=False).ids
            logp = F.log_softmax(model(torch.tensor([w_ids], device=device)).logits[0].float(), -1)
            ll = sum(logp[i - 1, w_ids[i]].item() for i in range(len(c_ids), len(w_ids)))
            lls.append(ll)
            norms.append(ll / len(c))
        acc += max(range(len(lls)), key=lambda i: lls[i]) == r["label"]
        acc_norm += max(range(len(norms)), key=lambda i: norms[i]) == r["label"]
    out["gloss_acc"] = acc / len(rows)
    out["gloss_acc_norm"] = acc_norm / len(rows)
    # KJV held-out books: token-weighted mean loss, perplexity.
    rows = read_jsonl(os.path.join(data_dir, "tasks/kjv/test.jsonl"))[:limit]
    nll, n = 0.0, 0
    for r in rows:
        ids = tok.encode(r["text"]).ids
        logits = model(torch.tensor([ids], device=device)).logits[0].float()
        nll += F.cross_entropy(logits[:-1], torch.tensor(ids[1:], device=device), reduction="sum").item()
        n += len(ids) - 1
    out["kjv_loss"] = nll / n
    out["kjv_perplexity"] = math.exp(nll / n)
    model.train()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=7.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--recall-fraction", type=int, default=25, help="percent of each batch")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    device = "cuda"
    docs = [d["text"] for d in read_jsonl(os.path.join(args.data, "corpus.jsonl"))]
    t0 = time.time()
    tok = build_tokenizer(docs, args.vocab)
    eos = tok.token_to_id("<|end_of_text|>")
    stream = []
    for enc in tok.encode_batch(docs):
        stream.extend(enc.ids)
        stream.append(eos)
    n_seq = len(stream) // (args.seq + 1)
    data = torch.tensor(stream[: n_seq * (args.seq + 1)]).view(n_seq, args.seq + 1)
    print(f"tokenizer + packing {time.time() - t0:.0f}s: {len(stream)} tokens, {n_seq} sequences", flush=True)

    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=256, intermediate_size=768,
                         num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4, head_dim=32,
                         max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=tok.token_to_id("<|begin_of_text|>"), eos_token_id=eos,
                         rope_theta=10000.0)
    model = LlamaForCausalLM(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    budget = args.minutes * 60
    start = time.time()
    step, warmup = 0, 200
    log = []
    data = data.to(device)
    # In-context recall is taught with fresh episodes every step (memorised episodes would not
    # transfer): keys and values from the words of the recall training split.
    vocab = sorted({w for r in read_jsonl(os.path.join(args.data, "tasks/recall/train.jsonl"))
                    for pair in r["prompt"][len("Pairs: "):].split(". Query:")[0].split(", ")
                    for w in pair.split("=")})
    rng = random.Random(args.seed)

    def recall_rows(n_rows):
        rows = []
        while len(rows) < n_rows:
            texts = []
            for _ in range(12):
                k = rng.randint(2, 8)
                keys, vals = rng.sample(vocab, k), rng.sample(vocab, k)
                q = rng.randrange(k)
                texts.append("Pairs: " + ", ".join(f"{a}={b}" for a, b in zip(keys, vals)) +
                             f". Query: {keys[q]}={vals[q]}.")
            ids = []
            for enc in tok.encode_batch(texts):
                ids.extend(enc.ids + [eos])
            if len(ids) >= args.seq + 1:
                rows.append(ids[: args.seq + 1])
        return torch.tensor(rows, device=device)

    n_recall = args.batch * args.recall_fraction // 100
    while time.time() - start < budget:
        frac = (time.time() - start) / budget
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, n_seq, (args.batch - n_recall,), device=device)
        batch = torch.cat([data[idx], recall_rows(n_recall)]) if n_recall else data[idx]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(batch[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 200 == 0:
            print(f"step {step} loss {loss.item():.3f} lr {lr:.2e} t {time.time() - start:.0f}s", flush=True)
            log.append({"step": step, "loss": loss.item()})
        step += 1
    train_s = time.time() - start
    model = model.to(torch.bfloat16)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save(os.path.join(args.out, "tokenizer.json"))
    scores = score(model, tok, args.data, device)
    result = {"parameters": n_params, "steps": step, "train_seconds": round(train_s), "tokens_seen": step * args.batch * args.seq,
              "corpus_tokens": len(stream), "recipe": vars(args), "test_scores_bf16_transformers": scores,
              "loss_log": log, "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "transformers": __import__("transformers").__version__}
    with open(os.path.join(args.out, "scores.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "loss_log"}), flush=True)


if __name__ == "__main__":
    main()
