"""Kernel-time breakdown: categories and the busy-time union."""
from megatron_galvatron.benchmark.breakdown import busy_time, category, summarize


def test_categories():
    assert category("ncclDevKernel_AllGather_RING_LL") == "collective"
    assert category("pytorch_flash::flash_bwd_kernel<Flash_bwd_kernel_traits>") == "attention"
    assert category("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "attention"
    assert category("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n") == "matmul"
    assert category("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NTN") == "matmul"
    assert category("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel") == "norm"
    assert category("triton_per_fused__to_copy_add_native_layer_norm_0") == "norm"
    assert category("triton_poi_fused_gelu_1") == "compiled (triton)"
    assert category("void at::native::vectorized_elementwise_kernel<4, GeluCUDAKernelImpl>") == "elementwise"
    assert category("void multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer"
    assert category("something_else") == "other"


def test_busy_time_is_the_union():
    assert busy_time([(0, 10), (5, 15), (20, 30), (21, 22)]) == 25
    assert busy_time([]) == 0


def test_summarize():
    k = [("gemm_a", 0, 10), ("ncclKernel", 0, 40), ("elementwise_x", 12, 14), ("gemm_a", 30, 40)]
    b = summarize(k)
    assert b.window_us == 40 and b.compute_busy_us == 22
    assert b.by_category == {"matmul": 20, "collective": 40, "elementwise": 2}
    assert b.top[0][0] == "ncclKernel" and b.top[1] == ("gemm_a", 20, 2)
    assert "per step" in b.table(2)


def test_idle_gaps_name_the_kernels_around_them():
    k = [("gemm_a", 0, 100), ("ncclKernel", 90, 500), ("gemm_b", 150, 300), ("elementwise_c", 290, 310),
         ("gemm_d", 1400, 1500)]
    b = summarize(k)
    assert [(g.at_us, g.length_us, g.before, g.after) for g in b.gaps] == [
        (100, 50, "gemm_a", "gemm_b"), (310, 1090, "elementwise_c", "gemm_d")]
    assert b.compute_busy_us + sum(g.length_us for g in b.gaps) == b.window_us
    table = b.gap_table(1)
    assert "elementwise_c -> gemm_d" in table.splitlines()[-2]


def test_kernels_of_skips_gpu_annotations():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from megatron_galvatron.benchmark.breakdown import kernels_of

    def ev(name, s, e, annotation=False):
        return SimpleNamespace(name=name, device_type=DeviceType.CUDA, is_user_annotation=annotation,
                               time_range=SimpleNamespace(start=s, end=e))
    prof = SimpleNamespace(events=lambda: [ev("gemm", 0, 5), ev("FSDP::all_gather", 0, 50, True), ev("idle", 6, 6)])
    assert kernels_of(prof) == [("gemm", 0.0, 5.0)]


def test_launchers_names_the_host_code():
    from types import SimpleNamespace

    from megatron_galvatron.benchmark.breakdown import launchers
    step = SimpleNamespace(name="train_step", cpu_parent=None, kernels=[], stack=[])
    copy = SimpleNamespace(name="aten::copy_", cpu_parent=step, stack=["train.py(120): _microbatches", "torch/x.py(1): f"],
                           kernels=[SimpleNamespace(name="Memcpy HtoD (Pageable -> Device)", duration=30.0)])
    gemm = SimpleNamespace(name="aten::mm", cpu_parent=step, stack=[], kernels=[SimpleNamespace(name="nvjet", duration=9.0)])
    full = SimpleNamespace(name="Command Buffer Full", cpu_parent=copy, stack=[], kernels=copy.kernels)
    text = launchers(SimpleNamespace(events=lambda: [step, copy, copy, gemm, full]), "memcpy htod")
    assert "2 x, 0.06 ms: aten::copy_ < train_step" in text
    assert "train.py(120): _microbatches" in text and "torch/x.py" not in text and "aten::mm" not in text
