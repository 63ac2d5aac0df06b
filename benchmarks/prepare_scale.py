"""Memory and speed of the data path as the corpus grows: `prepare`, `distill --data`, and the
in-memory path it replaced, side by side.

Builds corpora of about 10 M and 100 M tokens from the BBC News articles (the default
corpus, ~1.1 M tokens), each copy of the articles in its own shuffled order, as JSONL
files; then, each in a child process whose peak resident memory (the whole process tree,
sampled every 50 ms from /proc) is measured:

- `tf-minilm prepare` with 1 worker (in-process tokenizer, its own threads) and 2 workers;
- the in-memory path of before (`pack_documents` + `split_train_eval` into int32 arrays,
  what `distill --corpus` held in RAM);
- `tf-minilm distill --data DIR` for a few steps (peak memory, time to the first step),
  and `tf-minilm distill --corpus` on the 10 M corpus (prepares into the run first).

    .venv/bin/python benchmarks/prepare_scale.py --workdir /tmp/prepare-scale --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

IN_MEMORY = """
import sys
sys.path.insert(0, {repo!r})
from tf_minilm.assets import default_teacher_dir
from tf_minilm.data.corpus import ReadOptions, iter_documents
from tf_minilm.data.packing import pack_documents, split_train_eval
from tf_minilm.hf.tokenizer import load_tokenizer
rows = pack_documents(iter_documents({corpus!r}, ReadOptions()), load_tokenizer(default_teacher_dir()),
                      max_seq_len=64, packing="per-document")
train, held = split_train_eval(rows, 0.01, 0)
print(len(train), len(held), rows.num_tokens)
"""


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and all its descendants, from /proc."""
    total, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            with open(f"/proc/{current}/status", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", encoding="ascii") as handle:
                    todo += [int(c) for c in handle.read().split()]
        except (OSError, ValueError):
            continue
    return total


def measured(command: list[str], log: str, first_step: str | None = None) -> dict[str, float]:
    """Run `command`; its wall time, the peak RSS of its process tree and, with
    `first_step` (a run's metrics.jsonl), the time until its first training record."""
    start = time.perf_counter()
    first = None
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss_bytes(proc.pid))
            if first is None and first_step and os.path.exists(first_step) \
                    and os.path.getsize(first_step) > 0:
                first = time.perf_counter() - start
            time.sleep(0.05)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}); see {log}")
    figures = {"seconds": round(time.perf_counter() - start, 2),
               "peak_rss_gb": round(peak / 1e9, 3)}
    if first is not None:
        figures["first_step_s"] = round(first, 2)
    return figures


def build_corpus(folder: str, copies: int) -> str:
    """`copies` JSONL files, each every BBC article once, in its own shuffled order."""
    from tf_minilm.data.corpus import ReadOptions, bbc_news_path, iter_documents

    os.makedirs(folder, exist_ok=True)
    articles = list(iter_documents([bbc_news_path()], ReadOptions(doc_separator="file")))
    for copy in range(copies):
        path = os.path.join(folder, f"part-{copy:04d}.jsonl")
        if os.path.exists(path):
            continue
        order = list(range(len(articles)))
        random.Random(copy).shuffle(order)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            for index in order:
                handle.write(json.dumps({"text": articles[index]}) + "\n")
        os.replace(path + ".tmp", path)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/prepare-scale")
    parser.add_argument("--copies", default="9,90", help="BBC copies of the small and large corpus")
    parser.add_argument("--steps", type=int, default=3, help="distill steps per run")
    parser.add_argument("--eval-fraction", type=float, default=0.001,
                        help="held-out share of the prepared rows (their evaluation at the end "
                             "of each run grows with the corpus; the data path's memory does not)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    python = sys.executable
    cli = [python, "-m", "tf_minilm.cli"]
    sizes = [int(c) for c in args.copies.split(",")]
    results: dict = {"sizes": {}}
    distill_flags = ["--steps", str(args.steps), "--checkpoint-every", "1000", "--log-every", "1",
                     "--max-seq-len", "64"]
    for copies in sizes:
        corpus = build_corpus(os.path.join(args.workdir, f"corpus-{copies}"), copies)
        row: dict = {}
        for workers in (1, 2):
            out = os.path.join(args.workdir, f"data-{copies}-w{workers}")
            if os.path.exists(out):
                subprocess.run(["rm", "-rf", out], check=True)
            row[f"prepare_w{workers}"] = measured(
                cli + ["prepare", corpus, "--output", out, "--workers", str(workers),
                       "--eval-fraction", str(args.eval_fraction), "--no-progress"],
                out + ".log")
        with open(os.path.join(out, "manifest.json"), encoding="utf-8") as handle:
            manifest = json.load(handle)
        row["tokens"] = manifest["tokens"]
        row["rows"] = manifest["rows"]
        for workers in (1, 2):
            row[f"prepare_w{workers}"]["tokens_per_s"] = round(
                manifest["tokens"] / row[f"prepare_w{workers}"]["seconds"])
        row["in_memory"] = measured(
            [python, "-c", IN_MEMORY.format(repo=REPO, corpus=corpus)],
            os.path.join(args.workdir, f"in-memory-{copies}.log"))
        run = os.path.join(args.workdir, f"run-data-{copies}")
        subprocess.run(["rm", "-rf", run], check=True)
        row["distill_data"] = measured(cli + ["distill", "--data", out, "--output", run,
                                              *distill_flags], run + ".log",
                                       os.path.join(run, "metrics.jsonl"))
        if copies == sizes[0]:
            run = os.path.join(args.workdir, f"run-corpus-{copies}")
            subprocess.run(["rm", "-rf", run], check=True)
            row["distill_corpus"] = measured(cli + ["distill", "--corpus", corpus, "--output",
                                                    run, "--eval-fraction",
                                                    str(args.eval_fraction), *distill_flags],
                                             run + ".log",
                                             os.path.join(run, "metrics.jsonl"))
        results["sizes"][copies] = row
        print(json.dumps({copies: row}, indent=1), flush=True)
    small, large = (results["sizes"][c] for c in sizes)
    growth = large["tokens"] / small["tokens"]
    print(f"\ncorpus {small['tokens']:,} -> {large['tokens']:,} tokens ({growth:.1f}x)")
    print(f"{'what':28s} {'small GB':>9s} {'large GB':>9s} {'ratio':>6s} {'small s':>8s} "
          f"{'large s':>8s}")
    for key in ("prepare_w1", "prepare_w2", "in_memory", "distill_data"):
        a, b = small[key], large[key]
        print(f"{key:28s} {a['peak_rss_gb']:9.3f} {b['peak_rss_gb']:9.3f} "
              f"{b['peak_rss_gb'] / a['peak_rss_gb']:6.2f} {a['seconds']:8.1f} {b['seconds']:8.1f}")
    for copies, row in results["sizes"].items():
        print(f"{copies} copies: prepare {row['prepare_w1']['tokens_per_s']:,} tokens/s with 1 "
              f"worker, {row['prepare_w2']['tokens_per_s']:,} with 2 "
              f"({row['prepare_w2']['tokens_per_s'] / row['prepare_w1']['tokens_per_s']:.2f}x)")
    if "distill_corpus" in small:
        print(f"time to the first step on the small corpus: distill --corpus (prepares first) "
              f"{small['distill_corpus'].get('first_step_s')} s, --data "
              f"{small['distill_data'].get('first_step_s')} s")
    if args.json:
        from tf_minilm.fileio import write_json_atomic

        write_json_atomic(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
