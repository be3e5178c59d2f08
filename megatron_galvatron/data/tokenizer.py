"""Tokenizers for preprocessing: SentencePiece, Hugging Face tokenizer.json, and a null one.

Each has .tokenize(text) -> list[int], .detokenize(ids) -> str, .vocab_size and .eod (the id
appended after each document, or None when the model defines no end-of-text token).
"""
from __future__ import annotations

import os

from megatron_galvatron.data.errors import DataError

TOKENIZER_TYPES = ("SentencePieceTokenizer", "HuggingFaceTokenizer", "NullTokenizer")

# tried in order; the first present in a tokenizer.json's vocabulary is its end-of-document id
_HF_EOD_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[SEP]")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _require_file(path: str | None, what: str) -> str:
    if not path:
        raise DataError(f"{what} needs --tokenizer-model PATH")
    if not os.path.isfile(path):
        raise DataError(f"tokenizer model {path} not found")
    return path


class SentencePieceTokenizer:
    def __init__(self, model_path: str):
        import sentencepiece

        _require_file(model_path, "SentencePieceTokenizer")
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
        except Exception as e:  # sentencepiece raises OSError or RuntimeError depending on the damage
            raise DataError(f"tokenizer model {model_path} is not a valid SentencePiece model: {_first_line(e)}")
        self.model_path = model_path
        self.vocab_size = int(self._sp.get_piece_size())
        eos = int(self._sp.eos_id())
        self.eod = eos if eos >= 0 else None

    def tokenize(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def detokenize(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])


class HuggingFaceTokenizer:
    """A `tokenizers` tokenizer.json (or a directory holding one); no transformers needed."""

    def __init__(self, model_path: str):
        if model_path and os.path.isdir(model_path):
            model_path = os.path.join(model_path, "tokenizer.json")
        _require_file(model_path, "HuggingFaceTokenizer")
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise DataError("HuggingFaceTokenizer needs the `tokenizers` package: pip install tokenizers")
        try:
            self._tok = Tokenizer.from_file(model_path)
        except Exception as e:  # the Rust side raises a bare Exception for any parse failure
            raise DataError(f"tokenizer model {model_path} is not a valid tokenizer.json: {_first_line(e)}")
        self.model_path = model_path
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.eod = None
        for token in _HF_EOD_CANDIDATES:
            tid = self._tok.token_to_id(token)
            if tid is not None:
                self.eod = int(tid)
                break

    def tokenize(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def detokenize(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


class NullTokenizer:
    """Text is whitespace-separated integer ids in [0, vocab_size); eod is vocab_size (as Megatron's),
    so the id space, and .vocab_size, is one larger than the argument."""

    def __init__(self, vocab_size: int | None):
        if vocab_size is None or vocab_size < 1:
            raise DataError("NullTokenizer needs --vocab-size N (N >= 1)")
        self._n = int(vocab_size)
        self.eod = self._n
        self.vocab_size = self._n + 1

    def tokenize(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            try:
                i = int(word)
            except ValueError:
                raise DataError(f"NullTokenizer reads integer ids, got {word[:40]!r}")
            if not 0 <= i < self._n:
                raise DataError(f"NullTokenizer: id {i} is outside [0, {self._n}); raise --vocab-size")
            ids.append(i)
        return ids

    def detokenize(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)


def build_tokenizer(tokenizer_type: str, tokenizer_model: str | None = None, vocab_size: int | None = None):
    """tokenizer_model is the .model / tokenizer.json path; vocab_size is for NullTokenizer only."""
    if tokenizer_type == "SentencePieceTokenizer":
        return SentencePieceTokenizer(tokenizer_model)
    if tokenizer_type == "HuggingFaceTokenizer":
        return HuggingFaceTokenizer(tokenizer_model)
    if tokenizer_type == "NullTokenizer":
        return NullTokenizer(vocab_size)
    raise DataError(f"unknown tokenizer type {tokenizer_type!r}; choose one of {', '.join(TOKENIZER_TYPES)}")


# What training accepts as --tokenizer-type (Megatron-LM's names): only the vocabulary size is needed there.
TRAINING_TOKENIZER_TYPES = ("GPT2BPETokenizer",) + TOKENIZER_TYPES


def vocabulary_size(tokenizer_type: str, tokenizer_model: str | None = None, vocab_file: str | None = None,
                    merge_file: str | None = None, vocab_size: int | None = None) -> int:
    """The number of token ids the tokenizer produces: the model's vocabulary before padding.
    GPT2BPETokenizer reads Megatron-LM's files (vocab JSON and merges); the others as build_tokenizer."""
    if tokenizer_type != "GPT2BPETokenizer":
        return build_tokenizer(tokenizer_type, tokenizer_model, vocab_size).vocab_size
    import json
    for flag, path in (("--vocab-file", vocab_file), ("--merge-file", merge_file)):
        if not path:
            raise DataError(f"GPT2BPETokenizer needs {flag} PATH (the GPT-2 vocab.json and merges.txt)")
        if not os.path.isfile(path):
            raise DataError(f"{flag} {path} not found")
    try:
        with open(vocab_file, encoding="utf-8") as f:
            encoder = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"--vocab-file {vocab_file} is not a GPT-2 vocab JSON: {_first_line(e)}")
    if not isinstance(encoder, dict) or not encoder:
        raise DataError(f"--vocab-file {vocab_file} is not a GPT-2 vocab JSON (token -> id object)")
    return len(encoder)
