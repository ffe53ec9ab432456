#!/usr/bin/env python3
"""Tokenizer parity of `hybridize tokenize` against Hugging Face `tokenizers` (independent
reference), run on the GPU machine where `tokenizers` is installed:

    python3 tests/parity/tokenizer_parity.py --cli build-gpu/cli/hybridize --out $OUT/tokenizer

Trains five small tokenizers with `tokenizers` on Python's own standard-library sources (English
prose and code) plus multilingual text, covering both kinds we support:
  gpt2_bytelevel     ByteLevel pre-tokenizer (GPT-2 regex), ByteLevel decoder
  llama3_style       Split(Llama 3 regex) + ByteLevel, ignore_merges, BOS template
  qwen2_style        NFC + Split(Qwen2 regex) + ByteLevel, added chat tokens
  llama2_legacy      Prepend/Replace normalizer, BPE with byte fallback, Replace/ByteFallback/
                     Fuse/Strip decoder, <s> template
  mistral_metaspace  Metaspace(prepend_scheme=first, split=false), byte fallback
For each: >= 10,000 test strings (several scripts, emoji, whitespace runs, digits, code,
special tokens inside text, invalid UTF-8 as raw bytes) must give identical ids, identical
decoded text, and 2,000 random id sequences must decode identically. Encode throughput of
both (single thread, same strings) is reported. Writes summary.json; exit 1 on any mismatch.
"""
import argparse
import glob
import json
import os
import random
import subprocess
import sys
import time
import unicodedata

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Regex, trainers

LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

SCRIPTS = {
    "latin": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZàáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßœŒ",
    "greek": "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩάέήίόύώ",
    "cyrillic": "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЭЮЯ",
    "cjk": "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهويءآأؤإئ",
    "hebrew": "אבגדהוזחטיכלמנסעפצקרשת",
    "devanagari": "अआइईउऊएऐओऔकखगघङचछजझञटठडढणतथदधनपफबभमयरलवशषसह्ािीुूेैोौं",
    "thai": "กขฃคฅฆงจฉชซฌญฎฏฐฑฒณดตถทธนบปผฝพฟภมยรลวศษสหฬอฮะัาำิีึืุู",
    "hangul": "가나다라마바사아자차카타파하각난닫랄맘밥삿앙잦찿캌탙팦핳한국어조선말",
    "emoji": ["😀", "😂", "🥲", "👍", "👍🏽", "❤️", "🇫🇷", "🇯🇵", "👨‍👩‍👧‍👦", "🧑🏿‍💻", "✨", "🔥", "🚀", "🤖", "☕", "🏳️‍🌈"],
    "digits": "0123456789٠١٢٣٤٥٦٧٨٩०१२३४५६७८९½²³",
    "punct": ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`«»“”‘’…—–·•§¶€£¥",
}
WHITESPACE = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "\u2009", "\t\t ", "    "]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'Re", "'D"]


def corpus_lines(limit_bytes):
    files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "**", "*.py"), recursive=True))
    out, total = [], 0
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                for line in fh:
                    line = line.rstrip("\n")
                    if line.strip():
                        out.append(line)
                        total += len(line)
        except (UnicodeDecodeError, OSError):
            continue
        if total > limit_bytes:
            break
    return out


def random_piece(rng):
    kind = rng.choice(list(SCRIPTS) + ["ws", "contraction", "word"])
    if kind == "ws":
        return rng.choice(WHITESPACE)
    if kind == "contraction":
        return rng.choice(["it", "we", "THEY", "you", "Dog"]) + rng.choice(CONTRACTIONS)
    if kind == "word":
        return rng.choice(["hello", "world", "The", "tokenizer", "ſ", "naïve", "cafe\u0301", "e\u0301te\u0301",
                           "\u1100\u1161\u11a8", "Å", "A\u030a", "ﬁ", "▁", "<0x41>", "def", "return", "x=1;"])
    chars = SCRIPTS[kind]
    n = rng.randint(1, 12)
    if kind == "emoji":
        return "".join(rng.choice(chars) for _ in range(rng.randint(1, 3)))
    return "".join(rng.choice(chars) for _ in range(n))


def test_strings(rng, held_out, specials, n):
    out = []
    for line in held_out[: n // 3]:
        out.append(line)
    while len(out) < n:
        r = rng.random()
        if r < 0.6:
            s = "".join(random_piece(rng) + (rng.choice(WHITESPACE) if rng.random() < 0.5 else "")
                        for _ in range(rng.randint(1, 10)))
        elif r < 0.75:
            a, b = rng.sample(held_out, 2)
            s = a + rng.choice(WHITESPACE) + b
        elif r < 0.85:
            s = str(rng.randint(0, 10 ** rng.randint(1, 15))) + rng.choice([" ", ",", ".", ""]) + str(rng.random())
        else:
            s = rng.choice(held_out) + rng.choice(specials) + random_piece(rng)
        out.append(s)
    return out


def invalid_utf8_cases(rng, n):
    cases = []
    bad = [b"\xff", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf5\x80\x80\x80", b"\x80\x80"]
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 5)):
            parts.append(rng.choice(bad) if rng.random() < 0.5 else random_piece(rng).encode("utf-8"))
        cases.append(b"".join(parts))
    return cases


def add_byte_tokens(tok):
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    nxt = max(max(vocab.values()), max(a["id"] for a in j["added_tokens"])) + 1
    for b in range(256):
        name = "<0x%02X>" % b
        if name not in vocab:
            vocab[name] = nxt
            nxt += 1
    return Tokenizer.from_str(json.dumps(j))


def build(name, lines):
    if name == "gpt2_bytelevel":
        t = Tokenizer(models.BPE())
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        t.decoder = decoders.ByteLevel()
        tr = trainers.BpeTrainer(vocab_size=4000, special_tokens=["<|endoftext|>"],
                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        t.train_from_iterator(lines, tr)
        return t
    if name in ("llama3_style", "qwen2_style"):
        t = Tokenizer(models.BPE(ignore_merges=(name == "llama3_style")))
        if name == "qwen2_style":
            t.normalizer = normalizers.NFC()
        t.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3 if name == "llama3_style" else QWEN2), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        t.decoder = decoders.ByteLevel()
        specials = (["<|begin_of_text|>", "<|end_of_text|>"] if name == "llama3_style"
                    else ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        tr = trainers.BpeTrainer(vocab_size=5000, special_tokens=specials,
                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        t.train_from_iterator(lines, tr)
        if name == "llama3_style":
            t.post_processor = processors.TemplateProcessing(
                single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", t.token_to_id("<|begin_of_text|>"))])
        return t
    # SentencePiece-style BPE with byte fallback.
    t = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if name == "llama2_legacy":
        t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        t.pre_tokenizer = None
    else:
        t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    tr = trainers.BpeTrainer(vocab_size=3000, special_tokens=["<unk>", "<s>", "</s>"], max_token_length=16)
    # Train on short segments: whole lines as single words would make the trainer quadratic.
    short = [w for line in lines[:20000] for w in line.split(" ") if w][:200000]
    t.train_from_iterator(short, tr)
    t = add_byte_tokens(t)
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", t.token_to_id("<s>"))])
    return t


def run_cli(cli, tok_path, in_path, out_path, extra):
    cmd = [cli, "tokenize", "--tokenizer", tok_path, "--input", in_path, "--output", out_path] + extra
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr}")
    stats = json.loads(r.stderr.strip().splitlines()[-1])
    with open(out_path, encoding="utf-8") as f:
        return [json.loads(l) for l in f], stats


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--strings", type=int, default=10000)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(1234)
    lines = corpus_lines(12_000_000)
    rng.shuffle(lines)
    train, held = lines[: len(lines) * 9 // 10], lines[len(lines) * 9 // 10:]
    multilingual = [" ".join(random_piece(rng) for _ in range(20)) for _ in range(20000)]
    summary = {"tokenizers": __import__("tokenizers").__version__, "python_unicode": unicodedata.unidata_version,
               "results": []}
    ok = True
    for name in ["gpt2_bytelevel", "llama3_style", "qwen2_style", "llama2_legacy", "mistral_metaspace"]:
        t0 = time.time()
        tok = build(name, train[:150000] + multilingual)
        train_s = time.time() - t0
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        tok_path = os.path.join(d, "tokenizer.json")
        tok.save(tok_path)
        specials = [a.content for a in tok.get_added_tokens_decoder().values()]
        strings = test_strings(rng, held, specials, args.strings)
        invalid = invalid_utf8_cases(rng, 500)
        id_seqs = [[rng.randrange(tok.get_vocab_size()) for _ in range(rng.randint(1, 12))] for _ in range(2000)]
        in_path = os.path.join(d, "cases.jsonl")
        with open(in_path, "w", encoding="utf-8") as f:
            for s in strings:
                f.write(json.dumps({"text": s}, ensure_ascii=False) + "\n")
            for b in invalid:
                f.write(json.dumps({"text_hex": b.hex()}) + "\n")
            for ids in id_seqs:
                f.write(json.dumps({"ids": ids}) + "\n")
        row = {"name": name, "train_seconds": round(train_s, 1), "vocab": tok.get_vocab_size(),
               "strings": len(strings), "invalid_utf8": len(invalid), "id_sequences": len(id_seqs)}
        for special_flag in [False, True]:
            extra = ["--add-special-tokens"] if special_flag else []
            ours, stats = run_cli(args.cli, tok_path, in_path, os.path.join(d, "ours.jsonl"), extra)
            texts = strings + [b.decode("utf-8", errors="replace") for b in invalid]
            mism_ids, mism_dec, mism_round = [], [], 0
            for k, s in enumerate(texts):
                ref = tok.encode(s, add_special_tokens=special_flag).ids
                if ours[k]["ids"] != ref:
                    mism_ids.append({"text": s, "ours": ours[k]["ids"], "ref": ref})
                ref_dec = tok.decode(ref, skip_special_tokens=False)
                if ours[k]["decoded"] != ref_dec:
                    mism_dec.append({"ids": ref, "ours": ours[k]["decoded"], "ref": ref_dec})
            for k, ids in enumerate(id_seqs):
                ref_dec = tok.decode(ids, skip_special_tokens=False)
                if ours[len(texts) + k]["decoded"] != ref_dec:
                    mism_dec.append({"ids": ids, "ours": ours[len(texts) + k]["decoded"], "ref": ref_dec})
            tag = "with_special" if special_flag else "plain"
            row[f"{tag}_id_mismatches"] = len(mism_ids)
            row[f"{tag}_decode_mismatches"] = len(mism_dec)
            ok &= not mism_ids and not mism_dec
            if mism_ids or mism_dec:
                with open(os.path.join(d, f"mismatches_{tag}.json"), "w", encoding="utf-8") as f:
                    json.dump({"ids": mism_ids[:50], "decode": mism_dec[:50]}, f, ensure_ascii=False, indent=1)
            if not special_flag:
                # Round trip with our decoder: byte-level tokenizers are lossless
                # (decode(encode(s)) == s, after NFC for qwen2).
                for k, s in enumerate(strings):
                    want = unicodedata.normalize("NFC", s) if name == "qwen2_style" else s
                    mism_round += ours[k]["decoded"] != want and name in (
                        "gpt2_bytelevel", "llama3_style", "qwen2_style")
                row["byte_level_roundtrip_failures"] = int(mism_round)
                ok &= mism_round == 0
                # A sample with the reference ids, checked into tests/data for CI. "ids" and
                # "ids_special" both come from encode() with its default add_special_tokens=True.
                with open(os.path.join(d, "fixtures.jsonl"), "w", encoding="utf-8") as f:
                    for k in list(range(0, len(strings), len(strings) // 300))[:300]:
                        f.write(json.dumps({"text": strings[k], "ids": tok.encode(strings[k]).ids,
                                            "ids_special": tok.encode(strings[k], add_special_tokens=True).ids,
                                            "decoded": tok.decode(tok.encode(strings[k]).ids, skip_special_tokens=False)},
                                           ensure_ascii=False) + "\n")
                    for b in invalid[:50]:
                        ids = tok.encode(b.decode("utf-8", errors="replace")).ids
                        f.write(json.dumps({"text_hex": b.hex(), "ids": ids,
                                            "ids_special": tok.encode(b.decode("utf-8", errors="replace"), add_special_tokens=True).ids,
                                            "decoded": tok.decode(ids, skip_special_tokens=False)}) + "\n")
                # Throughput on the same strings, single thread.
                nbytes = sum(len(s.encode("utf-8")) for s in texts)
                t0 = time.perf_counter()
                for s in texts:
                    tok.encode(s, add_special_tokens=False)
                ref_s = time.perf_counter() - t0
                row["bytes"] = nbytes
                row["ours_mb_per_s"] = round(stats["mb_per_second"], 2)
                row["tokenizers_mb_per_s"] = round(nbytes / ref_s / 1e6, 2)
        summary["results"].append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
        for f in ("cases.jsonl", "ours.jsonl"):
            os.remove(os.path.join(d, f))
    summary["pass"] = bool(ok)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("TOKENIZER PARITY", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
