#!/usr/bin/env python3
"""Trains the demo teacher from scratch on the GPU machine with `transformers` (reference
library, not part of the product) and scores it on the demo tasks.

    python3 tools/build_demo_data.py --out out/demo-data --recall-train 0 --gcide-chars 30000000
    python3 tools/train_demo_teacher.py --data out/demo-data --out $OUT/demo-teacher --minutes 6

Recipe: byte-level BPE tokenizer (Llama 3 split pattern, 4,096 tokens) trained with `tokenizers`
on the corpus; a Llama-architecture model (6 layers, hidden 256, 8 query / 4 key-value heads,
SwiGLU 768, tied embeddings, ~5.8M parameters, 11.6 MB in bf16) trained with AdamW on packed
256-token rows for a fixed wall-clock budget. Half of each batch is corpus text, half is freshly
generated in-context recall episodes (built from cached per-word token ids by DataLoader worker
processes, so the GPU never waits on them; 1-3 queries per episode), and the loss adds the mean over recall answer
tokens to the mean over all tokens. Saved in bf16 with its tokenizer.json. Writes scores.json
with the test-split scores (recall exact match, gloss accuracy and length-normalised accuracy
with lm-evaluation-harness semantics, KJV perplexity) computed with `transformers`, and a
teacher-forced validation recall probe every 500 steps.
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


class RecallEpisodes:
    """Builds in-context recall episodes directly as token ids, fast enough to feed every step.

    Under the Llama 3 split pattern every piece of a pair list is its own pre-token (" key",
    "=value", ",", "."), so its ids are the concatenation of per-piece ids; __init__ checks that
    against the tokenizer on sample episodes. A query's answer is generated after a prompt that
    ends in "=", so answers are taught as "=" followed by the word's own ids, exactly what
    greedy decoding has to produce at test time.
    """

    def __init__(self, tok, words, data_dir, rng):
        self.tok, self.words, self.rng = tok, words, rng
        enc = lambda text: tok.encode(text, add_special_tokens=False).ids
        self.key = {w: enc(" " + w) for w in words}
        self.val = {w: enc("=" + w) for w in words}
        self.word = {w: enc(w) for w in words}
        self.pairs, self.colon, self.query = enc("Pairs"), enc(":"), enc(" Query")
        self.comma, self.dot, self.eq = enc(","), enc("."), enc("=")
        self.bos, self.eos = tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|end_of_text|>")
        for _ in range(200):
            ids, _, text = self.episode(with_text=True, queries=0)
            assert ids == [self.bos] + enc(text) + [self.eos], text
        merged = sum(self.val[w] != self.eq + self.word[w] for w in words)
        rows = read_jsonl(os.path.join(data_dir, "tasks/recall/test.jsonl"))
        split = sum(enc(r["prompt"] + r["answer"]) != enc(r["prompt"]) + enc(r["answer"]) for r in rows)
        print(f"recall words whose '=word' merges across '=': {merged}/{len(words)}; "
              f"test prompts that tokenise differently with their answer: {split}/{len(rows)}", flush=True)

    def episode(self, with_text=False, queries=None):
        """[bos] Pairs: k1=v1, ..., kn=vn. Query: ki=vi. (1-3 queries) [eos], and the answer mask."""
        rng = self.rng
        n = rng.randint(2, 8)
        keys, vals = rng.sample(self.words, n), rng.sample(self.words, n)
        ids, mask = [self.bos] + self.pairs + self.colon, None
        for i, (k, v) in enumerate(zip(keys, vals)):
            if i:
                ids += self.comma
            ids += self.key[k] + self.val[v]
        ids += self.dot
        mask = [0] * len(ids)
        queries = rng.sample(range(n), min(n, rng.randint(1, 3) if queries is None else queries))
        for q in queries:
            ids += self.query + self.colon + self.key[keys[q]] + self.eq
            mask += [0] * (len(self.query) + len(self.colon) + len(self.key[keys[q]]) + len(self.eq))
            answer = self.word[vals[q]] + self.dot
            ids += answer
            mask += [1] * len(answer)
        ids.append(self.eos)
        mask.append(0)
        if with_text:
            text = "Pairs: " + ", ".join(f"{a}={b}" for a, b in zip(keys, vals)) + "." + \
                   "".join(f" Query: {keys[q]}={vals[q]}." for q in queries)
            return ids, mask, text
        return ids, mask

    def rows(self, n_rows, length):
        """n_rows packed rows of `length` tokens; the mask marks answer tokens as targets."""
        ids_out, mask_out = [], []
        for _ in range(n_rows):
            ids, mask = [], []
            while len(ids) < length:
                e, m = self.episode()
                ids += e
                mask += m
            ids_out.append(ids[:length])
            mask_out.append(mask[:length])
        return torch.tensor(ids_out), torch.tensor(mask_out, dtype=torch.bool)


class EpisodeStream(torch.utils.data.IterableDataset):
    """Endless recall rows for DataLoader workers: each worker draws from its own seeded RNG, so
    the training loop never waits on episode building."""

    def __init__(self, episodes, n_rows, length, seed):
        self.episodes, self.n_rows, self.length, self.seed = episodes, n_rows, length, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        self.episodes.rng = random.Random(self.seed * 1000 + (info.id if info else 0))
        while True:
            yield self.episodes.rows(self.n_rows, self.length)


@torch.no_grad()
def recall_probe(model, tok, rows, device):
    """Teacher-forced exact match on recall prompts: every answer token is the argmax."""
    model.eval()
    enc = [(tok.encode(r["prompt"]).ids, tok.encode(r["answer"], add_special_tokens=False).ids) for r in rows]
    width = max(len(p) + len(a) for p, a in enc)
    batch = torch.zeros(len(enc), width, dtype=torch.long)
    for i, (p, a) in enumerate(enc):
        batch[i, : len(p) + len(a)] = torch.tensor(p + a)
    pred = model(batch.to(device)).logits.argmax(-1).cpu()
    hits = sum(all(pred[i, len(p) - 1 + j] == a[j] for j in range(len(a))) for i, (p, a) in enumerate(enc))
    model.train()
    return hits / len(enc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=6.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--recall-fraction", type=int, default=50, help="percent of each batch")
    ap.add_argument("--answer-weight", type=float, default=1.0,
                    help="weight of the mean loss on recall answer tokens, added to the mean over all tokens")
    ap.add_argument("--loader-workers", type=int, default=4, help="processes building recall episodes")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    device = "cuda"
    t_setup = time.time()
    docs = [d["text"] for d in read_jsonl(os.path.join(args.data, "corpus.jsonl"))]
    tok = build_tokenizer(docs, args.vocab)
    eos = tok.token_to_id("<|end_of_text|>")
    stream = []
    for enc in tok.encode_batch(docs):
        stream.extend(enc.ids)
        stream.append(eos)
    n_seq = len(stream) // (args.seq + 1)
    data = torch.tensor(stream[: n_seq * (args.seq + 1)]).view(n_seq, args.seq + 1)
    # Keys and values come from the words of the recall training split; validation and test
    # episodes are different draws from the same word list.
    words = sorted({w for r in read_jsonl(os.path.join(args.data, "tasks/recall/train.jsonl"))
                    for pair in r["prompt"][len("Pairs: "):].split(". Query:")[0].split(", ")
                    for w in pair.split("=")})
    episodes = RecallEpisodes(tok, words, args.data, random.Random(args.seed))
    probe_rows = read_jsonl(os.path.join(args.data, "tasks/recall/validation.jsonl"))
    print(f"setup {time.time() - t_setup:.0f}s: {len(stream)} corpus tokens, {n_seq} sequences, "
          f"{len(words)} recall words", flush=True)

    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=256, intermediate_size=768,
                         num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4, head_dim=32,
                         max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=tok.token_to_id("<|begin_of_text|>"), eos_token_id=eos,
                         rope_theta=10000.0)
    model = LlamaForCausalLM(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    budget = args.minutes * 60
    step, warmup = 0, 200
    log = []
    data = data.to(device)
    n_recall = args.batch * args.recall_fraction // 100
    recall_rows = iter(torch.utils.data.DataLoader(EpisodeStream(episodes, n_recall, args.seq + 1, args.seed),
                                                   batch_size=None, num_workers=args.loader_workers,
                                                   pin_memory=True, prefetch_factor=8))
    start = time.time()
    while time.time() - start < budget:
        frac = (time.time() - start) / budget
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, n_seq, (args.batch - n_recall,), device=device)
        rec_ids, rec_mask = next(recall_rows)
        batch = torch.cat([data[idx], rec_ids.to(device, non_blocking=True)])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(batch[:, :-1]).logits
        per_token = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                    reduction="none").view(args.batch, args.seq)
        answer = rec_mask[:, 1:].to(device, non_blocking=True)
        answer_loss = per_token[args.batch - n_recall:][answer].mean()
        loss = per_token.mean() + args.answer_weight * answer_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 500 == 0:
            probe = recall_probe(model, tok, probe_rows, device)
            entry = {"step": step, "t": round(time.time() - start), "loss": per_token.mean().item(),
                     "answer_loss": answer_loss.item(), "validation_recall_teacher_forced": probe}
            print(json.dumps(entry), flush=True)
            log.append(entry)
        step += 1
    train_s = time.time() - start
    model = model.to(torch.bfloat16)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save(os.path.join(args.out, "tokenizer.json"))
    t_score = time.time()
    scores = score(model, tok, args.data, device)
    result = {"parameters": n_params, "steps": step, "train_seconds": round(train_s),
              "score_seconds": round(time.time() - t_score), "tokens_seen": step * args.batch * args.seq,
              "corpus_tokens": len(stream), "recipe": vars(args), "test_scores_bf16_transformers": scores,
              "loss_log": log, "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "transformers": __import__("transformers").__version__,
              "tokenizers": __import__("tokenizers").__version__}
    with open(os.path.join(args.out, "scores.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "loss_log"}), flush=True)


if __name__ == "__main__":
    main()
