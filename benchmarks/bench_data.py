"""Data pipeline throughput: tokeniser, `mmbert data prepare`, loader.

Headline unit: MB of UTF-8 text per CPU-second (= MB/s per core): CPU time of this process and
its waited-for children (getrusage), so the number holds on a shared, busy machine where wall
time does not; wall MB/s is reported next to it. Prints and writes ``OUT/bench_data.json``:

(a) tokeniser on a multilingual sample (``--sample-mb``, documents taken round-robin over the
    languages), one process: our ``Tokenizer.encode_batch`` as ``prepare`` calls it and the
    variants worth comparing (batch size, Rust threads, offsets, per document), each checked to
    give the same ids; the other per-document stages (read + split + NFC, flatten, sha256) and
    the tokenizer load (paid once per worker process);
(b) ``prepare`` end to end with ``--workers`` (``--executor`` is passed on only when given);
(c) loader tokens/s (``MLMLoader``: sample + pack + mask) on the shards of (b).

Usage: ``python benchmarks/bench_data.py [--out runs/bench-data] [--tokenizer gemma|DIR]
[--languages N] [--workers 2] [--executor NAME]``. ``--languages N``: N languages evenly
spaced in code order (default all). Inputs: ``--corpus`` or the cached demo corpus
(``$MMBERT_CACHE/demo-corpus``, built on first use); ``--tokenizer gemma`` builds Gemma 2
under ``OUT/gemma2`` from the npm cache.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import itertools
import json
import os
import resource
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

PAR_ENV = "TOKENIZERS_PARALLELISM"


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------

def cpu_seconds() -> tuple[float, float]:
    """User + system CPU seconds of this process (all threads) and of its waited children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, ch.ru_utime + ch.ru_stime


class Meter:
    """``with Meter() as m: ...`` then ``m.wall``, ``m.cpu_self``, ``m.cpu_children``, ``m.cpu``."""

    def __enter__(self) -> "Meter":
        self._c, self._t = cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self._t
        c = cpu_seconds()
        self.cpu_self, self.cpu_children = c[0] - self._c[0], c[1] - self._c[1]
        self.cpu = self.cpu_self + self.cpu_children


def rates(mb: float, cpu: float, wall: float) -> dict[str, float]:
    return {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
            "MB_per_cpu_s": round(mb / max(cpu, 1e-9), 3),
            "MB_per_s_wall": round(mb / max(wall, 1e-9), 3)}


def system_info() -> dict[str, Any]:
    """CPU model and flags, cores, load: to state next to every number."""
    model, flags = "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name" and model == "?":
                model = val.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(val.split())
    except OSError:
        pass
    import tokenizers

    return {"cpu": model, "avx512_bf16": "avx512_bf16" in flags, "cores": os.cpu_count(),
            "loadavg_start": os.getloadavg(), "tokenizers": tokenizers.__version__,
            "rayon_threads": int(os.environ.get("RAYON_NUM_THREADS") or 0) or os.cpu_count()}


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

def resolve_inputs(a: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    """The corpus (``--corpus`` or the cached demo corpus) and the tokenizer directory."""
    from mmbert.tokenizer import fetch_gemma

    if a.corpus:
        corpus = Path(a.corpus)
    else:
        from mmbert.data.demo import cached_demo_corpus

        corpus = cached_demo_corpus()
    if a.tokenizer != "gemma":
        return corpus, Path(a.tokenizer)
    tok_dir = out / "gemma2"
    if not (tok_dir / "tokenizer.json").is_file():
        fetch_gemma(tok_dir, overwrite=True)
    return corpus, tok_dir


def pick_languages(inputs: dict[str, list], n: int | None) -> list[str]:
    """``n`` languages evenly spaced in code order (all when ``n`` is None or too large)."""
    langs = sorted(inputs)
    if not n or n >= len(langs):
        return langs
    return [langs[round(i * (len(langs) - 1) / max(1, n - 1))] for i in range(n)]


def input_mb(inputs: dict[str, list], langs: list[str]) -> float:
    """MB of the input files of ``langs`` (each file once; for the demo corpus: its text)."""
    return sum(os.path.getsize(p) for p in {i.path for lang in langs for i in inputs[lang]}) / 1e6


def sample_texts(inputs: dict[str, list], langs: list[str], target_mb: float) -> list[str]:
    """Train documents round-robin over ``langs`` (one each in turn) up to ``target_mb`` MB."""
    from mmbert.data.sources import iter_input

    its = [iter(itertools.chain.from_iterable(iter_input(i, lang) for i in inputs[lang]
                                              if i.split != "heldout")) for lang in langs]
    texts, size = [], 0
    while its and size < target_mb * 1e6:
        alive = []
        for it in its:
            doc = next(it, None)
            if doc is None:
                continue
            alive.append(it)
            if getattr(doc, "ids", None) is None:  # pre-tokenised documents are not text
                texts.append(doc.text)
                size += len(doc.text.encode("utf-8"))
        its = alive
    return texts


# --------------------------------------------------------------------------------------------
# (a) Tokeniser, one process
# --------------------------------------------------------------------------------------------

def _batched(texts: list[str], n: int) -> list[list[str]]:
    return [texts[i:i + n] for i in range(0, len(texts), n)]


def encode_variants(tok) -> dict[str, tuple[Callable[[list[str]], Any], bool]]:
    """name -> (encode all texts, Rust threads on). The first is what ``prepare`` does (our
    wrapper: ``encode_batch_fast`` without special tokens, ids as lists, 256 documents per
    flush, workers run with TOKENIZERS_PARALLELISM=false). A function returning None keeps
    the Encoding objects only (the cost of making id lists) and is not compared."""
    be = tok.backend

    def wrapper(n: int) -> Callable[[list[str]], Any]:
        return lambda texts: [ids for b in _batched(texts, n) for ids in tok.encode_batch(b)]

    v: dict[str, tuple[Callable[[list[str]], Any], bool]] = {
        "wrapper encode_batch, 256 docs/call (= prepare)": (wrapper(256), False),
        "wrapper encode_batch, 4096 docs/call": (wrapper(4096), False),
        "wrapper encode_batch, 4096 docs/call, Rust threads": (wrapper(4096), True),
        "backend encode_batch (with offsets), 256 docs/call": (
            lambda texts: [e.ids for b in _batched(texts, 256)
                           for e in be.encode_batch(b, add_special_tokens=False)], False),
        "backend encode, 1 doc/call": (
            lambda texts: [be.encode(t, add_special_tokens=False).ids for t in texts], False),
    }
    if hasattr(be, "encode_batch_fast"):
        def encodings_only(texts: list[str]) -> None:
            for b in _batched(texts, 256):
                be.encode_batch_fast(b, add_special_tokens=False)

        v["backend encode_batch_fast, no id lists, 256 docs/call"] = (encodings_only, False)
    return v


def bench_tokenizer(tok, texts: list[str], reps: int) -> tuple[dict[str, Any], list]:
    """Each variant ``reps`` times, interleaved (machine noise hits all alike), the BPE cache
    cleared before each run (``prepare`` sees every document once); medians. Returns the
    result and the reference ids (first variant)."""
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    variants = encode_variants(tok)
    clear = getattr(tok.backend.model, "_clear_cache", lambda: None)
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    same: dict[str, bool] = {}
    ref: list | None = None
    saved = os.environ.get(PAR_ENV)
    try:
        for rep in range(reps):
            for name, (fn, threads) in variants.items():
                os.environ[PAR_ENV] = "true" if threads else "false"  # read at every call
                clear()
                with Meter() as m:
                    ids = fn(texts)
                runs[name].append((m.cpu, m.wall))
                if rep == 0 and ids is not None:
                    ref = ids if ref is None else ref
                    same[name] = ids == ref
    finally:
        if saved is None:
            os.environ.pop(PAR_ENV, None)
        else:
            os.environ[PAR_ENV] = saved
    out = {name: dict(rates(mb, statistics.median(c for c, _ in r),
                            statistics.median(w for _, w in r)), same_ids=same.get(name))
           for name, r in runs.items()}
    assert ref is not None
    tokens = sum(len(x) for x in ref)
    return {"sample_MB": round(mb, 3), "documents": len(texts), "reps": reps,
            "tokens_per_byte": round(tokens / (mb * 1e6), 4), "variants": out}, ref


def bench_stages(tok_dir: Path, inputs: dict[str, list], langs: list[str], texts: list[str],
                 ids: list) -> dict[str, Any]:
    """The rest of a worker's per-document work, in MB of text per CPU-second, and the
    tokenizer load (CPU-s, paid once per worker process)."""
    from mmbert.data.sources import iter_input, nfc
    from mmbert.tokenizer import load_tokenizer

    res: dict[str, Any] = {}
    file_mb = input_mb(inputs, langs)
    with Meter() as m:
        for lang in langs:
            for inp in inputs[lang]:
                for _ in iter_input(inp, lang):
                    pass
    res["read+split+NFC (iter_input, file MB)"] = rates(file_mb, m.cpu, m.wall)
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    with Meter() as m:
        for t in texts:
            nfc(t)
    res["nfc check"] = rates(mb, m.cpu, m.wall)
    with Meter() as m:
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype="<u4",
                           count=sum(len(x) for x in ids))
    res["flatten np.fromiter"] = rates(mb, m.cpu, m.wall)
    with Meter() as m:
        hashlib.sha256(flat.tobytes()).hexdigest()
    res["sha256 of the ids"] = rates(mb, m.cpu, m.wall)
    with Meter() as m:
        load_tokenizer(tok_dir)
    res["tokenizer_load_cpu_s"] = round(m.cpu, 3)
    return res


# --------------------------------------------------------------------------------------------
# (b) prepare end to end, (c) loader
# --------------------------------------------------------------------------------------------

def manifest_totals(shards: Path) -> tuple[int, int]:
    """Languages and tokens recorded in ``shards/manifest.json`` (read from the file: what
    ``prepare`` returns depends on the executor)."""
    langs = json.loads((shards / "manifest.json").read_text(encoding="utf-8"))["languages"]
    return len(langs), sum(int(sp["tokens"]) for e in langs.values()
                           for sp in e["splits"].values())


def manifest_write_ms(shards: Path) -> float | None:
    """CPU ms of one rewrite of the finished manifest (``prepare`` rewrites it as languages
    finish); None if the manifest API is not there."""
    try:
        from mmbert.data.shards import Manifest

        man = Manifest.read(shards)
    except (ImportError, AttributeError):
        return None
    probe = shards.parent / f".{shards.name}.manifest-probe"
    probe.mkdir(parents=True, exist_ok=True)
    try:
        with Meter() as m:
            for _ in range(5):
                man.write(probe)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return round(m.cpu / 5 * 1000, 2)


def bench_prepare(corpus: Path, tok_dir: Path, shards: Path, workers: int,
                  langs: list[str] | None, executor: str | None, file_mb: float) -> dict[str, Any]:
    """One ``prepare`` into a fresh ``shards``; CPU of this process and its waited children
    (daemons an executor may start, e.g. ray's, are not counted)."""
    from mmbert.data.shards import prepare

    kw: dict[str, Any] = {"workers": workers, "progress": False}
    if langs is not None:
        kw["languages"] = langs
    if executor:
        if "executor" not in inspect.signature(prepare).parameters:
            raise SystemExit("--executor: this prepare() has no executor= keyword")
        kw["executor"] = executor
    shutil.rmtree(shards, ignore_errors=True)
    with Meter() as m:
        prepare(corpus, tok_dir, shards, **kw)
    n_lang, tokens = manifest_totals(shards)
    return {"workers": workers, "executor": executor or "default", "languages": n_lang,
            "input_MB": round(file_mb, 3), "tokens": tokens,
            **rates(file_mb, m.cpu, m.wall), "cpu_parent_s": round(m.cpu_self, 3),
            "cpu_children_s": round(m.cpu_children, 3),
            "manifest_write_ms": manifest_write_ms(shards), "loadavg_end": os.getloadavg()}


def bench_loader(shards: Path, seq_len: int, batch_tokens: int, seconds: float) -> dict:
    """``MLMLoader`` tokens/s (sample + pack + mask, torch tensors) over all languages and 20;
    a failure is recorded, not raised (this part is kept while the loader API holds)."""
    res: dict[str, Any] = {}
    for langs, tau, ratio in (("all", 0.3, 0.05), (20, 0.7, 0.3)):
        key = f"languages={langs},tau={tau},mask={ratio}"
        try:
            from mmbert.data.loader import MLMLoader

            ld = MLMLoader(shards, languages=langs, tau=tau, seq_len=seq_len,
                           batch_tokens=batch_tokens, mask_ratio=ratio, seed=0)
            next(ld)
            n, t0 = 0, time.perf_counter()
            with Meter() as m:
                while time.perf_counter() - t0 < seconds:
                    n += next(ld).num_tokens
        except Exception as e:  # noqa: BLE001 - reported in the output instead
            res[key] = {"error": f"{type(e).__name__}: {e}"[:300]}
            continue
        res[key] = {"languages": len(ld.languages), "tokens_per_s_wall": round(n / m.wall),
                    "tokens_per_cpu_s": round(n / max(m.cpu, 1e-9))}
    return res


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def _fmt(name: str, r: dict[str, Any]) -> str:
    same = "" if r.get("same_ids") in (None, True) else "  DIFFERENT IDS"
    return (f"  {name:55s} {r['MB_per_cpu_s']:7.2f} MB/cpu-s  {r['MB_per_s_wall']:7.2f} MB/s "
            f"wall{same}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench-data")
    ap.add_argument("--corpus", default=None, help="corpus (default: the cached demo corpus)")
    ap.add_argument("--tokenizer", default="gemma", help="'gemma' or a tokenizer directory")
    ap.add_argument("--languages", type=int, default=None, help="N languages (default all)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--executor", default=None, help="passed to prepare(executor=) if given")
    ap.add_argument("--sample-mb", type=float, default=4.0, help="tokeniser sample size")
    ap.add_argument("--reps", type=int, default=3, help="runs per tokeniser variant (median)")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--seconds", type=float, default=2.0, help="loader time per case; 0: skip")
    return ap.parse_args()


def print_tokenizer(t: dict[str, Any], stages: dict[str, Any], n_langs: int) -> None:
    print(f"(a) tokeniser, one process: {t['sample_MB']:.1f} MB sample, {t['documents']} "
          f"documents of {n_langs} languages, {t['tokens_per_byte']:.3f} tokens/byte; median "
          f"of {t['reps']} runs")
    for name, r in t["variants"].items():
        print(_fmt(name, r))
    print("    other per-document stages:")
    for name, r in stages.items():
        if isinstance(r, dict):
            print(_fmt(name, r))
    print(f"    tokenizer load: {stages['tokenizer_load_cpu_s']:.2f} CPU-s per process")


def print_prepare(p: dict[str, Any]) -> None:
    ex = "" if p["executor"] == "default" else f" --executor {p['executor']}"
    print(f"(b) prepare --workers {p['workers']}{ex}: {p['languages']} languages, "
          f"{p['input_MB']:.1f} MB -> {p['tokens'] / 1e6:.2f} M tokens in {p['wall_s']:.1f} s: "
          f"{p['MB_per_cpu_s']:.2f} MB/cpu-s, {p['MB_per_s_wall']:.2f} MB/s wall (CPU: parent "
          f"{p['cpu_parent_s']:.1f} s, workers {p['cpu_children_s']:.1f} s); one manifest "
          f"rewrite {p['manifest_write_ms']} ms")


def main() -> None:
    a = parse_args()
    from mmbert.data.sources import scan_corpus
    from mmbert.tokenizer import load_tokenizer

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"system": system_info()}
    s = res["system"]
    print(f"CPU: {s['cpu']} (avx512_bf16: {'yes' if s['avx512_bf16'] else 'no'}), "
          f"{s['cores']} cores, load average {s['loadavg_start'][0]:.1f}; tokenizers "
          f"{s['tokenizers']}")
    corpus, tok_dir = resolve_inputs(a, out)
    inputs = scan_corpus(corpus)
    langs = pick_languages(inputs, a.languages)
    tok = load_tokenizer(tok_dir)
    res["inputs"] = {"corpus": str(corpus), "tokenizer": str(tok_dir),
                     "vocab_size": tok.vocab_size, "languages": len(langs)}

    texts = sample_texts(inputs, langs, a.sample_mb)
    res["tokenizer"], ids = bench_tokenizer(tok, texts, a.reps)
    res["stages"] = bench_stages(tok_dir, inputs, langs, texts, ids)
    del ids, texts
    print_tokenizer(res["tokenizer"], res["stages"], len(langs))

    shards = out / f"shards-{tok_dir.name}"
    subset = None if len(langs) == len(inputs) else langs
    res["prepare"] = bench_prepare(corpus, tok_dir, shards, a.workers, subset, a.executor,
                                   input_mb(inputs, langs))
    print_prepare(res["prepare"])
    if a.seconds > 0:
        res["loader"] = bench_loader(shards, a.seq_len, a.batch_tokens, a.seconds)
        print(f"(c) loader (seq {a.seq_len}, {a.batch_tokens} tokens/batch):")
        for key, r in res["loader"].items():
            print(f"  {key}: " + (r["error"] if "error" in r else
                                  f"{r['languages']} languages, "
                                  f"{r['tokens_per_s_wall'] / 1e6:.2f} M tokens/s"))
    (out / "bench_data.json").write_text(json.dumps(res, indent=1))
    first = next(iter(res["tokenizer"]["variants"].values()))
    print(f"HEADLINE ({s['cpu']}, {s['cores']} cores): tokeniser as prepare "
          f"{first['MB_per_cpu_s']:.2f} MB/cpu-s; prepare --workers {a.workers} "
          f"{res['prepare']['MB_per_cpu_s']:.2f} MB/cpu-s, "
          f"{res['prepare']['MB_per_s_wall']:.2f} MB/s wall -> {out / 'bench_data.json'}")


if __name__ == "__main__":
    main()
