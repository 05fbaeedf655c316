// The table of one target's kernels. No include guard: included by each
// target header after its instruction-set region is closed, inside its
// namespace, so that building the table (done before the CPU is known to
// support the target) uses no instruction the CPU may lack.

inline const KernelTable& table() {
  static const KernelTable t = [] {
    KernelTable k;
    k.name = kName;
    k.attend_f32 = &attend<float>;
    k.attend_bf16 = &attend<Eigen::bfloat16>;
    k.attend_f16 = &attend<Eigen::half>;
    k.attend_i8 = &attend<std::int8_t>;
    k.gemm_f32 = &gemm<float>;
    k.gemm_bf16 = &gemm<Eigen::bfloat16>;
    k.gemm_f16 = &gemm<Eigen::half>;
    k.silu_mul = &silu_mul;
    k.gemv_q8_0 = &gemv_q<kQ8_0Bytes>;
    k.gemv_q4_0 = &gemv_q<kQ4_0Bytes>;
    return k;
  }();
  return t;
}
