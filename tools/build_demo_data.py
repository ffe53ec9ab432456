#!/usr/bin/env python3
"""Builds the demo corpus and tasks from free texts that ship with Debian (deterministic by seed).

Sources (Debian packages; scripts/setup installs them):
  wordnet-base  /usr/share/wordnet/data.{noun,verb,adj,adv}   WordNet 3.0 glosses
  dict-gcide    /usr/share/dictd/gcide.dict.dz                GNU Collaborative International
                                                               Dictionary of English (dictzip = gzip)
  bible-kjv     the `bible` program                           King James Version

Output directory:
  corpus.jsonl                      training text, {"text": ...} per document
  tasks/recall/{train,validation,test}.jsonl   generate: in-context associative recall
  tasks/gloss/{train,validation,test}.jsonl    multiple_choice: which gloss defines the word
  tasks/kjv/{train,validation,test}.jsonl      lm: held-out KJV books
  distill.jsonl                     distillation text for demo jobs: the recall and gloss
                                    training splits as text plus the first corpus documents
  manifest.json                     counts, seed, sources

    python3 tools/build_demo_data.py --out demo-data [--seed 0]
"""
import argparse
import gzip
import json
import os
import random
import re
import subprocess
import sys

WORDNET = "/usr/share/wordnet"
GCIDE = "/usr/share/dictd/gcide.dict.dz"
# Held-out books (bible program abbreviations) for the KJV language-modelling task.
KJV_VALIDATION_BOOKS = {"Ruth", "Jonah"}
KJV_TEST_BOOKS = {"Esther", "Philemon", "Jude", "Titus"}


def wordnet_glosses():
    """(word, pos, gloss) for single-word lemmas, first sense of each word per POS."""
    out, seen = [], set()
    for pos in ("noun", "verb", "adj", "adv"):
        with open(os.path.join(WORDNET, "data." + pos), encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                head, _, gloss = line.partition("|")
                parts = head.split()
                n_words = int(parts[3], 16)
                words = [parts[4 + 2 * i] for i in range(n_words)]
                gloss = gloss.strip().split(";")[0].strip()
                gloss = re.sub(r"\s+", " ", gloss)
                if not (8 <= len(gloss) <= 80):
                    continue
                for w in words:
                    w = re.sub(r"\(.*\)$", "", w)
                    if not re.fullmatch(r"[a-z]{3,12}", w) or (w, pos) in seen:
                        continue
                    seen.add((w, pos))
                    out.append((w, pos, gloss))
    return out


def gcide_text(limit_chars):
    """Plain-text definitions from GCIDE (markup stripped), up to limit_chars."""
    with gzip.open(GCIDE, "rt", encoding="utf-8", errors="replace") as f:
        raw = f.read(limit_chars * 3)
    text = re.sub(r"<[^>]*>", " ", raw)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    out, total = [], 0
    for p in paras:
        if 40 <= len(p) <= 600 and p.isascii():
            out.append(p)
            total += len(p)
            if total >= limit_chars:
                break
    return out


def kjv_verses():
    """(book, chapter, verse text) for the whole Bible, from the `bible` program."""
    r = subprocess.run(["bible", "-l", "100000", "Gen1:1-Rev22:21"], capture_output=True,
                       text=True, check=True)
    verses, book, chap = [], None, 0
    for line in r.stdout.splitlines():
        header = re.match(r"^(\S.*) (\d+)$", line)
        verse = re.match(r"^\s+(\d+) (.*)$", line)
        if header:
            book, chap = header.group(1), int(header.group(2))
        elif verse and book:
            verses.append((book, chap, verse.group(2).strip()))
    return verses


def recall_example(rng, vocab, n_pairs):
    keys = rng.sample(vocab, n_pairs)
    values = rng.sample(vocab, n_pairs)
    q = rng.randrange(n_pairs)
    pairs = ", ".join(f"{k}={v}" for k, v in zip(keys, values))
    return {"prompt": f"Pairs: {pairs}. Query: {keys[q]}=", "answer": values[q], "stop": ["\n", "."]}


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gloss-words", type=int, default=3000, help="words whose glosses are taught")
    ap.add_argument("--recall-train", type=int, default=60000, help="recall episodes in the corpus")
    ap.add_argument("--gcide-chars", type=int, default=4_000_000)
    ap.add_argument("--distill-corpus-docs", type=int, default=4000,
                    help="corpus documents in distill.jsonl")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    if os.path.exists(args.out):
        sys.exit(f"{args.out}: already exists")

    # --- WordNet glosses: a fixed set of words, their glosses taught in the corpus. ---
    glosses = wordnet_glosses()
    rng.shuffle(glosses)
    by_word = {}
    for w, pos, g in glosses:
        by_word.setdefault(w, (pos, g))
    words = sorted(by_word)
    rng.shuffle(words)
    taught = words[: args.gloss_words]
    corpus = []
    for w in taught:
        pos, g = by_word[w]
        for template in ("The word {w} means: {g}.", "{w} ({p}): {g}.", "Definition of {w}: {g}."):
            corpus.append({"text": template.format(w=w, g=g, p=pos)})
    # Multiple choice: which of four glosses (same part of speech when possible) defines the word.
    gloss_items = []
    pos_pool = {}
    for w in taught:
        pos_pool.setdefault(by_word[w][0], []).append(w)
    for w in taught:
        pos, g = by_word[w]
        pool = [x for x in pos_pool[pos] if x != w]
        if len(pool) < 3:
            pool = [x for x in taught if x != w]
        distract = [by_word[x][1] for x in rng.sample(pool, 3)]
        choices = distract + [g]
        rng.shuffle(choices)
        gloss_items.append({"context": f"The word {w} means:", "choices": [" " + c for c in choices],
                            "label": choices.index(g)})
    n = len(gloss_items)
    gloss_splits = {"train": gloss_items[: n * 8 // 10], "validation": gloss_items[n * 8 // 10: n * 9 // 10],
                    "test": gloss_items[n * 9 // 10:]}

    # --- Associative recall: keys and values are common words; the skill is taught in-context. ---
    vocab = sorted(set(words[: 2000]))
    for _ in range(args.recall_train):
        e = recall_example(rng, vocab, rng.randint(2, 8))
        corpus.append({"text": e["prompt"] + e["answer"] + "."})
    recall_splits = {split: [recall_example(rng, vocab, rng.randint(3, 6)) for _ in range(count)]
                     for split, count in (("train", 2000), ("validation", 200), ("test", 500))}

    # --- KJV: whole books held out for validation and test; the rest trains. ---
    verses = kjv_verses()
    kjv = {"train": [], "validation": [], "test": []}
    chapter_text = {}
    for book, chap, text in verses:
        split = "validation" if book in KJV_VALIDATION_BOOKS else "test" if book in KJV_TEST_BOOKS else "train"
        chapter_text.setdefault((split, book, chap), []).append(text)
    for (split, book, chap), texts in chapter_text.items():
        # Documents of about 8 verses.
        for i in range(0, len(texts), 8):
            doc = " ".join(texts[i:i + 8])
            kjv[split].append({"text": doc})
            if split == "train":
                corpus.append({"text": doc})

    # --- GCIDE definitions as general English prose. ---
    for p in gcide_text(args.gcide_chars):
        corpus.append({"text": p})

    rng.shuffle(corpus)
    write_jsonl(os.path.join(args.out, "corpus.jsonl"), corpus)
    for name, splits in (("recall", recall_splits), ("gloss", gloss_splits), ("kjv", kjv)):
        for split, rows in splits.items():
            write_jsonl(os.path.join(args.out, "tasks", name, split + ".jsonl"), rows)
    # Distillation text for demo jobs: what the tasks look like (their training splits, never
    # validation or test) and general text. Built last so it changes nothing above.
    distill = [{"text": r["prompt"] + r["answer"] + "."} for r in recall_splits["train"]]
    distill += [{"text": r["context"] + r["choices"][r["label"]] + "."} for r in gloss_splits["train"]]
    distill += corpus[: args.distill_corpus_docs]
    random.Random(args.seed + 1).shuffle(distill)
    write_jsonl(os.path.join(args.out, "distill.jsonl"), distill)
    manifest = {"seed": args.seed, "documents": len(corpus), "distill_documents": len(distill),
                "corpus_chars": sum(len(d["text"]) for d in corpus),
                "tasks": {name: {s: len(r) for s, r in splits.items()}
                          for name, splits in (("recall", recall_splits), ("gloss", gloss_splits), ("kjv", kjv))},
                "sources": ["wordnet-base (WordNet 3.0)", "dict-gcide (GCIDE 0.48)", "bible-kjv (KJV)"]}
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    print(json.dumps(manifest))


if __name__ == "__main__":
    main()
