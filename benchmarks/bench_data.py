"""Data pipeline throughput on the demo corpus.

Prints (and writes ``OUT/bench_data.json``):
- tokenisation MB/s of UTF-8 text: one process (``Tokenizer.encode_batch``) and the whole
  ``mmbert data prepare`` (read + tokenise + write shards, ``--workers`` processes);
- loader tokens/s: ``MLMLoader`` sample + pack + mask, torch tensors out (target >= 1M/s).

Usage: ``python benchmarks/bench_data.py [--out runs/bench-data] [--tokenizer gemma|DIR]``.
Missing inputs are built under ``--out`` (demo corpus, Gemma tokenizer from the npm cache).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench-data")
    ap.add_argument("--corpus", default=None, help="demo corpus (default: OUT/corpus, built)")
    ap.add_argument("--tokenizer", default="gemma", help="'gemma' or a tokenizer directory")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--seconds", type=float, default=5.0, help="loader measuring time")
    a = ap.parse_args()

    from mmbert.data.demo import fetch_demo
    from mmbert.data.loader import MLMLoader
    from mmbert.data.shards import prepare
    from mmbert.tokenizer import fetch_gemma, load_tokenizer

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = Path(a.corpus) if a.corpus else out / "corpus"
    if not (corpus / "corpus.json").is_file():
        t = time.perf_counter()
        fetch_demo(corpus, force=True)
        print(f"built demo corpus in {time.perf_counter() - t:.1f}s")
    if a.tokenizer == "gemma":
        tok_dir = out / "gemma2"
        if not (tok_dir / "tokenizer.json").is_file():
            fetch_gemma(tok_dir)
    else:
        tok_dir = Path(a.tokenizer)
    tok = load_tokenizer(tok_dir)
    res: dict = {"tokenizer": str(tok_dir), "vocab_size": tok.vocab_size}

    # 1) single-process tokenisation on a mixed-language sample (~4 MB)
    texts, size = [], 0
    for p in sorted((corpus / "train").glob("*.txt")):
        for d in p.read_text(encoding="utf-8").split("\n\n")[:40]:
            texts.append(d)
            size += len(d.encode("utf-8"))
        if size > 4e6:
            break
    tok.encode_batch(texts[:64])  # warm-up
    t = time.perf_counter()
    n_tok = sum(len(x) for x in tok.encode_batch(texts))
    dt = time.perf_counter() - t
    res["encode_batch_MBps"] = size / dt / 1e6
    res["encode_batch_tokens_per_byte"] = n_tok / size
    print(f"tokenise (encode_batch, 1 process): {size / 1e6:.1f} MB in {dt:.2f}s = "
          f"{res['encode_batch_MBps']:.2f} MB/s ({n_tok / size:.3f} tokens/byte)")

    # 2) prepare: the whole corpus into shards with N workers
    shards = out / f"shards-{tok_dir.name}"
    shutil.rmtree(shards, ignore_errors=True)
    mb = sum(p.stat().st_size for p in corpus.rglob("*.txt")) / 1e6
    t = time.perf_counter()
    m = prepare(corpus, tok_dir, shards, workers=a.workers, progress=False)
    dt = time.perf_counter() - t
    ntok = sum(s["tokens"] for e in m["languages"].values() for s in e["splits"].values())
    res["prepare_MBps"] = mb / dt
    res["prepare_workers"] = a.workers
    print(f"prepare ({a.workers} workers): {len(m['languages'])} languages, {mb:.1f} MB -> "
          f"{ntok / 1e6:.2f}M tokens in {dt:.1f}s = {res['prepare_MBps']:.2f} MB/s")

    # 3) loader: sample + pack + mask (torch tensors)
    for langs, tau, ratio in (("all", 0.3, 0.05), (20, 0.7, 0.3)):
        ld = MLMLoader(shards, languages=langs, tau=tau, seq_len=a.seq_len,
                       batch_tokens=a.batch_tokens, mask_ratio=ratio, seed=0)
        next(ld)
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < a.seconds:
            n += next(ld).num_tokens
        tps = n / (time.perf_counter() - t)
        key = f"loader_tokens_per_s[{langs},tau={tau}]"
        res[key] = tps
        print(f"loader ({len(ld.languages)} languages, tau {tau}, seq {a.seq_len}, "
              f"{a.batch_tokens} tokens/batch, mask {ratio}): {tps / 1e6:.2f}M tokens/s")
    (out / "bench_data.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
