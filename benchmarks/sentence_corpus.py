"""The default corpus as single sentences, for distilling students served on short texts.

MR, the fidelity set, is single review sentences (about 21 words); the default corpus is
mostly paragraphs. This writes every sentence of 4 to 50 words of the default corpus (BBC
News, Guardian headlines, speeches, debates, Hamlet; never MR), split at line ends and at
`.`, `!` or `?` followed by a capital or a quote, in a seeded shuffle, as JSONL records
{"text": ...} that `tf-minilm prepare` reads. The split is a plain regular expression:
none of the kept libraries splits sentences without a model download, and the measurements
it serves (docs/base-size.md#sentence-rows-and-the-learning-rate-of-a-pruned-start) need
only rows of sentence length, not linguistic sentence boundaries.

    .venv/bin/python benchmarks/sentence_corpus.py --output runs/sentences.jsonl \
        --max-sentences 20000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
MIN_WORDS, MAX_WORDS = 4, 50


def sentences(document: str) -> list[str]:
    """The sentences of 4 to 50 words of one document, in order."""
    found = []
    for line in document.split("\n"):
        for sentence in SENTENCE_END.split(line.strip()):
            if MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
                found.append(sentence)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="JSONL file to write (a new file)")
    parser.add_argument("--max-sentences", type=int, default=None,
                        help="keep the first N of the shuffle (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from tf_minilm.data.corpus import (
        DEFAULT_CORPUS_TEXT_COLUMN,
        ReadOptions,
        default_corpus_paths,
        iter_documents,
    )
    from tf_minilm.fileio import write_text_atomic

    if os.path.exists(args.output):
        raise SystemExit(f"sentence_corpus: --output {args.output} exists; choose a new file")
    found = [sentence for document in iter_documents(
        default_corpus_paths(), ReadOptions(text_column=DEFAULT_CORPUS_TEXT_COLUMN))
        for sentence in sentences(document)]
    random.Random(args.seed).shuffle(found)
    kept = found[:args.max_sentences]
    write_text_atomic(args.output, "".join(json.dumps({"text": s}) + "\n" for s in kept))
    words = sum(len(s.split()) for s in kept)
    print(f"{args.output}: {len(kept)} of {len(found)} sentences, "
          f"{words / max(1, len(kept)):.1f} words on average")
    return 0


if __name__ == "__main__":
    sys.exit(main())
