"""A real text corpus on every machine: the Python standard library's sources as JSON lines, and a
SentencePiece model trained on them, ready for tools/preprocess_data.py.

    python tools/stdlib_corpus.py --out-dir corpus/ [--vocab-size 8192]
    python tools/preprocess_data.py --input corpus/stdlib.jsonl --output-prefix corpus/stdlib \\
        --tokenizer-type SentencePieceTokenizer --tokenizer-model corpus/stdlib_spm.model --append-eod
"""
import argparse
import glob
import json
import os
import sysconfig

from megatron_galvatron.errors import UserError, exit_on_user_error

PROG = "stdlib_corpus.py"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"], help="default: this interpreter's")
    args = p.parse_args(argv)
    with exit_on_user_error(PROG):
        if args.vocab_size < 256:
            raise UserError(f"--vocab-size {args.vocab_size} must be >= 256 (byte fallback needs 256 ids)")
        files = sorted(glob.glob(os.path.join(args.stdlib, "**", "*.py"), recursive=True))
        if not files:
            raise UserError(f"--stdlib {args.stdlib}: no .py files there")
        os.makedirs(args.out_dir, exist_ok=True)
        corpus, text = os.path.join(args.out_dir, "stdlib.jsonl"), os.path.join(args.out_dir, "spm_input.txt")
        chars = 0
        with open(corpus, "w") as out, open(text, "w") as raw:
            for f in files:
                try:
                    t = open(f, encoding="utf-8").read()
                except (UnicodeDecodeError, OSError):
                    continue  # a few test data files are not UTF-8 text
                out.write(json.dumps({"text": t}) + "\n")
                raw.write(t + "\n")
                chars += len(t)
        import sentencepiece as spm
        spm.SentencePieceTrainer.train(input=text, model_prefix=os.path.join(args.out_dir, "stdlib_spm"),
                                       vocab_size=args.vocab_size, model_type="bpe", character_coverage=1.0,
                                       byte_fallback=True, input_sentence_size=400000, shuffle_input_sentence=True,
                                       max_sentence_length=8192, num_threads=os.cpu_count() or 1, minloglevel=2)
        os.remove(text)
        print(f"wrote {corpus} ({len(files)} files, {chars:,} characters) and "
              f"{os.path.join(args.out_dir, 'stdlib_spm.model')} (vocab {args.vocab_size})")


if __name__ == "__main__":
    main()
