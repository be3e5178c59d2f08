"""Megatron-LM's and Hetu-Galvatron's spellings parse to the same model, plan and run settings as
ours (table-driven), their example command lines train, and the Megatron flags this project does
not implement are refused in one line naming the nearest one."""
import json

import pytest

from megatron_galvatron.model.config import config_from_args
from megatron_galvatron.training.arguments import build_parser, build_plan, training_config
from tests.megatron_log import lm_losses
from tests.pretrain_in_process import pretrain_in_process

MODEL = ["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
         "--vocab-size", "64"]
WORLD = 4

# (their spelling, ours): each pair must give the same model config, plan and training settings.
SAME = [
    ("--tensor-model-parallel-size 2", "--global-tp-deg 2"),
    ("--pipeline-model-parallel-size 2", "--pp-deg 2"),
    ("--pp_deg 2 --global_tp_deg 2 --global_tp_consec 0", "--pp-deg 2 --global-tp-deg 2 --global-tp-consec 0"),
    ("--global_tp_deg -1 --global_tp_consec -1", ""),
    ("--pp_deg 2 --chunks -1 --global_train_batch_size 16", "--pp-deg 2 --chunks 2 --global-batch-size 16"),
    ("--chunks -1", "--chunks 1"),
    ("--default_dp_type zero3 --embed_sdp 1 --vocab_tp 2 --global_tp_deg 2",
     "--default-dp-type zero3 --vocab-sdp 1 --vocab-tp 2 --global-tp-deg 2"),
    ("--global_checkpoint 1 --pipeline_type gpipe --sequence_parallel --global_tp_deg 2",
     "--global-checkpoint 1 --pipeline-type gpipe --sequence-parallel --global-tp-deg 2"),
    ("--recompute-granularity full", "--global-checkpoint 1"),
    ("--recompute-granularity full --recompute-method uniform --recompute-num-layers 1", "--global-checkpoint 1"),
    ("--use-distributed-optimizer", "--default-dp-type zero2"),
    ("--mixed_precision bf16", "--bf16"),
    ("--mixed_precision fp32", ""),
    ("--train-samples 80 --global-batch-size 8", "--train-iters 10 --global-batch-size 8"),
    ("--train-samples 85 --global-batch-size 8", "--train-iters 10 --global-batch-size 8"),
    ("--lr-warmup-fraction 0.25 --lr-decay-iters 8", "--lr-warmup-iters 2 --lr-decay-iters 8"),
    ("--adam_weight_decay 0.1", "--weight-decay 0.1"),
    ("--attention-backend auto", "--attention-backend default"),
    ("--attention-backend fused", "--attention-backend cudnn"),
    ("--attention-backend unfused", "--attention-backend math"),
    ("--swiglu --normalization RMSNorm --position-embedding-type rope --untie-embeddings-and-output-weights "
     "--disable-bias-linear", "--model-family llama"),
    ("--model-family llama --group-query-attention --num-query-groups 2", "--model-family llama --num-query-groups 2"),
    ("--use-mcore-models --transformer-impl local --no-masked-softmax-fusion --overlap-grad-reduce "
     "--initialize_on_meta 1 --set_model_config_manually 1", ""),
]


def _everything(argv):
    args = build_parser().parse_args(MODEL + argv)
    cfg = config_from_args(args)
    plan = build_plan(args, cfg, WORLD)
    return cfg, plan.to_dict(), training_config(args)


@pytest.mark.parametrize("theirs,ours", SAME, ids=[t for t, _ in SAME])
def test_alias_parses_as_its_native_spelling(theirs, ours):
    assert _everything(theirs.split()) == _everything(ours.split())


def test_recompute_block_checkpoints_the_first_layers_of_each_stage():
    _, plan, _ = _everything("--pp-deg 2 --recompute-granularity full --recompute-method block "
                             "--recompute-num-layers 1".split())
    assert [s["checkpoint"] for s in plan["layers"]] == [True, False, True, False]


@pytest.mark.parametrize("argv,words", [
    ("--fp16", "--fp16 is not supported here: use --bf16"),
    ("--mixed_precision fp16", "use --mixed_precision bf16"),
    ("--recompute-granularity selective", "use --recompute-granularity full"),
    ("--recompute-method block", "need --recompute-granularity full"),
    ("--context-parallel-size 2", "use --sequence-parallel"),
    ("--num-layers-per-virtual-pipeline-stage 2", "use --pipeline-type 1f1b"),
    ("--train-samples 16 --train-iters 2", "give one"),
    ("--lr-warmup-fraction 0.1 --lr-warmup-iters 2", "give one"),
    ("--global-tp-deg -1", "--global-tp-deg"),  # -1 is "auto" in Galvatron's spelling only
    ("--vocab-file v.json", "needs --tokenizer-type"),
])
def test_unsupported_is_one_line_naming_the_nearest(argv, words):
    rc, out, err = pretrain_in_process(MODEL + argv.split())
    assert rc == 2 and len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err, err


def _losses(out):
    return list(lm_losses(out).values())


# Megatron-LM's GPT example (examples/gpt3), shrunk: every flag in its spelling.
MEGATRON = ("--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --max-position-embeddings 16 "
            "--attention-backend auto --micro-batch-size 2 --global-batch-size 4 --train-samples 8 "
            "--weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95 --init-method-std 0.006 --clip-grad 1.0 "
            "--lr 6.0e-5 --lr-decay-style cosine --min-lr 6.0e-6 --lr-warmup-fraction .5 --lr-decay-iters 2 "
            "--tensor-model-parallel-size 1 --pipeline-model-parallel-size 1 --use-distributed-optimizer "
            "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1 "
            "--swiglu --normalization RMSNorm --position-embedding-type rope --untie-embeddings-and-output-weights "
            "--disable-bias-linear --group-query-attention --num-query-groups 2 --use-mcore-models "
            "--transformer-impl local --mock-data --vocab-size 64 --log-interval 1 --split 949,50,1")
MEGATRON_NATIVE = ("--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --micro-batch-size 2 "
                   "--global-batch-size 4 --train-iters 2 --weight-decay 0.1 --init-method-std 0.006 --lr 6.0e-5 "
                   "--min-lr 6.0e-6 --lr-warmup-iters 1 --lr-decay-iters 2 --default-dp-type zero2 "
                   "--global-checkpoint 1 --model-family llama --num-query-groups 2 --mock-data --vocab-size 64")
# A Hetu-Galvatron script's PARALLEL_ARGS block, shrunk to one rank.
GALVATRON = ("--pp_deg 1 --global_tp_deg -1 --global_tp_consec -1 --sdp 1 --global_checkpoint 1 --chunks -1 "
             "--pipeline_type pipedream_flush --default_dp_type zero2 --mixed_precision fp32 "
             "--global_train_batch_size 4 --adam_weight_decay 0.1 --initialize_on_meta 1 "
             "--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --vocab-size 64 "
             "--mock-data --train-iters 2")
GALVATRON_NATIVE = ("--sdp 1 --global-checkpoint 1 --chunks 1 --default-dp-type zero2 --global-batch-size 4 "
                    "--weight-decay 0.1 --num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 "
                    "--vocab-size 64 --mock-data --train-iters 2")


@pytest.mark.parametrize("theirs,ours", [(MEGATRON, MEGATRON_NATIVE), (GALVATRON, GALVATRON_NATIVE)],
                         ids=["megatron", "galvatron"])
def test_example_command_line_trains_as_our_spelling(theirs, ours):
    runs = [pretrain_in_process(argv.split()) for argv in (theirs, ours)]
    for rc, out, err in runs:
        assert rc == 0, err
    losses = [_losses(out) for _, out, _ in runs]
    assert len(losses[0]) == 2 and losses[0] == losses[1], losses


def test_tokenizer_sets_the_vocabulary(tmp_path):
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({f"t{i}": i for i in range(100)}))
    merges = tmp_path / "merges.txt"
    merges.write_text("#version: 0.2\n")
    files = ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", str(vocab), "--merge-file", str(merges)]
    args = build_parser().parse_args(["--num-layers", "2"] + files)
    assert config_from_args(args).vocab_size == 100
    null = build_parser().parse_args(["--tokenizer-type", "NullTokenizer", "--vocab-size", "50"])
    assert null.vocab_size == 51  # Megatron-LM's NullTokenizer adds the end-of-document id
    rc, _, err = pretrain_in_process(["--vocab-size", "120"] + files)
    assert rc == 2 and "disagrees with --tokenizer-type GPT2BPETokenizer's 100 ids" in err, err
    rc, _, err = pretrain_in_process(files[:2] + ["--merge-file", str(merges)])
    assert rc == 2 and "needs --vocab-file" in err, err
