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
