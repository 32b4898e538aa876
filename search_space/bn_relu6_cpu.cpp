// Fused training-mode BatchNorm2d + ReLU6 for float32 channels_last CPU tensors.
// Built on first use by search_space/bn_act.py; registered as torch.ops.coordsweep_bn.*.
//
// Why: in MobileNetV2 at small width the 1x1 / depthwise convs are cheap and the step is bound by
// memory traffic of the element-wise layers around them. Eager BN + ReLU6 touches the big tensor
// 13 times per training step (BN stats read, normalise read+write, clamp read+write, hardtanh
// backward 2 reads + write, BN backward 2 reads for the sums + 2 reads + write) and keeps two
// activations alive (BN input and BN output). Here: forward 1 read (statistics) + 1 read / 1 write
// (normalise + clamp); backward 2 reads (masked sums) + 2 reads / 1 write (input gradient): 8
// touches, and only the BN input is saved (the ReLU6 mask is recomputed from it).
//
// x is (N, C, H, W) in channels_last memory, i.e. an (M = N*H*W, C) row-major matrix.
// Reductions run over fixed chunks of kChunk rows (float partial sums, shifted by the first row
// to avoid cancellation), combined in double in chunk order: results do not depend on the
// number of threads.
//
// Two code paths with the same arithmetic: explicit AVX-512 intrinsics (x86-64 with avx512f,
// detected at run time) and the portable loops (GCC target_clones) as the fallback. The vector
// path does the same float operations in the same per-column order, without FMA (the build uses
// -ffp-contract=off), so both paths give bit-identical results; the ReLU6 mask recomputed by the
// fused CA kernel (attention/coord_cpu.cpp) agrees with it bit for bit as well.
// COORDSWEEP_SIMD=generic in the environment (read once, when the first op runs) forces the
// portable path; torch.ops.coordsweep_bn.simd_path() says which path this process uses.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "cpu_simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define BN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BN_CLONES
#endif

using i64 = int64_t;
constexpr i64 kChunk = 128;

// s[c] = sum_r (x[r,c] - k[c]), q[c] = sum_r (x[r,c] - k[c])^2 over `rows` rows.
BN_CLONES void stats_rows(const float* __restrict__ x, i64 rows, i64 C, const float* __restrict__ k,
                          float* __restrict__ s, float* __restrict__ q) {
  for (i64 c = 0; c < C; ++c) s[c] = q[c] = 0.f;
  for (i64 r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    for (i64 c = 0; c < C; ++c) {
      const float d = xr[c] - k[c];
      s[c] += d;
      q[c] += d * d;
    }
  }
}

// y = clamp((x - mean) * a + b, 0, 6), NaN propagates.
BN_CLONES void norm_clamp_rows(const float* __restrict__ x, float* __restrict__ y, i64 rows, i64 C,
                               const float* __restrict__ a, const float* __restrict__ b,
                               const float* __restrict__ mean) {
  for (i64 r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    for (i64 c = 0; c < C; ++c) {
      const float z = (xr[c] - mean[c]) * a[c] + b[c];
      const float lo = z < 0.f ? 0.f : z;
      yr[c] = lo > 6.f ? 6.f : lo;
    }
  }
}

// Masked gradient sums: g = grad where 0 < (x - mean) * a + b < 6 (else 0); sg += g, sgx += g * (x - mean).
BN_CLONES void bwd_sums_rows(const float* __restrict__ g, const float* __restrict__ x, i64 rows, i64 C,
                             const float* __restrict__ a, const float* __restrict__ b,
                             const float* __restrict__ mean, float* __restrict__ sg, float* __restrict__ sgx) {
  for (i64 c = 0; c < C; ++c) sg[c] = sgx[c] = 0.f;
  for (i64 r = 0; r < rows; ++r) {
    const float* gr = g + r * C;
    const float* xr = x + r * C;
    for (i64 c = 0; c < C; ++c) {
      const float z = (xr[c] - mean[c]) * a[c] + b[c];
      const float gm = (z > 0.f && z < 6.f) ? gr[c] : 0.f;
      sg[c] += gm;
      sgx[c] += gm * (xr[c] - mean[c]);
    }
  }
}

// dx = a * (g - mg - (x - mean) * mgx), g masked as above.
BN_CLONES void bwd_input_rows(const float* __restrict__ g, const float* __restrict__ x, float* __restrict__ dx,
                              i64 rows, i64 C, const float* __restrict__ a, const float* __restrict__ b,
                              const float* __restrict__ mean, const float* __restrict__ mg,
                              const float* __restrict__ mgx) {
  for (i64 r = 0; r < rows; ++r) {
    const float* gr = g + r * C;
    const float* xr = x + r * C;
    float* dr = dx + r * C;
    for (i64 c = 0; c < C; ++c) {
      const float z = (xr[c] - mean[c]) * a[c] + b[c];
      const float gm = (z > 0.f && z < 6.f) ? gr[c] : 0.f;
      dr[c] = a[c] * (gm - mg[c] - (xr[c] - mean[c]) * mgx[c]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 path. Columns go in vectors of 16 floats, the last one masked (C need not be a
// multiple of 16). The reductions keep each column's partial sums in registers over all rows of
// the chunk when a row has at most 12 vectors (x then streams through once); wider rows go in
// strips of 8 consecutive rows, each column vector's sums loaded, advanced by the 8 rows in order
// and stored back. Either way each column is summed row by row from 0, as in the portable loops.
#if COORDSWEEP_HAVE_AVX512
#define BN_AVX512 __attribute__((target("avx512f")))
using coordsweep_simd::tail_mask;

// Software prefetch kAhead floats ahead in a stream: the hardware prefetchers alone do not keep
// two or three streams at memory speed when the loop does more than a few operations per vector.
constexpr i64 kAhead = 2048;  // 8 KB
BN_AVX512 inline void pf(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p + kAhead), _MM_HINT_T0); }

// Vector j of a block of NV: the last one is masked to the columns that exist.
template <int NV>
BN_AVX512 inline __m512 ld(int j, const float* p, __mmask16 tail) {
  return j == NV - 1 ? _mm512_maskz_loadu_ps(tail, p) : _mm512_loadu_ps(p);
}

template <int NV>
BN_AVX512 inline void st(int j, float* p, __mmask16 tail, __m512 v) {
  if (j == NV - 1) _mm512_mask_storeu_ps(p, tail, v);
  else _mm512_storeu_ps(p, v);
}

// Column block [c0, c0 + 16 * NV) of stats_rows: partial sums in registers over all rows.
template <int NV>
BN_AVX512 void stats_block(const float* __restrict__ x, i64 rows, i64 C, i64 c0, const float* __restrict__ k,
                           float* __restrict__ s, float* __restrict__ q) {
  const __mmask16 tail = tail_mask(C - (c0 + 16 * (NV - 1)));
  __m512 vs[NV], vq[NV];
#pragma GCC unroll 16
  for (int j = 0; j < NV; ++j) {
    vs[j] = ld<NV>(j, s + c0 + 16 * j, tail);
    vq[j] = ld<NV>(j, q + c0 + 16 * j, tail);
  }
  for (i64 r = 0; r < rows; ++r) {
    const float* xr = x + r * C + c0;
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) {
      const __m512 d = _mm512_sub_ps(ld<NV>(j, xr + 16 * j, tail), ld<NV>(j, k + c0 + 16 * j, tail));
      vs[j] = _mm512_add_ps(vs[j], d);
      vq[j] = _mm512_add_ps(vq[j], _mm512_mul_ps(d, d));
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < NV; ++j) {
    st<NV>(j, s + c0 + 16 * j, tail, vs[j]);
    st<NV>(j, q + c0 + 16 * j, tail, vq[j]);
  }
}

// Wide rows: R consecutive rows (one contiguous strip of x) at a time, each column vector's sums
// loaded, advanced by the R rows in order and stored back.
template <int R>
BN_AVX512 void stats_strip(const float* __restrict__ x, i64 C, const float* __restrict__ k, float* __restrict__ s,
                           float* __restrict__ q) {
  for (i64 c = 0; c < C; c += 16) {
    const __mmask16 m = tail_mask(C - c);
    const __m512 kv = _mm512_maskz_loadu_ps(m, k + c);
    __m512 vs = _mm512_maskz_loadu_ps(m, s + c), vq = _mm512_maskz_loadu_ps(m, q + c);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + r * C + c), kv);
      vs = _mm512_add_ps(vs, d);
      vq = _mm512_add_ps(vq, _mm512_mul_ps(d, d));
    }
    _mm512_mask_storeu_ps(s + c, m, vs);
    _mm512_mask_storeu_ps(q + c, m, vq);
  }
}

// The ReLU6 pass-through mask 0 < z < 6 (false for NaN) of z = (x - mean) * a + b, d = x - mean.
BN_AVX512 inline __mmask16 inside(__m512 d, __m512 a, __m512 b) {
  const __m512 z = _mm512_add_ps(_mm512_mul_ps(d, a), b);
  return _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_GT_OQ), z, _mm512_set1_ps(6.f),
                                 _CMP_LT_OQ);
}

// Column block of bwd_sums_rows: gm = grad zeroed outside the mask (not skipped, so that as in
// the portable loop a NaN / inf x still reaches sgx through 0 * (x - mean)).
template <int NV>
BN_AVX512 void bwd_sums_block(const float* __restrict__ g, const float* __restrict__ x, i64 rows, i64 C, i64 c0,
                              const float* __restrict__ a, const float* __restrict__ b,
                              const float* __restrict__ mean, float* __restrict__ sg, float* __restrict__ sgx) {
  const __mmask16 tail = tail_mask(C - (c0 + 16 * (NV - 1)));
  __m512 vs[NV], vsx[NV];
#pragma GCC unroll 16
  for (int j = 0; j < NV; ++j) {
    vs[j] = ld<NV>(j, sg + c0 + 16 * j, tail);
    vsx[j] = ld<NV>(j, sgx + c0 + 16 * j, tail);
  }
  for (i64 r = 0; r < rows; ++r) {
    const float* xr = x + r * C + c0;
    const float* gr = g + r * C + c0;
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) {
      const i64 o = c0 + 16 * j;
      pf(xr + 16 * j);
      pf(gr + 16 * j);
      const __m512 d = _mm512_sub_ps(ld<NV>(j, xr + 16 * j, tail), ld<NV>(j, mean + o, tail));
      const __mmask16 m = inside(d, ld<NV>(j, a + o, tail), ld<NV>(j, b + o, tail));
      const __m512 gm = _mm512_maskz_mov_ps(m, ld<NV>(j, gr + 16 * j, tail));
      vs[j] = _mm512_add_ps(vs[j], gm);
      vsx[j] = _mm512_add_ps(vsx[j], _mm512_mul_ps(gm, d));
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < NV; ++j) {
    st<NV>(j, sg + c0 + 16 * j, tail, vs[j]);
    st<NV>(j, sgx + c0 + 16 * j, tail, vsx[j]);
  }
}

template <int R>
BN_AVX512 void bwd_sums_strip(const float* __restrict__ g, const float* __restrict__ x, i64 C,
                              const float* __restrict__ a, const float* __restrict__ b,
                              const float* __restrict__ mean, float* __restrict__ sg, float* __restrict__ sgx) {
  for (i64 c = 0; c < C; c += 16) {
    const __mmask16 lanes = tail_mask(C - c);
    const __m512 mv = _mm512_maskz_loadu_ps(lanes, mean + c), av = _mm512_maskz_loadu_ps(lanes, a + c),
                 bv = _mm512_maskz_loadu_ps(lanes, b + c);
    __m512 vs = _mm512_maskz_loadu_ps(lanes, sg + c), vsx = _mm512_maskz_loadu_ps(lanes, sgx + c);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      pf(x + r * C + c);
      pf(g + r * C + c);
      const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, x + r * C + c), mv);
      const __m512 gm = _mm512_maskz_mov_ps(inside(d, av, bv), _mm512_maskz_loadu_ps(lanes, g + r * C + c));
      vs = _mm512_add_ps(vs, gm);
      vsx = _mm512_add_ps(vsx, _mm512_mul_ps(gm, d));
    }
    _mm512_mask_storeu_ps(sg + c, lanes, vs);
    _mm512_mask_storeu_ps(sgx + c, lanes, vsx);
  }
}

// Calls f(std::integral_constant<int, NV>{}) with NV = n (1 <= n <= 12).
template <class F>
void with_nv(i64 n, F&& f) {
  switch (n) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 9: f(std::integral_constant<int, 9>{}); break;
    case 10: f(std::integral_constant<int, 10>{}); break;
    case 11: f(std::integral_constant<int, 11>{}); break;
    default: f(std::integral_constant<int, 12>{}); break;
  }
}

// Rows of up to kStatsVec / kSumsVec vectors keep all partial sums in registers over the whole
// chunk; wider rows go in strips of kStrip rows.
constexpr i64 kStatsVec = 12, kSumsVec = 12, kStrip = 8;

void stats_rows_avx512(const float* __restrict__ x, i64 rows, i64 C, const float* __restrict__ k,
                       float* __restrict__ s, float* __restrict__ q) {
  std::memset(s, 0, sizeof(float) * C);
  std::memset(q, 0, sizeof(float) * C);
  const i64 nvec = (C + 15) / 16;
  if (nvec <= kStatsVec) {
    with_nv(nvec, [&](auto n) { stats_block<decltype(n)::value>(x, rows, C, 0, k, s, q); });
    return;
  }
  i64 r = 0;
  for (; r + kStrip <= rows; r += kStrip) stats_strip<kStrip>(x + r * C, C, k, s, q);
  for (; r < rows; ++r) stats_strip<1>(x + r * C, C, k, s, q);
}

void bwd_sums_rows_avx512(const float* __restrict__ g, const float* __restrict__ x, i64 rows, i64 C,
                          const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ mean,
                          float* __restrict__ sg, float* __restrict__ sgx) {
  std::memset(sg, 0, sizeof(float) * C);
  std::memset(sgx, 0, sizeof(float) * C);
  const i64 nvec = (C + 15) / 16;
  if (nvec <= kSumsVec) {
    with_nv(nvec, [&](auto n) { bwd_sums_block<decltype(n)::value>(g, x, rows, C, 0, a, b, mean, sg, sgx); });
    return;
  }
  i64 r = 0;
  for (; r + kStrip <= rows; r += kStrip) bwd_sums_strip<kStrip>(g + r * C, x + r * C, C, a, b, mean, sg, sgx);
  for (; r < rows; ++r) bwd_sums_strip<1>(g + r * C, x + r * C, C, a, b, mean, sg, sgx);
}

// One vector of norm_clamp_rows. y = min(6, max(0, z)): vmaxps / vminps return their second
// operand when either is NaN, so max(0, z) = (0 > z ? 0 : z) and min(6, lo) = (6 < lo ? 6 : lo),
// the portable loop's clamp, NaN and -0 included.
BN_AVX512 inline void norm_clamp_vec(const float* xr, float* yr, i64 c, __mmask16 m, const float* a,
                                     const float* b, const float* mean) {
  const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, xr + c), _mm512_maskz_loadu_ps(m, mean + c));
  const __m512 z = _mm512_add_ps(_mm512_mul_ps(d, _mm512_maskz_loadu_ps(m, a + c)), _mm512_maskz_loadu_ps(m, b + c));
  _mm512_mask_storeu_ps(yr + c, m, _mm512_min_ps(_mm512_set1_ps(6.f), _mm512_max_ps(_mm512_setzero_ps(), z)));
}

BN_AVX512 void norm_clamp_rows_avx512(const float* __restrict__ x, float* __restrict__ y, i64 rows, i64 C,
                                      const float* __restrict__ a, const float* __restrict__ b,
                                      const float* __restrict__ mean) {
  const i64 full = C / 16 * 16;
  const __mmask16 tail = tail_mask(C - full), all = 0xFFFF;
  for (i64 r = 0; r < rows; ++r) {
    for (i64 c = 0; c < full; c += 16) norm_clamp_vec(x + r * C, y + r * C, c, all, a, b, mean);
    if (full < C) norm_clamp_vec(x + r * C, y + r * C, full, tail, a, b, mean);
  }
}

// One vector of bwd_input_rows: dx = a * ((gm - mg) - d * mgx), the portable loop's operations.
BN_AVX512 inline void bwd_input_vec(const float* gr, const float* xr, float* dr, i64 c, __mmask16 lanes,
                                    const float* a, const float* b, const float* mean, const float* mg,
                                    const float* mgx) {
  pf(gr + c);
  pf(xr + c);
  pf(dr + c);
  const __m512 av = _mm512_maskz_loadu_ps(lanes, a + c);
  const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, xr + c), _mm512_maskz_loadu_ps(lanes, mean + c));
  const __mmask16 m = inside(d, av, _mm512_maskz_loadu_ps(lanes, b + c));
  const __m512 gm = _mm512_maskz_mov_ps(m, _mm512_maskz_loadu_ps(lanes, gr + c));
  const __m512 t = _mm512_sub_ps(gm, _mm512_maskz_loadu_ps(lanes, mg + c));
  const __m512 v = _mm512_sub_ps(t, _mm512_mul_ps(d, _mm512_maskz_loadu_ps(lanes, mgx + c)));
  _mm512_mask_storeu_ps(dr + c, lanes, _mm512_mul_ps(av, v));
}

BN_AVX512 void bwd_input_rows_avx512(const float* __restrict__ g, const float* __restrict__ x, float* __restrict__ dx,
                                     i64 rows, i64 C, const float* __restrict__ a, const float* __restrict__ b,
                                     const float* __restrict__ mean, const float* __restrict__ mg,
                                     const float* __restrict__ mgx) {
  const i64 full = C / 16 * 16;
  const __mmask16 tail = tail_mask(C - full), all = 0xFFFF;
  for (i64 r = 0; r < rows; ++r) {
    const i64 o = r * C;
    for (i64 c = 0; c < full; c += 16) bwd_input_vec(g + o, x + o, dx + o, c, all, a, b, mean, mg, mgx);
    if (full < C) bwd_input_vec(g + o, x + o, dx + o, full, tail, a, b, mean, mg, mgx);
  }
}
#endif  // AVX-512

using coordsweep_simd::simd_path;  // which path runs: cpu_simd.h
using coordsweep_simd::use_avx512;

void stats_rows_any(const float* x, i64 rows, i64 C, const float* k, float* s, float* q) {
#if COORDSWEEP_HAVE_AVX512
  if (use_avx512()) return stats_rows_avx512(x, rows, C, k, s, q);
#endif
  stats_rows(x, rows, C, k, s, q);
}

void norm_clamp_rows_any(const float* x, float* y, i64 rows, i64 C, const float* a, const float* b, const float* mean) {
#if COORDSWEEP_HAVE_AVX512
  if (use_avx512()) return norm_clamp_rows_avx512(x, y, rows, C, a, b, mean);
#endif
  norm_clamp_rows(x, y, rows, C, a, b, mean);
}

void bwd_sums_rows_any(const float* g, const float* x, i64 rows, i64 C, const float* a, const float* b,
                       const float* mean, float* sg, float* sgx) {
#if COORDSWEEP_HAVE_AVX512
  if (use_avx512()) return bwd_sums_rows_avx512(g, x, rows, C, a, b, mean, sg, sgx);
#endif
  bwd_sums_rows(g, x, rows, C, a, b, mean, sg, sgx);
}

void bwd_input_rows_any(const float* g, const float* x, float* dx, i64 rows, i64 C, const float* a, const float* b,
                        const float* mean, const float* mg, const float* mgx) {
#if COORDSWEEP_HAVE_AVX512
  if (use_avx512()) return bwd_input_rows_avx512(g, x, dx, rows, C, a, b, mean, mg, mgx);
#endif
  bwd_input_rows(g, x, dx, rows, C, a, b, mean, mg, mgx);
}

// (x - mean) * a + b is BN's normalise-and-scale: a = weight * invstd, b = bias (centred first, so
// a large common offset does not cost precision). Forward and backward both derive a from the
// stored float invstd, so the ReLU6 mask is identical.
void affine(const float* w, const float* bias, const float* invstd, i64 C, float* a, float* b) {
  for (i64 c = 0; c < C; ++c) {
    a[c] = w[c] * invstd[c];
    b[c] = bias[c];
  }
}

void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4,
              name, " must be a 4-D float32 CPU tensor");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), name, " must be channels_last-contiguous");
}

at::Tensor vec_f(const at::Tensor& t, i64 C, const char* name) {
  TORCH_CHECK(t.numel() == C, name, " must have C elements");
  return t.detach().to(at::kFloat).contiguous();
}

// Chunked column sums of a (M, C) matrix into double totals, in chunk order.
template <class F>
void chunked_sums(i64 M, i64 C, std::vector<double>& tot1, std::vector<double>& tot2, F&& chunk_fn) {
  const i64 nchunks = (M + kChunk - 1) / kChunk;
  std::vector<float> part(static_cast<size_t>(nchunks * 2 * C));
  at::parallel_for(0, nchunks, 1, [&](i64 begin, i64 end) {
    for (i64 i = begin; i < end; ++i) {
      const i64 r0 = i * kChunk, rows = std::min(kChunk, M - r0);
      float* p = part.data() + i * 2 * C;
      chunk_fn(r0, rows, p, p + C);
    }
  });
  tot1.assign(C, 0.0);
  tot2.assign(C, 0.0);
  for (i64 i = 0; i < nchunks; ++i) {
    const float* p = part.data() + i * 2 * C;
    for (i64 c = 0; c < C; ++c) {
      tot1[c] += p[c];
      tot2[c] += p[C + c];
    }
  }
}

template <class F>
void rows_parallel(i64 M, i64 C, F&& fn) {
  const i64 grain = std::max<i64>(1, 16384 / std::max<i64>(C, 1));
  at::parallel_for(0, M, grain, [&](i64 begin, i64 end) { fn(begin, end - begin); });
}

// Batch statistics of x: -> (mean, invstd, var); (C,) float32; var is the biased variance BN
// normalises with. Shared by bn_relu6_forward and by the fused BN+ReLU6+CoordAttn path
// (search_space/attention/coord_cpu.cpp), which normalises on the fly instead of writing y.
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_stats(const at::Tensor& x, double eps) {
  check_input(x, "x");
  const i64 C = x.size(1), M = x.numel() / C;
  TORCH_CHECK(M > 0, "x must not be empty");
  const float* xp = x.data_ptr<float>();
  std::vector<float> k(xp, xp + C);  // shift: the first row
  std::vector<double> s, q;
  chunked_sums(M, C, s, q, [&](i64 r0, i64 rows, float* ps, float* pq) {
    stats_rows_any(xp + r0 * C, rows, C, k.data(), ps, pq);
  });
  at::Tensor mean = at::empty({C}, x.options()), invstd = at::empty({C}, x.options()),
             variance = at::empty({C}, x.options());
  float* mp = mean.data_ptr<float>();
  float* ip = invstd.data_ptr<float>();
  float* vp = variance.data_ptr<float>();
  for (i64 c = 0; c < C; ++c) {
    const double ms = s[c] / M;
    const double var = std::max(q[c] / M - ms * ms, 0.0);
    mp[c] = static_cast<float>(k[c] + ms);
    vp[c] = static_cast<float>(var);
    ip[c] = static_cast<float>(1.0 / std::sqrt(var + eps));
  }
  return {mean, invstd, variance};
}

// -> (y, mean, invstd, var)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_relu6_forward(const at::Tensor& x, const at::Tensor& weight,
                                                                 const at::Tensor& bias, double eps) {
  check_input(x, "x");
  const i64 C = x.size(1), M = x.numel() / C;
  TORCH_CHECK(M > 0, "x must not be empty");
  const at::Tensor w = vec_f(weight, C, "weight"), bb = vec_f(bias, C, "bias");
  auto [mean, invstd, variance] = bn_stats(x, eps);
  std::vector<float> a(C), b(C);
  affine(w.data_ptr<float>(), bb.data_ptr<float>(), invstd.data_ptr<float>(), C, a.data(), b.data());
  const float* xp = x.data_ptr<float>();
  const float* mp = mean.data_ptr<float>();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  float* yp = y.data_ptr<float>();
  rows_parallel(M, C, [&](i64 r0, i64 rows) { norm_clamp_rows_any(xp + r0 * C, yp + r0 * C, rows, C, a.data(), b.data(), mp); });
  return {y, mean, invstd, variance};
}

// -> (grad_x, grad_weight, grad_bias)
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_relu6_backward(const at::Tensor& grad, const at::Tensor& x,
                                                                  const at::Tensor& weight, const at::Tensor& bias,
                                                                  const at::Tensor& mean, const at::Tensor& invstd) {
  check_input(x, "x");
  check_input(grad, "grad");
  TORCH_CHECK(grad.sizes() == x.sizes(), "grad and x must have the same shape");
  const i64 C = x.size(1), M = x.numel() / C;
  const at::Tensor w = vec_f(weight, C, "weight"), bb = vec_f(bias, C, "bias");
  const at::Tensor mu = vec_f(mean, C, "mean"), is = vec_f(invstd, C, "invstd");
  const float *wp = w.data_ptr<float>(), *bp = bb.data_ptr<float>(), *mp = mu.data_ptr<float>(),
              *ip = is.data_ptr<float>();
  std::vector<float> a(C), b(C);  // the forward's affine map, bit for bit: same ReLU6 mask
  affine(wp, bp, ip, C, a.data(), b.data());
  const float* xp = x.data_ptr<float>();
  const float* gp = grad.data_ptr<float>();
  std::vector<double> sg, sgx;
  chunked_sums(M, C, sg, sgx, [&](i64 r0, i64 rows, float* p1, float* p2) {
    bwd_sums_rows_any(gp + r0 * C, xp + r0 * C, rows, C, a.data(), b.data(), mp, p1, p2);
  });
  at::Tensor gw = at::empty({C}, x.options()), gb = at::empty({C}, x.options());
  std::vector<float> mg(C), mgx(C);
  for (i64 c = 0; c < C; ++c) {
    gb.data_ptr<float>()[c] = static_cast<float>(sg[c]);
    gw.data_ptr<float>()[c] = static_cast<float>(sgx[c] * ip[c]);
    mg[c] = static_cast<float>(sg[c] / M);
    mgx[c] = static_cast<float>(sgx[c] / M * ip[c] * ip[c]);
  }
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  float* dp = dx.data_ptr<float>();
  rows_parallel(M, C, [&](i64 r0, i64 rows) {
    bwd_input_rows_any(gp + r0 * C, xp + r0 * C, dp + r0 * C, rows, C, a.data(), b.data(), mp, mg.data(), mgx.data());
  });
  return {dx, gw, gb};
}

}  // namespace

TORCH_LIBRARY(coordsweep_bn, m) {
  m.def("simd_path() -> str", simd_path);  // "avx512" or "generic"
  m.def("bn_stats(Tensor x, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("bn_relu6_forward(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("bn_relu6_backward(Tensor grad, Tensor x, Tensor weight, Tensor bias, Tensor mean, Tensor invstd)"
        " -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(coordsweep_bn, CPU, m) {
  m.impl("bn_stats", bn_stats);
  m.impl("bn_relu6_forward", bn_relu6_forward);
  m.impl("bn_relu6_backward", bn_relu6_backward);
}
