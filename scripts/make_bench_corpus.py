#!/usr/bin/env python3
"""Synthetic pretraining-scale corpus for the data-pipeline benchmark (docs/benchmarks.md).

Splits the State of the Union addresses (data/sotu, from scripts/fetch_sotu.sh) into
sentences, and writes documents of 10-60 shuffled sentences as JSON Lines (gzip, level 1)
until the uncompressed text reaches the requested size; or, when OUT ends in .parquet, the same
documents as Parquet (a `text` column, snappy, row groups of 10,000 documents; needs pyarrow).
Seeded: the same documents every time.

    python3 scripts/make_bench_corpus.py OUT.jsonl.gz SIZE_MB [--seed N]
    python3 scripts/make_bench_corpus.py OUT.parquet SIZE_MB [--seed N]
"""
import argparse
import glob
import gzip
import json
import random


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("size_mb", type=float)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sotu", default="data/sotu")
    args = ap.parse_args()
    sentences = []
    for path in sorted(glob.glob(f"{args.sotu}/*.txt")):
        with open(path, encoding="utf-8") as f:
            sentences += [p.strip() + "." for p in f.read().split(". ") if p.strip()]
    if not sentences:
        raise SystemExit(f"no .txt files in {args.sotu}: run scripts/fetch_sotu.sh first")
    rng = random.Random(args.seed)
    target = int(args.size_mb * 1e6)
    written = docs = 0

    def documents():
        nonlocal written, docs
        while written < target:
            text = " ".join(rng.choice(sentences) for _ in range(rng.randint(10, 60)))
            written += len(text.encode("utf-8"))
            docs += 1
            yield text

    if args.out.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("text", pa.string())])
        with pq.ParquetWriter(args.out, schema, compression="snappy") as out:
            batch = []
            for text in documents():
                batch.append(text)
                if len(batch) == 10_000:
                    out.write_table(pa.table({"text": batch}, schema=schema))
                    batch = []
            if batch:
                out.write_table(pa.table({"text": batch}, schema=schema))
    else:
        with gzip.open(args.out, "wt", encoding="utf-8", compresslevel=1) as out:
            for text in documents():
                out.write(json.dumps({"id": docs - 1, "text": text}) + "\n")
    print(f"{args.out}: {docs} documents, {written / 1e6:.1f} MB of text")


if __name__ == "__main__":
    main()
