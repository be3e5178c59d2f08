"""Tokenize a JSON-lines corpus into Megatron .bin/.idx files, one pair per JSON key.

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \\
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model --append-eod --workers 8

writes data/corpus_text_document.bin/.idx, the prefix that --data-path takes.
"""
import json
import os
from contextlib import ExitStack
from multiprocessing import Pool

import numpy as np

from megatron_galvatron.data.errors import DataError
from megatron_galvatron.data.indexed_dataset import IndexedDatasetWriter, optimal_dtype
from megatron_galvatron.data.tokenizer import TOKENIZER_TYPES, build_tokenizer
from megatron_galvatron.errors import exit_on_user_error
from megatron_galvatron.flag_types import ArgumentParser, int_in, nonempty
from megatron_galvatron.output_paths import check_output_file
from megatron_galvatron.progress import Progress

PROG = "preprocess_data.py"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--input", type=nonempty, required=True, help="JSON-lines file, one document per line")
    p.add_argument("--json-keys", type=nonempty, nargs="+", default=["text"], help="keys to tokenize (default: text)")
    p.add_argument("--output-prefix", type=nonempty, required=True, help="writes PREFIX_{key}_document.bin/.idx")
    p.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    p.add_argument("--tokenizer-model", type=nonempty,
                   help="SentencePiece .model, or tokenizer.json (or its directory)")
    p.add_argument("--vocab-size", type=int_in(1, 2 ** 31 - 1), help="NullTokenizer only: ids lie in [0, N)")
    p.add_argument("--append-eod", action="store_true", help="end every non-empty document with the eod id")
    p.add_argument("--workers", type=int_in(1, 1024), default=1, help="tokenizer processes (default 1)")
    p.add_argument("--chunk-size", type=int_in(1, 10 ** 6), default=64, help="documents handed to a worker at a time")
    return p


class _Encoder:
    """Turns one input line into token arrays, one per key; lives once in each worker."""

    def __init__(self, args, tokenizer=None):
        self.input = args.input
        self.keys = args.json_keys
        self.append_eod = args.append_eod
        self.tokenizer = tokenizer or build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_size)

    def encode(self, item):
        lineno, line = item
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{self.input}:{lineno}: not valid JSON ({e.msg} at column {e.colno})")
        except (RecursionError, ValueError) as e:  # nested too deeply; an integer of too many digits
            raise DataError(f"{self.input}:{lineno}: not a document ({type(e).__name__})")
        if not isinstance(doc, dict):
            raise DataError(f"{self.input}:{lineno}: expected a JSON object, got {type(doc).__name__}")
        out = []
        for key in self.keys:
            if key not in doc:
                raise DataError(f"{self.input}:{lineno}: no key {key!r} (has {sorted(doc)[:8]}); "
                                f"pick keys with --json-keys")
            text = doc[key]
            if not isinstance(text, str):
                raise DataError(f"{self.input}:{lineno}: value of {key!r} is {type(text).__name__}, not a string")
            try:
                ids = self.tokenizer.tokenize(text)
            except DataError as e:  # which document, not only what is wrong with it
                raise DataError(f"{self.input}:{lineno}: {e}")
            if ids and self.append_eod:
                ids = list(ids) + [self.tokenizer.eod]
            out.append(np.asarray(ids, dtype=np.int64))
        return out, len(line.encode("utf-8"))  # the line holds its newline


_worker_encoder = None


def _init_worker(args):
    global _worker_encoder
    _worker_encoder = _Encoder(args)


def _encode_in_worker(item):
    return _worker_encoder.encode(item)


def _numbered_lines(path):
    lineno = 0
    with open(path, encoding="utf-8") as f:
        try:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield lineno, line
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text after line {lineno} ({e.reason})")


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    with exit_on_user_error(PROG):
        preprocess(args)


def preprocess(args) -> None:
    if not os.path.isfile(args.input):
        what = "is a directory" if os.path.isdir(args.input) else \
            "is not a regular file" if os.path.exists(args.input) else "not found"
        raise DataError(f"input {args.input} {what}")
    if len(set(args.json_keys)) != len(args.json_keys):
        raise DataError(f"--json-keys {' '.join(args.json_keys)} names a key twice")
    prefixes = [f"{args.output_prefix}_{key}_document" for key in args.json_keys]
    for p in prefixes:  # before the tokenizing, which takes a while
        check_output_file("--output-prefix", p + ".bin")
        check_output_file("--output-prefix", p + ".idx")
    tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_size)
    if args.append_eod and tokenizer.eod is None:
        raise DataError(f"--append-eod: tokenizer {args.tokenizer_model} defines no end-of-text token")
    dtype = optimal_dtype(tokenizer.vocab_size)

    docs = 0
    tokens = [0] * len(prefixes)
    with ExitStack() as stack:
        writers = [stack.enter_context(IndexedDatasetWriter(p, dtype)) for p in prefixes]
        bar = stack.enter_context(Progress(os.path.getsize(args.input), "tokenizing", unit="B", unit_scale=True))
        if args.workers == 1:
            encoder = _Encoder(args, tokenizer)
            results = map(encoder.encode, _numbered_lines(args.input))
        else:
            pool = stack.enter_context(Pool(args.workers, initializer=_init_worker, initargs=(args,)))
            results = pool.imap(_encode_in_worker, _numbered_lines(args.input), chunksize=args.chunk_size)
        for arrays, nbytes in results:
            for k, (writer, ids) in enumerate(zip(writers, arrays)):
                writer.add_document(ids)
                tokens[k] += len(ids)
            docs += 1
            bar.update(nbytes)
    for prefix, n in zip(prefixes, tokens):
        print(f"{prefix}.bin/.idx: {docs} documents, {n} tokens, dtype {dtype}, vocab {tokenizer.vocab_size}")


if __name__ == "__main__":
    main()
