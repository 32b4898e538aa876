// Fused CPU kernels for Coordinate Attention's data path around the big (N, C, H, W) tensor
// (directions hw, avg pooling). Built on first use by search_space/attention/_coord_cpu.py;
// registered as torch.ops.coordsweep_ca.*. float32 only; x is NCHW-contiguous or channels_last.
//
// Layout of the small tensors exchanged with Python (always shaped as PyTorch sees them):
//   pooled  (N, H+W, C): rows 0..H-1 = mean over w of each row, rows H.. = mean over h of each column
//   a_h     (N, H, C), a_w (N, W, C): the gates; ga_h, ga_w: their gradients (same shapes)
//   g_pooled (N, H+W, C): gradient of `pooled`
// For channels_last inputs these are (N, L, C)-contiguous; for NCHW inputs the kernels work on
// (N, C, L)-contiguous buffers and hand back transposed views.
//
// Full-tensor passes: forward 1 read (pool) + 1 read / 1 write (gate);
// backward 2 reads (gate reductions) + 1 read / 1 write (input gradient).
// Work is split over samples (and channel blocks when N is small) with at::parallel_for, which
// follows torch.set_num_threads. Each output element is computed in a fixed order whatever the
// partition, so results do not depend on the number of threads.
// The channels_last path (what the models use) is the tuned one: loops over the contiguous C
// with GCC/Clang vector types, reductions blocked over 4 image rows so the per-column partial
// sums are loaded/stored once per 4 rows. The NCHW path is plain auto-vectorised loops.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <cstdint>
#include <string>
#include <tuple>

#include "../cpu_simd.h"

namespace {

// Compile the hot loops for several instruction sets; the loader picks one at run time, so the
// cached build stays valid on any x86-64 machine.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CA_CLONES
#endif
#define CA_INLINE static inline __attribute__((always_inline))

using i64 = int64_t;
constexpr int kLanes = 16;  // independent partial sums for reductions along the contiguous dim

// ---------------------------------------------------------------- vectors
// GCC/Clang vector extensions: Vec<16> is one 64-byte line of floats (1 zmm, 2 ymm or 4 xmm,
// whatever the clone targets), Vec<8> serves channel tails, Vec<1> is a plain float.
template <int K> struct VecT;
template <> struct VecT<16> { typedef float type __attribute__((vector_size(64), aligned(4), may_alias)); };
template <> struct VecT<8> { typedef float type __attribute__((vector_size(32), aligned(4), may_alias)); };
template <> struct VecT<1> { typedef float type; };
template <int K> using Vec = typename VecT<K>::type;

template <int K> CA_INLINE Vec<K> ld(const float* p) {
  Vec<K> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <int K> CA_INLINE void st(float* p, Vec<K> v) { std::memcpy(p, &v, sizeof(v)); }

CA_INLINE void fill0(float* __restrict__ a, i64 n) {
  for (i64 i = 0; i < n; ++i) a[i] = 0.f;
}
CA_INLINE void div_by(float* __restrict__ a, i64 n, float d) {
  for (i64 i = 0; i < n; ++i) a[i] = a[i] / d;
}

// ---------------------------------------------------------------- channels_last (NHWC)
// One task = one sample n and channels [c0, c0 + cn); every pointer is already offset by c0 and
// pixel rows are C floats apart. The reductions work on blocks of R image rows x K channels:
// the R row accumulators live in registers while w runs, and the per-column accumulators (an
// L1-resident W x K strip) are loaded/stored once per R rows instead of once per row.
constexpr int kRows = 4;


// What a pooling pass sums: x itself (Plain) or y = ReLU6(BN(x)) computed on the fly (see the
// fused ops below). at<K>(c) loads whatever the transform needs for channels [c, c + K).
struct Plain {
  template <int K> struct At {
    __attribute__((always_inline)) Vec<K> operator()(Vec<K> v) const { return v; }
  };
  template <int K> __attribute__((always_inline)) At<K> at(i64) const { return {}; }
  __attribute__((always_inline)) float one(float v, i64) const { return v; }  // scalar form
};

template <int K, int R, class T>
CA_INLINE void pool_blk(const float* x, const T& t, float* ph, float* pw, i64 h0, i64 W, i64 C, i64 c, float fw) {
  const auto tf = t.template at<K>(c);
  Vec<K> r[R];
  for (int i = 0; i < R; ++i) r[i] = Vec<K>{};
  for (i64 w = 0; w < W; ++w) {
    float* q = pw + w * C + c;
    Vec<K> s = ld<K>(q);
    for (int i = 0; i < R; ++i) {
      const Vec<K> v = tf(ld<K>(x + ((h0 + i) * W + w) * C + c));
      r[i] += v;
      s += v;
    }
    st<K>(q, s);
  }
  for (int i = 0; i < R; ++i) st<K>(ph + (h0 + i) * C + c, r[i] / fw);
}

template <int R, class T>
CA_INLINE void pool_rows(const float* x, const T& t, float* ph, float* pw, i64 h0, i64 W, i64 C, i64 cn, float fw) {
  i64 c = 0;
  for (; c + 16 <= cn; c += 16) pool_blk<16, R>(x, t, ph, pw, h0, W, C, c, fw);
  for (; c + 8 <= cn; c += 8) pool_blk<8, R>(x, t, ph, pw, h0, W, C, c, fw);
  for (; c < cn; ++c) pool_blk<1, R>(x, t, ph, pw, h0, W, C, c, fw);
}

// ph: H rows of row means, pw: W rows of column means.
template <class T>
CA_INLINE void pool_nhwc_t(const float* __restrict__ x, const T& t, float* __restrict__ ph, float* __restrict__ pw,
                           i64 H, i64 W, i64 C, i64 cn) {
  const float fw = static_cast<float>(W);
  for (i64 w = 0; w < W; ++w) fill0(pw + w * C, cn);
  i64 h = 0;
  for (; h + kRows <= H; h += kRows) pool_rows<kRows>(x, t, ph, pw, h, W, C, cn, fw);
  for (; h < H; ++h) pool_rows<1>(x, t, ph, pw, h, W, C, cn, fw);
  for (i64 w = 0; w < W; ++w) div_by(pw + w * C, cn, static_cast<float>(H));
}

CA_CLONES void pool_nhwc(const float* __restrict__ x, float* __restrict__ ph, float* __restrict__ pw, i64 H, i64 W,
                         i64 C, i64 cn) {
  pool_nhwc_t(x, Plain{}, ph, pw, H, W, C, cn);
}

// o = (y * a_w) * a_h with y = t(x), the reference module's order. A plain stream over contiguous
// channels: the compiler vectorises it.
template <class T>
CA_INLINE void gate_nhwc_t(const float* __restrict__ x, const T& t, const float* __restrict__ ah,
                           const float* __restrict__ aw, float* __restrict__ o, i64 H, i64 W, i64 C, i64 cn) {
  for (i64 h = 0; h < H; ++h) {
    const float* a = ah + h * C;
    for (i64 w = 0; w < W; ++w) {
      const float* xr = x + (h * W + w) * C;
      const float* b = aw + w * C;
      float* orow = o + (h * W + w) * C;
      for (i64 c = 0; c < cn; ++c) orow[c] = t.one(xr[c], c) * b[c] * a[c];
    }
  }
}

CA_CLONES void gate_nhwc(const float* __restrict__ x, const float* __restrict__ ah, const float* __restrict__ aw,
                         float* __restrict__ o, i64 H, i64 W, i64 C, i64 cn) {
  gate_nhwc_t(x, Plain{}, ah, aw, o, H, W, C, cn);
}

// t = grad * x; ga_h[h] += t * a_w[w] (registers), ga_w[w] += t * a_h[h] (strip).
template <int K, int R>
CA_INLINE void gbwd_blk(const float* g, const float* x, const float* ah, const float* aw, float* gah, float* gaw,
                        i64 h0, i64 W, i64 C, i64 c) {
  Vec<K> acc[R], a[R];
  for (int i = 0; i < R; ++i) {
    acc[i] = Vec<K>{};
    a[i] = ld<K>(ah + (h0 + i) * C + c);
  }
  for (i64 w = 0; w < W; ++w) {
    float* q = gaw + w * C + c;
    const Vec<K> b = ld<K>(aw + w * C + c);
    Vec<K> s = ld<K>(q);
    for (int i = 0; i < R; ++i) {
      const i64 off = ((h0 + i) * W + w) * C + c;
      const Vec<K> t = ld<K>(g + off) * ld<K>(x + off);
      acc[i] += t * b;
      s += t * a[i];
    }
    st<K>(q, s);
  }
  for (int i = 0; i < R; ++i) st<K>(gah + (h0 + i) * C + c, acc[i]);
}

template <int R>
CA_INLINE void gbwd_rows(const float* g, const float* x, const float* ah, const float* aw, float* gah, float* gaw,
                         i64 h0, i64 W, i64 C, i64 cn) {
  i64 c = 0;
  for (; c + 16 <= cn; c += 16) gbwd_blk<16, R>(g, x, ah, aw, gah, gaw, h0, W, C, c);
  for (; c + 8 <= cn; c += 8) gbwd_blk<8, R>(g, x, ah, aw, gah, gaw, h0, W, C, c);
  for (; c < cn; ++c) gbwd_blk<1, R>(g, x, ah, aw, gah, gaw, h0, W, C, c);
}

CA_CLONES void gate_bwd_nhwc(const float* __restrict__ g, const float* __restrict__ x, const float* __restrict__ ah,
                             const float* __restrict__ aw, float* __restrict__ gah, float* __restrict__ gaw,
                             i64 H, i64 W, i64 C, i64 cn) {
  for (i64 w = 0; w < W; ++w) fill0(gaw + w * C, cn);
  i64 h = 0;
  for (; h + kRows <= H; h += kRows) gbwd_rows<kRows>(g, x, ah, aw, gah, gaw, h, W, C, cn);
  for (; h < H; ++h) gbwd_rows<1>(g, x, ah, aw, gah, gaw, h, W, C, cn);
}

// o = grad * a_h * a_w + (gph / W + gpw / H), gph (H rows) and gpw (W rows) being the gradients of
// the row and column means. Blocked like the reductions: per R rows, a_w and gpw are read once.
template <int K, int R>
CA_INLINE void igrad_blk(const float* g, const float* ah, const float* aw, const float* gph, const float* gpw,
                         float* o, i64 h0, i64 W, i64 C, i64 c, float fw, float fh) {
  Vec<K> a[R], p[R];
  for (int i = 0; i < R; ++i) {
    a[i] = ld<K>(ah + (h0 + i) * C + c);
    p[i] = ld<K>(gph + (h0 + i) * C + c) / fw;
  }
  for (i64 w = 0; w < W; ++w) {
    const Vec<K> b = ld<K>(aw + w * C + c), q = ld<K>(gpw + w * C + c) / fh;
    for (int i = 0; i < R; ++i) {
      const i64 off = ((h0 + i) * W + w) * C + c;
      st<K>(o + off, ld<K>(g + off) * a[i] * b + (p[i] + q));
    }
  }
}

template <int R>
CA_INLINE void igrad_rows(const float* g, const float* ah, const float* aw, const float* gph, const float* gpw,
                          float* o, i64 h0, i64 W, i64 C, i64 cn, float fw, float fh) {
  i64 c = 0;
  for (; c + 16 <= cn; c += 16) igrad_blk<16, R>(g, ah, aw, gph, gpw, o, h0, W, C, c, fw, fh);
  for (; c + 8 <= cn; c += 8) igrad_blk<8, R>(g, ah, aw, gph, gpw, o, h0, W, C, c, fw, fh);
  for (; c < cn; ++c) igrad_blk<1, R>(g, ah, aw, gph, gpw, o, h0, W, C, c, fw, fh);
}

CA_CLONES void igrad_nhwc(const float* __restrict__ g, const float* __restrict__ ah, const float* __restrict__ aw,
                          const float* __restrict__ gph, const float* __restrict__ gpw, float* __restrict__ o,
                          i64 H, i64 W, i64 C, i64 cn) {
  const float fw = static_cast<float>(W), fh = static_cast<float>(H);
  i64 h = 0;
  for (; h + kRows <= H; h += kRows) igrad_rows<kRows>(g, ah, aw, gph, gpw, o, h, W, C, cn, fw, fh);
  for (; h < H; ++h) igrad_rows<1>(g, ah, aw, gph, gpw, o, h, W, C, cn, fw, fh);
}


// ---------------------------------------------------------------- fused with the preceding BN + ReLU6
// For CA right after a training-mode BatchNorm + ReLU6 (MobileNetV2's post_dw / post_expand), x is
// the BN *input* and the kernels compute y = clamp((x - mean) * a + b, 0, 6) on the fly (a =
// weight * invstd, b = bias: search_space/bn_relu6_cpu.cpp's formula, bit for bit), so y is never
// written. channels_last only. Passes per training step over the big tensor, BN + CA together:
// forward: BN statistics (1 read), pool of y (1 read), out = y * a_w * a_h (1 read, 1 write);
// backward: one pass over grad and x gives the gate gradients and, besides, everything BN's
// backward needs except the terms of the pooled-mean gradients, which are linear in those
// gradients and enter through per-row / per-column mask sums (small); one pass writes grad_x.
// BN + ReLU6 alone takes 3 + 5 passes, CA on top of it 7 more; fused, CA adds one read.
struct BnAff {
  const float *m, *a, *b;  // (C,) each, already offset by c0
};

// clamp(z, 0, 6) with NaN propagating, as the BN kernel.
template <int K> CA_INLINE Vec<K> relu6_v(Vec<K> z) {
  const Vec<K> zero = Vec<K>{}, six = zero + 6.f;
  const Vec<K> lo = z < zero ? zero : z;
  return lo > six ? six : lo;
}

CA_INLINE float relu6_f(float z) {
  const float lo = z < 0.f ? 0.f : z;
  return lo > 6.f ? 6.f : lo;
}

struct WithBn {  // y = clamp((x - mean) * a + b, 0, 6)
  BnAff f;
  template <int K> struct At {
    Vec<K> m, a, b;
    __attribute__((always_inline)) Vec<K> operator()(Vec<K> v) const { return relu6_v<K>((v - m) * a + b); }
  };
  template <int K> __attribute__((always_inline)) At<K> at(i64 c) const { return {ld<K>(f.m + c), ld<K>(f.a + c), ld<K>(f.b + c)}; }
  __attribute__((always_inline)) float one(float v, i64 c) const { return relu6_f((v - f.m[c]) * f.a[c] + f.b[c]); }
};

CA_CLONES void pool_bn_nhwc(const float* __restrict__ x, BnAff f, float* __restrict__ ph, float* __restrict__ pw,
                            i64 H, i64 W, i64 C, i64 cn) {
  pool_nhwc_t(x, WithBn{f}, ph, pw, H, W, C, cn);
}

CA_CLONES void gate_bn_nhwc(const float* __restrict__ x, BnAff f, const float* __restrict__ ah,
                            const float* __restrict__ aw, float* __restrict__ o, i64 H, i64 W, i64 C, i64 cn) {
  gate_nhwc_t(x, WithBn{f}, ah, aw, o, H, W, C, cn);
}

// Backward reductions, per task (sample n, channels c0..): with d = x - mean, y and mask from z:
//   gah[h] = sum_w g * y * a_w,  gaw[w] = sum_h g * y * a_h          (CA's gate gradients)
//   s1 = sum g * a_h * a_w * mask,  s1x = sum g * a_h * a_w * mask * d  (BN sums, gate term)
//   mh[h] = sum_w mask, mhx[h] = sum_w mask * d; mw[w], mwx[w] the same over h (for the
//   pooled-gradient terms of the BN sums, added in Python once those gradients are known).
struct BwdOut {
  float *gah, *gaw, *mh, *mhx, *mw, *mwx, *s1, *s1x;
};

// One pixel's C contiguous channels: a stream the compiler vectorises; the per-row, per-column and
// per-channel accumulators are L1-resident strips.
CA_INLINE void bn_gbwd_px(const float* __restrict__ g, const float* __restrict__ x, const float* __restrict__ m,
                          const float* __restrict__ fa, const float* __restrict__ fb, const float* __restrict__ a,
                          const float* __restrict__ b, float* __restrict__ gah, float* __restrict__ mh,
                          float* __restrict__ mhx, float* __restrict__ gaw, float* __restrict__ mw,
                          float* __restrict__ mwx, float* __restrict__ s1, float* __restrict__ s1x, i64 cn) {
  for (i64 c = 0; c < cn; ++c) {
    const float d = x[c] - m[c];
    const float z = d * fa[c] + fb[c];
    const float mk = (z > 0.f && z < 6.f) ? 1.f : 0.f;
    const float t = g[c] * relu6_f(z);
    gah[c] += t * b[c];
    gaw[c] += t * a[c];
    const float u = g[c] * a[c] * b[c] * mk;
    s1[c] += u;
    s1x[c] += u * d;
    const float md = mk * d;
    mh[c] += mk;
    mhx[c] += md;
    mw[c] += mk;
    mwx[c] += md;
  }
}

CA_CLONES void bn_gate_bwd_nhwc(const float* __restrict__ g, const float* __restrict__ x, BnAff f,
                                const float* __restrict__ ah, const float* __restrict__ aw, BwdOut o, i64 H, i64 W,
                                i64 C, i64 cn) {
  for (i64 w = 0; w < W; ++w) {
    fill0(o.gaw + w * C, cn);
    fill0(o.mw + w * C, cn);
    fill0(o.mwx + w * C, cn);
  }
  fill0(o.s1, cn);
  fill0(o.s1x, cn);
  for (i64 h = 0; h < H; ++h) {
    float *gah = o.gah + h * C, *mh = o.mh + h * C, *mhx = o.mhx + h * C;
    fill0(gah, cn);
    fill0(mh, cn);
    fill0(mhx, cn);
    for (i64 w = 0; w < W; ++w) {
      const i64 off = (h * W + w) * C;
      bn_gbwd_px(g + off, x + off, f.m, f.a, f.b, ah + h * C, aw + w * C, gah, mh, mhx, o.gaw + w * C, o.mw + w * C,
                 o.mwx + w * C, o.s1, o.s1x, cn);
    }
  }
}

// grad_x = a * (gz - mg - d * mgx), gz = mask * (g * a_h * a_w + qh[h] + qw[w]) with qh = g_pooled
// rows / W, qw = g_pooled columns / H (pre-scaled), mg / mgx BN's means of the masked sums.
// A plain stream over contiguous channels: the compiler vectorises it.
CA_CLONES void bn_igrad_nhwc(const float* __restrict__ g, const float* __restrict__ x, BnAff f,
                             const float* __restrict__ ah, const float* __restrict__ aw, const float* __restrict__ qh,
                             const float* __restrict__ qw, const float* __restrict__ mg,
                             const float* __restrict__ mgx, float* __restrict__ o, i64 H, i64 W, i64 C, i64 cn) {
  const float *__restrict__ m = f.m, *__restrict__ fa = f.a, *__restrict__ fb = f.b;
  for (i64 h = 0; h < H; ++h) {
    const float* a = ah + h * C;
    const float* p = qh + h * C;
    for (i64 w = 0; w < W; ++w) {
      const i64 off = (h * W + w) * C;
      const float *gr = g + off, *xr = x + off, *b = aw + w * C, *q = qw + w * C;
      float* orow = o + off;
      for (i64 c = 0; c < cn; ++c) {
        const float d = xr[c] - m[c];
        const float z = d * fa[c] + fb[c];
        const float gy = gr[c] * a[c] * b[c] + (p[c] + q[c]);
        const float gz = (z > 0.f && z < 6.f) ? gy : 0.f;
        orow[c] = fa[c] * (gz - mg[c] - d * mgx[c]);
      }
    }
  }
}

// ---------------------------------------------------------------- AVX-512 versions (fused BN path)
// GCC does not keep the ReLU6 mask selects of the loops above in vector registers (measured: the
// backward reductions ran at ~2 cycles per element, 3-6x slower than memory), so the hot fused
// kernels also exist written with AVX-512 intrinsics: masks are k-registers (compare -> masked
// add), channel tails are masked loads/stores, and the reductions keep R image rows of
// accumulators in registers. Chosen at run time (search_space/cpu_simd.h: AVX-512F present and
// COORDSWEEP_SIMD not "generic"; tests compare both). The same float operations in the same order
// as the portable loops, no FMA: bit-identical, except that the backward reductions add s1 / s1x
// two image rows at a time (float32 round-off).
using coordsweep_simd::simd_path;
using coordsweep_simd::use_avx512;

#if COORDSWEEP_HAVE_AVX512
#define CA_AVX512 __attribute__((target("avx512f"), always_inline)) static inline
#define CA_AVX512_FN __attribute__((target("avx512f"), noinline))

using coordsweep_simd::tail_mask;

// z = (x - m) * a + b; y = clamp(z, 0, 6) with NaN propagating (max/min return their second
// operand when one is NaN); k = 0 < z < 6 (false for NaN).
struct Z512 {
  __m512 d, y;
  __mmask16 k;
};
CA_AVX512 Z512 bn_z(__m512 xv, __m512 m, __m512 a, __m512 b) {
  const __m512 zero = _mm512_setzero_ps(), six = _mm512_set1_ps(6.f);
  const __m512 d = _mm512_sub_ps(xv, m);
  const __m512 z = _mm512_add_ps(_mm512_mul_ps(d, a), b);
  const __mmask16 k = _mm512_kand(_mm512_cmp_ps_mask(z, zero, _CMP_GT_OQ), _mm512_cmp_ps_mask(z, six, _CMP_LT_OQ));
  return {d, _mm512_min_ps(six, _mm512_max_ps(zero, z)), k};
}

// Loads / stores of one 16-channel block: plain when the block is full, masked for the channel tail
// (masked stores are much slower than plain ones on some CPUs).
template <bool Full> CA_AVX512 __m512 ldv(const float* p, __mmask16 km) {
  return Full ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(km, p);
}
template <bool Full> CA_AVX512 void stv(float* p, __mmask16 km, __m512 v) {
  if (Full)
    _mm512_storeu_ps(p, v);
  else
    _mm512_mask_storeu_ps(p, km, v);
}

constexpr i64 kAheadRows = 2;  // prefetch distance of the channel-blocked AVX-512 passes

// R rows h0.. of one 16-channel block (lanes km) of bn_gate_bwd_nhwc; column sums in the strips.
template <int R, bool Full>
CA_AVX512 void bn_gbwd_blk512(const float* g, const float* x, const float* ah, const float* aw, float* gah,
                              float* mh, float* mhx, float* gaw, float* mw, float* mwx, __m512& s1, __m512& s1x,
                              __m512 m, __m512 a, __m512 b, __mmask16 km, i64 h0, i64 W, i64 C) {
  const __m512 one = _mm512_set1_ps(1.f);
  __m512 av[R], accg[R], accm[R], accx[R];
  for (int i = 0; i < R; ++i) {
    av[i] = ldv<Full>(ah + (h0 + i) * C, km);
    accg[i] = accm[i] = accx[i] = _mm512_setzero_ps();
  }
  for (i64 w = 0; w < W; ++w) {
    const i64 o = w * C;
    const __m512 bw = ldv<Full>(aw + o, km);
    __m512 cg = ldv<Full>(gaw + o, km), cm = ldv<Full>(mw + o, km);
    __m512 cx = ldv<Full>(mwx + o, km);
    for (int i = 0; i < R; ++i) {
      const i64 off = ((h0 + i) * W + w) * C;
      // The same place kAheadRows rows down (the next row block) into L2: within a block the
      // channel blocks visit pixels C floats apart, which the hardware prefetchers do not follow
      // (without it this pass is ~1.5x slower).
      _mm_prefetch(reinterpret_cast<const char*>(g + off + kAheadRows * W * C), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(x + off + kAheadRows * W * C), _MM_HINT_T1);
      const __m512 gv = ldv<Full>(g + off, km);
      const Z512 zz = bn_z(ldv<Full>(x + off, km), m, a, b);
      const __m512 t = _mm512_mul_ps(gv, zz.y);
      accg[i] = _mm512_add_ps(accg[i], _mm512_mul_ps(t, bw));
      cg = _mm512_add_ps(cg, _mm512_mul_ps(t, av[i]));
      // as the portable loop: 0/1 multipliers, not masked adds, so NaN / inf in g or x propagate alike
      const __m512 mk = _mm512_maskz_mov_ps(zz.k, one);
      const __m512 u = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(gv, av[i]), bw), mk);
      s1 = _mm512_add_ps(s1, u);
      s1x = _mm512_add_ps(s1x, _mm512_mul_ps(u, zz.d));
      const __m512 md = _mm512_mul_ps(mk, zz.d);
      accm[i] = _mm512_add_ps(accm[i], mk);
      accx[i] = _mm512_add_ps(accx[i], md);
      cm = _mm512_add_ps(cm, mk);
      cx = _mm512_add_ps(cx, md);
    }
    stv<Full>(gaw + o, km, cg);
    stv<Full>(mw + o, km, cm);
    stv<Full>(mwx + o, km, cx);
  }
  for (int i = 0; i < R; ++i) {
    stv<Full>(gah + (h0 + i) * C, km, accg[i]);
    stv<Full>(mh + (h0 + i) * C, km, accm[i]);
    stv<Full>(mhx + (h0 + i) * C, km, accx[i]);
  }
}

// pool_bn_nhwc: R rows of one 16-channel block; same operations and order as pool_blk (bit-identical).
template <int R, bool Full>
CA_AVX512 void pool_bn_blk512(const float* x, __m512 m, __m512 a, __m512 b, float* ph, float* pw, i64 h0, i64 W,
                              i64 C, __mmask16 km, __m512 fw) {
  __m512 r[R];
  for (int i = 0; i < R; ++i) r[i] = _mm512_setzero_ps();
  for (i64 w = 0; w < W; ++w) {
    float* q = pw + w * C;
    __m512 s = ldv<Full>(q, km);
    for (int i = 0; i < R; ++i) {
      const i64 off = ((h0 + i) * W + w) * C;
      _mm_prefetch(reinterpret_cast<const char*>(x + off + kRows * W * C), _MM_HINT_T1);  // one row block ahead, as bn_gbwd_blk512
      const __m512 v = bn_z(ldv<Full>(x + off, km), m, a, b).y;
      r[i] = _mm512_add_ps(r[i], v);
      s = _mm512_add_ps(s, v);
    }
    stv<Full>(q, km, s);
  }
  for (int i = 0; i < R; ++i) stv<Full>(ph + (h0 + i) * C, km, _mm512_div_ps(r[i], fw));
}

template <int R, bool Full>
CA_AVX512 void pool_bn_rows512(const float* x, BnAff f, float* ph, float* pw, i64 h0, i64 W, i64 C, i64 c,
                               __mmask16 km) {
  pool_bn_blk512<R, Full>(x + c, ldv<Full>(f.m + c, km), ldv<Full>(f.a + c, km), ldv<Full>(f.b + c, km), ph + c,
                          pw + c, h0, W, C, km, _mm512_set1_ps(static_cast<float>(W)));
}

template <int R>
CA_AVX512 void pool_bn_block512(const float* x, BnAff f, float* ph, float* pw, i64 h0, i64 W, i64 C, i64 cn) {
  const i64 full = cn / 16 * 16;
  for (i64 c = 0; c < full; c += 16) pool_bn_rows512<R, true>(x, f, ph, pw, h0, W, C, c, 0xFFFF);
  if (full < cn) pool_bn_rows512<R, false>(x, f, ph, pw, h0, W, C, full, tail_mask(cn - full));
}

// Row blocks outer, channel blocks inner, as bn_gate_bwd_avx512; per element the same sums in the
// same order as pool_nhwc_t (bit-identical).
CA_AVX512_FN void pool_bn_avx512(const float* __restrict__ x, BnAff f, float* __restrict__ ph,
                                 float* __restrict__ pw, i64 H, i64 W, i64 C, i64 cn) {
  for (i64 w = 0; w < W; ++w) std::memset(pw + w * C, 0, cn * sizeof(float));
  i64 h = 0;
  for (; h + kRows <= H; h += kRows) pool_bn_block512<kRows>(x, f, ph, pw, h, W, C, cn);
  for (; h < H; ++h) pool_bn_block512<1>(x, f, ph, pw, h, W, C, cn);
  for (i64 w = 0; w < W; ++w) div_by(pw + w * C, cn, static_cast<float>(H));
}

constexpr int kRows512 = 2;

// Rows h0..h0+R-1 of channel block c (lanes km): s1 / s1x carried in their output strip.
template <int R, bool Full>
CA_AVX512 void bn_gate_bwd_rows512(const float* g, const float* x, BnAff f, const float* ah, const float* aw,
                                   BwdOut o, i64 h0, i64 W, i64 C, i64 c, __mmask16 km) {
  const __m512 m = ldv<Full>(f.m + c, km), a = ldv<Full>(f.a + c, km), b = ldv<Full>(f.b + c, km);
  __m512 s1 = ldv<Full>(o.s1 + c, km), s1x = ldv<Full>(o.s1x + c, km);
  bn_gbwd_blk512<R, Full>(g + c, x + c, ah + c, aw + c, o.gah + c, o.mh + c, o.mhx + c, o.gaw + c, o.mw + c,
                          o.mwx + c, s1, s1x, m, a, b, km, h0, W, C);
  stv<Full>(o.s1 + c, km, s1);
  stv<Full>(o.s1x + c, km, s1x);
}

template <int R>
CA_AVX512 void bn_gate_bwd_block512(const float* g, const float* x, BnAff f, const float* ah, const float* aw,
                                    BwdOut o, i64 h0, i64 W, i64 C, i64 cn) {
  const i64 full = cn / 16 * 16;
  for (i64 c = 0; c < full; c += 16) bn_gate_bwd_rows512<R, true>(g, x, f, ah, aw, o, h0, W, C, c, 0xFFFF);
  if (full < cn) bn_gate_bwd_rows512<R, false>(g, x, f, ah, aw, o, h0, W, C, full, tail_mask(cn - full));
}

// Row blocks outer, channel blocks inner: memory is walked block of rows by block of rows (the
// current block stays in L1/L2 while its channel blocks are visited), the next block prefetched.
CA_AVX512_FN void bn_gate_bwd_avx512(const float* __restrict__ g, const float* __restrict__ x, BnAff f,
                                     const float* __restrict__ ah, const float* __restrict__ aw, BwdOut o, i64 H,
                                     i64 W, i64 C, i64 cn) {
  for (float* p : {o.gaw, o.mw, o.mwx})
    for (i64 w = 0; w < W; ++w) std::memset(p + w * C, 0, cn * sizeof(float));
  std::memset(o.s1, 0, cn * sizeof(float));
  std::memset(o.s1x, 0, cn * sizeof(float));
  i64 h = 0;
  for (; h + kRows512 <= H; h += kRows512) bn_gate_bwd_block512<kRows512>(g, x, f, ah, aw, o, h, W, C, cn);
  for (; h < H; ++h) bn_gate_bwd_block512<1>(g, x, f, ah, aw, o, h, W, C, cn);
}

template <bool Full>
CA_AVX512 void bn_igrad_blk512(const float* g, const float* x, BnAff f, const float* ah, const float* aw,
                               const float* qh, const float* qw, const float* mg, const float* mgx, float* o,
                               __mmask16 km) {
  const __m512 a = ldv<Full>(f.a, km);
  const Z512 zz = bn_z(ldv<Full>(x, km), ldv<Full>(f.m, km), a, ldv<Full>(f.b, km));
  const __m512 gy = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(ldv<Full>(g, km), ldv<Full>(ah, km)), ldv<Full>(aw, km)),
                                  _mm512_add_ps(ldv<Full>(qh, km), ldv<Full>(qw, km)));
  const __m512 gz = _mm512_maskz_mov_ps(zz.k, gy);
  const __m512 r = _mm512_sub_ps(_mm512_sub_ps(gz, ldv<Full>(mg, km)), _mm512_mul_ps(zz.d, ldv<Full>(mgx, km)));
  stv<Full>(o, km, _mm512_mul_ps(a, r));
}

// bn_igrad_nhwc, pixel by pixel in memory order (a plain stream for the prefetchers).
CA_AVX512_FN void bn_igrad_avx512(const float* __restrict__ g, const float* __restrict__ x, BnAff f,
                                  const float* __restrict__ ah, const float* __restrict__ aw,
                                  const float* __restrict__ qh, const float* __restrict__ qw,
                                  const float* __restrict__ mg, const float* __restrict__ mgx, float* __restrict__ o,
                                  i64 H, i64 W, i64 C, i64 cn) {
  const i64 full = cn / 16 * 16;
  const __mmask16 kt = tail_mask(cn - full);
  for (i64 h = 0; h < H; ++h) {
    for (i64 w = 0; w < W; ++w) {
      const i64 off = (h * W + w) * C;
      const float *gp = g + off, *xp = x + off, *hp = ah + h * C, *wp = aw + w * C, *ph = qh + h * C, *pw = qw + w * C;
      float* op = o + off;
      for (i64 c = 0; c < full; c += 16)
        bn_igrad_blk512<true>(gp + c, xp + c, {f.m + c, f.a + c, f.b + c}, hp + c, wp + c, ph + c, pw + c, mg + c,
                              mgx + c, op + c, kt);
      if (full < cn)
        bn_igrad_blk512<false>(gp + full, xp + full, {f.m + full, f.a + full, f.b + full}, hp + full, wp + full,
                               ph + full, pw + full, mg + full, mgx + full, op + full, kt);
    }
  }
}
#endif  // COORDSWEEP_HAVE_AVX512

// One sample of bn_input_grad_hw's small sums (see there): q = g_pooled rows / W, columns / H;
// p[0:C] = s1 + sum_l q * mk, p[C:2C] = s1x + sum_l q * mkx.
CA_CLONES void pooled_grad_sums(const float* __restrict__ gp, const float* __restrict__ mk,
                                const float* __restrict__ mkx, const float* __restrict__ s1,
                                const float* __restrict__ s1x, float* __restrict__ q, float* __restrict__ p, i64 H,
                                i64 W, i64 C) {
  const float fw = static_cast<float>(W), fh = static_cast<float>(H);
  for (i64 i = 0; i < H * C; ++i) q[i] = gp[i] / fw;
  for (i64 i = H * C; i < (H + W) * C; ++i) q[i] = gp[i] / fh;
  float* p1 = p;
  float* p2 = p + C;
  for (i64 c = 0; c < C; ++c) {
    p1[c] = s1[c];
    p2[c] = s1x[c];
  }
  for (i64 l = 0; l < H + W; ++l) {
    const float *ql = q + l * C, *ml = mk + l * C, *xl = mkx + l * C;
    for (i64 c = 0; c < C; ++c) {
      p1[c] += ql[c] * ml[c];
      p2[c] += ql[c] * xl[c];
    }
  }
}

// ga *= (1 - a) * a over `rows` rows of cn channels, C apart: the sigmoid's backward applied to the
// gate gradients in place while they are in cache (the caller's gates are sigmoids).
CA_CLONES void sigmoid_grad_rows(float* __restrict__ ga, const float* __restrict__ a, i64 rows, i64 C, i64 cn) {
  for (i64 r = 0; r < rows; ++r)
    for (i64 c = 0; c < cn; ++c) ga[r * C + c] = ga[r * C + c] * ((1.f - a[r * C + c]) * a[r * C + c]);
}

// ---------------------------------------------------------------- h_swish of CA's middle part
// y (M, N, L) with L = H + W (the BatchNorm output of conv1, channel-major) ->
// act_h (M, N*H), act_w (M, N*W) = h_swish(y) split into the row and column parts, one pass.
// h_swish(y) = y * relu6(y + 3) / 6 in layers.HSwish's order (bit-identical to it).
CA_CLONES void hswish_split_rows(const float* __restrict__ y, float* __restrict__ oh, float* __restrict__ ow,
                                 i64 rows, i64 H, i64 W) {
  for (i64 r = 0; r < rows; ++r) {
    const float* yr = y + r * (H + W);
    for (i64 i = 0; i < H; ++i) oh[r * H + i] = yr[i] * relu6_f(yr[i] + 3.f) / 6.f;
    for (i64 i = 0; i < W; ++i) ow[r * W + i] = yr[H + i] * relu6_f(yr[H + i] + 3.f) / 6.f;
  }
}

// g_y = g * h_swish'(y) with h_swish'(y) = (relu6(y + 3) + y * [-3 < y < 3]) / 6; g given as the
// row part (M, N*H) and the column part (M, N*W), g_y (M, N, L) like y.
CA_CLONES void hswish_bwd_rows(const float* __restrict__ gh, const float* __restrict__ gw,
                               const float* __restrict__ y, float* __restrict__ o, i64 rows, i64 H, i64 W) {
  for (i64 r = 0; r < rows; ++r) {
    const float* yr = y + r * (H + W);
    float* orow = o + r * (H + W);
    for (i64 i = 0; i < H + W; ++i) {
      const float g = i < H ? gh[r * H + i] : gw[r * W + i - H];
      const float t = yr[i] + 3.f;
      const float in = (t > 0.f && t < 6.f) ? yr[i] : 0.f;
      orow[i] = g * (relu6_f(t) + in) / 6.f;
    }
  }
}

// ---------------------------------------------------------------- NCHW
// One task = one (n, c) plane of H x W; ph/ah/... point at that plane's H (or W) entries.
CA_INLINE float row_sum(const float* __restrict__ x, i64 n) {
  float acc[kLanes] = {};
  i64 i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int k = 0; k < kLanes; ++k) acc[k] += x[i + k];
  float s = 0.f;
  for (int k = 0; k < kLanes; ++k) s += acc[k];
  for (; i < n; ++i) s += x[i];
  return s;
}

CA_CLONES void pool_nchw(const float* __restrict__ x, float* __restrict__ ph, float* __restrict__ pw, i64 H, i64 W) {
  fill0(pw, W);
  for (i64 h = 0; h < H; ++h) {
    const float* xr = x + h * W;
    ph[h] = row_sum(xr, W) / static_cast<float>(W);
    for (i64 w = 0; w < W; ++w) pw[w] += xr[w];
  }
  div_by(pw, W, static_cast<float>(H));
}

CA_CLONES void gate_nchw(const float* __restrict__ x, const float* __restrict__ ah, const float* __restrict__ aw,
                         float* __restrict__ o, i64 H, i64 W) {
  for (i64 h = 0; h < H; ++h) {
    const float a = ah[h];
    const float* xr = x + h * W;
    float* orow = o + h * W;
    for (i64 w = 0; w < W; ++w) orow[w] = xr[w] * aw[w] * a;
  }
}

CA_CLONES void gate_bwd_nchw(const float* __restrict__ g, const float* __restrict__ x, const float* __restrict__ ah,
                             const float* __restrict__ aw, float* __restrict__ gah, float* __restrict__ gaw,
                             i64 H, i64 W) {
  fill0(gaw, W);
  for (i64 h = 0; h < H; ++h) {
    const float a = ah[h];
    const float* gr = g + h * W;
    const float* xr = x + h * W;
    float acc[kLanes] = {};
    i64 w = 0;
    for (; w + kLanes <= W; w += kLanes)
      for (int k = 0; k < kLanes; ++k) {
        const float t = gr[w + k] * xr[w + k];
        acc[k] += t * aw[w + k];
        gaw[w + k] += t * a;
      }
    float s = 0.f;
    for (int k = 0; k < kLanes; ++k) s += acc[k];
    for (; w < W; ++w) {
      const float t = gr[w] * xr[w];
      s += t * aw[w];
      gaw[w] += t * a;
    }
    gah[h] = s;
  }
}

CA_CLONES void igrad_nchw(const float* __restrict__ g, const float* __restrict__ ah, const float* __restrict__ aw,
                          const float* __restrict__ bh, const float* __restrict__ bw, float* __restrict__ o,
                          i64 H, i64 W) {
  for (i64 h = 0; h < H; ++h) {
    const float a = ah[h], b = bh[h];
    const float* gr = g + h * W;
    float* orow = o + h * W;
    for (i64 w = 0; w < W; ++w) orow[w] = gr[w] * a * aw[w] + (b + bw[w]);
  }
}

// ---------------------------------------------------------------- dispatch helpers
struct Geo {
  i64 N, C, H, W;
  bool cl;  // channels_last memory
};

Geo check_input(const at::Tensor& x, const char* what) {
  TORCH_CHECK(x.dim() == 4, what, ": expected a 4-D tensor, got ", x.dim(), "-D");
  TORCH_CHECK(x.device().is_cpu(), what, ": expected a CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat, what, ": expected float32, got ", x.scalar_type());
  Geo g{x.size(0), x.size(1), x.size(2), x.size(3), false};
  if (x.is_contiguous()) {
    g.cl = false;
  } else {
    TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), what,
                ": expected NCHW-contiguous or channels_last memory");
    g.cl = true;
  }
  return g;
}

// A small (N, L, C) tensor as the kernel wants it: (N, L, C)-contiguous for channels_last,
// (N, C, L)-contiguous (returned as such) for NCHW.
at::Tensor small_in(const at::Tensor& t, const Geo& g, i64 L, const char* what) {
  TORCH_CHECK(t.dim() == 3 && t.size(0) == g.N && t.size(1) == L && t.size(2) == g.C, what,
              ": expected shape (", g.N, ", ", L, ", ", g.C, "), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu(), what, ": expected a float32 CPU tensor");
  return g.cl ? t.contiguous() : t.transpose(1, 2).contiguous();
}

at::Tensor new_big(const Geo& g, const at::Tensor& like) {
  return at::empty({g.N, g.C, g.H, g.W}, like.options(),
                   g.cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

// Channel blocking for channels_last: enough tasks for every thread even when N is small.
i64 channel_block(const Geo& g) {
  const i64 threads = at::get_num_threads();
  if (g.N >= 4 * threads || g.C <= 32) return g.C;
  const i64 want_blocks = (4 * threads + g.N - 1) / g.N;
  i64 cb = (g.C + want_blocks - 1) / want_blocks;
  cb = std::max<i64>(32, (cb + 15) / 16 * 16);
  return std::min(cb, g.C);
}

template <typename F>
void for_nhwc_tasks(const Geo& g, const F& f) {
  const i64 cb = channel_block(g);
  const i64 nb = (g.C + cb - 1) / cb;
  at::parallel_for(0, g.N * nb, 1, [&](i64 begin, i64 end) {
    for (i64 t = begin; t < end; ++t) {
      const i64 n = t / nb, c0 = (t % nb) * cb;
      f(n, c0, std::min(cb, g.C - c0));
    }
  });
}

template <typename F>
void for_nchw_planes(const Geo& g, const F& f) {
  const i64 grain = std::max<i64>(1, 16384 / std::max<i64>(1, g.H * g.W));
  at::parallel_for(0, g.N * g.C, grain, [&](i64 begin, i64 end) {
    for (i64 p = begin; p < end; ++p) f(p);
  });
}

// ---------------------------------------------------------------- ops
at::Tensor pool_hw(const at::Tensor& x_) {
  const Geo g = check_input(x_, "pool_hw");
  const at::Tensor x = x_;
  const i64 L = g.H + g.W;
  const float* xp = x.data_ptr<float>();
  if (g.cl) {
    at::Tensor out = at::empty({g.N, L, g.C}, x.options());
    float* op = out.data_ptr<float>();
    for_nhwc_tasks(g, [&](i64 n, i64 c0, i64 cn) {
      float* ph = op + n * L * g.C + c0;
      pool_nhwc(xp + n * g.H * g.W * g.C + c0, ph, ph + g.H * g.C, g.H, g.W, g.C, cn);
    });
    return out;
  }
  at::Tensor out = at::empty({g.N, g.C, L}, x.options());
  float* op = out.data_ptr<float>();
  for_nchw_planes(g, [&](i64 p) {
    pool_nchw(xp + p * g.H * g.W, op + p * L, op + p * L + g.H, g.H, g.W);
  });
  return out.transpose(1, 2);
}

at::Tensor gate_hw(const at::Tensor& x, const at::Tensor& a_h_, const at::Tensor& a_w_) {
  const Geo g = check_input(x, "gate_hw");
  const at::Tensor a_h = small_in(a_h_, g, g.H, "gate_hw(a_h)");
  const at::Tensor a_w = small_in(a_w_, g, g.W, "gate_hw(a_w)");
  at::Tensor out = new_big(g, x);
  const float *xp = x.data_ptr<float>(), *hp = a_h.data_ptr<float>(), *wp = a_w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  if (g.cl) {
    for_nhwc_tasks(g, [&](i64 n, i64 c0, i64 cn) {
      const i64 big = n * g.H * g.W * g.C + c0;
      gate_nhwc(xp + big, hp + n * g.H * g.C + c0, wp + n * g.W * g.C + c0, op + big, g.H, g.W, g.C, cn);
    });
  } else {
    for_nchw_planes(g, [&](i64 p) {
      gate_nchw(xp + p * g.H * g.W, hp + p * g.H, wp + p * g.W, op + p * g.H * g.W, g.H, g.W);
    });
  }
  return out;
}

// Gradients of the gates: ga_h = sum_w grad * x * a_w, ga_w = sum_h grad * x * a_h.
std::tuple<at::Tensor, at::Tensor> gate_hw_backward(const at::Tensor& grad, const at::Tensor& x,
                                                    const at::Tensor& a_h_, const at::Tensor& a_w_, bool sigmoid) {
  const Geo g = check_input(x, "gate_hw_backward(x)");
  TORCH_CHECK(grad.sizes() == x.sizes(), "gate_hw_backward: grad shape ", grad.sizes(), " != x shape ", x.sizes());
  const Geo gg = check_input(grad, "gate_hw_backward(grad)");
  TORCH_CHECK(gg.cl == g.cl, "gate_hw_backward: grad and x must share one memory format");
  const at::Tensor a_h = small_in(a_h_, g, g.H, "gate_hw_backward(a_h)");
  const at::Tensor a_w = small_in(a_w_, g, g.W, "gate_hw_backward(a_w)");
  const float *gp = grad.data_ptr<float>(), *xp = x.data_ptr<float>();
  const float *hp = a_h.data_ptr<float>(), *wp = a_w.data_ptr<float>();
  at::Tensor ga_h = at::empty_like(a_h), ga_w = at::empty_like(a_w);  // kernel layout
  float *ghp = ga_h.data_ptr<float>(), *gwp = ga_w.data_ptr<float>();
  if (g.cl) {
    for_nhwc_tasks(g, [&](i64 n, i64 c0, i64 cn) {
      const i64 big = n * g.H * g.W * g.C + c0, sh = n * g.H * g.C + c0, sw = n * g.W * g.C + c0;
      gate_bwd_nhwc(gp + big, xp + big, hp + sh, wp + sw, ghp + sh, gwp + sw, g.H, g.W, g.C, cn);
      if (sigmoid) {
        sigmoid_grad_rows(ghp + sh, hp + sh, g.H, g.C, cn);
        sigmoid_grad_rows(gwp + sw, wp + sw, g.W, g.C, cn);
      }
    });
    return {ga_h, ga_w};
  }
  for_nchw_planes(g, [&](i64 p) {
    const i64 big = p * g.H * g.W;
    gate_bwd_nchw(gp + big, xp + big, hp + p * g.H, wp + p * g.W, ghp + p * g.H, gwp + p * g.W, g.H, g.W);
    if (sigmoid) {
      sigmoid_grad_rows(ghp + p * g.H, hp + p * g.H, 1, g.H, g.H);
      sigmoid_grad_rows(gwp + p * g.W, wp + p * g.W, 1, g.W, g.W);
    }
  });
  return {ga_h.transpose(1, 2), ga_w.transpose(1, 2)};
}

// grad_x = grad * a_h * a_w + g_pooled[:, :H] / W (broadcast over w) + g_pooled[:, H:] / H (over h).
at::Tensor input_grad_hw(const at::Tensor& grad, const at::Tensor& a_h_, const at::Tensor& a_w_,
                         const at::Tensor& g_pooled_) {
  const Geo g = check_input(grad, "input_grad_hw(grad)");
  const at::Tensor a_h = small_in(a_h_, g, g.H, "input_grad_hw(a_h)");
  const at::Tensor a_w = small_in(a_w_, g, g.W, "input_grad_hw(a_w)");
  const i64 L = g.H + g.W;
  const at::Tensor gpool = small_in(g_pooled_, g, L, "input_grad_hw(g_pooled)");
  at::Tensor out = new_big(g, grad);
  const float *gp = grad.data_ptr<float>(), *hp = a_h.data_ptr<float>(), *wp = a_w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  if (g.cl) {
    const float* pp = gpool.data_ptr<float>();
    for_nhwc_tasks(g, [&](i64 n, i64 c0, i64 cn) {
      const i64 big = n * g.H * g.W * g.C + c0, sh = n * g.H * g.C + c0, sw = n * g.W * g.C + c0;
      const float* pn = pp + n * L * g.C + c0;
      igrad_nhwc(gp + big, hp + sh, wp + sw, pn, pn + g.H * g.C, op + big, g.H, g.W, g.C, cn);
    });
    return out;
  }
  // NCHW: the pooled gradients scaled once (small): b[..., :H] = g_pooled / W, b[..., H:] = g_pooled / H.
  at::Tensor b = gpool.clone();
  b.narrow(2, 0, g.H).div_(static_cast<double>(g.W));
  b.narrow(2, g.H, g.W).div_(static_cast<double>(g.H));
  const float* bp = b.data_ptr<float>();
  for_nchw_planes(g, [&](i64 p) {
    const i64 big = p * g.H * g.W;
    igrad_nchw(gp + big, hp + p * g.H, wp + p * g.W, bp + p * L, bp + p * L + g.H, op + big, g.H, g.W);
  });
  return out;
}


// ---------------------------------------------------------------- ops fused with BN + ReLU6
Geo check_cl(const at::Tensor& x, const char* what) {
  const Geo g = check_input(x, what);
  TORCH_CHECK(g.cl, what, ": expected channels_last memory");
  return g;
}

at::Tensor chan_vec(const at::Tensor& t, const Geo& g, const char* what) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == g.C && t.scalar_type() == at::kFloat && t.device().is_cpu(), what,
              ": expected a float32 CPU tensor of shape (", g.C, ")");
  return t.contiguous();
}

struct Aff {
  at::Tensor m, a, b;
  BnAff at(i64 c0) const { return {m.data_ptr<float>() + c0, a.data_ptr<float>() + c0, b.data_ptr<float>() + c0}; }
};

Aff aff_in(const at::Tensor& mean, const at::Tensor& a, const at::Tensor& b, const Geo& g, const char* what) {
  return {chan_vec(mean, g, what), chan_vec(a, g, what), chan_vec(b, g, what)};
}

// Row and column means of y = clamp((x - mean) * a + b, 0, 6): (N, H+W, C), as pool_hw.
at::Tensor pool_hw_bn(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& a, const at::Tensor& b) {
  const Geo g = check_cl(x, "pool_hw_bn");
  const Aff f = aff_in(mean, a, b, g, "pool_hw_bn(mean/a/b)");
  const i64 L = g.H + g.W;
  const float* xp = x.data_ptr<float>();
  at::Tensor out = at::empty({g.N, L, g.C}, x.options());
  float* op = out.data_ptr<float>();
  for_nhwc_tasks(g, [&](i64 n, i64 c0, i64 cn) {
    float* ph = op + n * L * g.C + c0;
#if COORDSWEEP_HAVE_AVX512
    if (use_avx512()) {
      pool_bn_avx512(xp + n * g.H * g.W * g.C + c0, f.at(c0), ph, ph + g.H * g.C, g.H, g.W, g.C, cn);
      return;
    }
#endif
    pool_bn_nhwc(xp + n * g.H * g.W * g.C + c0, f.at(c0), ph, ph + g.H * g.C, g.H, g.W, g.C, cn);
  });
  return out;
}

// y * a_w * a_h with y as in pool_hw_bn.
at::Tensor gate_hw_bn(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& a, const at::Tensor& b,
                      const at::Tensor& a_h_, const at::Tensor& a_w_) {
  const Geo g = check_cl(x, "gate_hw_bn");
  const Aff f = aff_in(mean, a, b, g, "gate_hw_bn(mean/a/b)");
  const at::Tensor a_h = small_in(a_h_, g, g.H, "gate_hw_bn(a_h)");
  const at::Tensor a_w = small_in(a_w_, g, g.W, "gate_hw_bn(a_w)");
  at::Tensor out = new_big(g, x);
  const float *xp = x.data_ptr<float>(), *hp = a_h.data_ptr<float>(), *wp = a_w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for_nhwc_tasks(g, [&](i64 n, i64 c0, i64 cn) {
    const i64 big = n * g.H * g.W * g.C + c0;
    gate_bn_nhwc(xp + big, f.at(c0), hp + n * g.H * g.C + c0, wp + n * g.W * g.C + c0, op + big, g.H, g.W, g.C, cn);
  });
  return out;
}

// -> (ga_h (N,H,C), ga_w (N,W,C), mask_sums (N,H+W,C), mask_d_sums (N,H+W,C), s1 (N,C), s1x (N,C)).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_gate_hw_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& a, const at::Tensor& b,
    const at::Tensor& a_h_, const at::Tensor& a_w_, bool sigmoid) {
  const Geo g = check_cl(x, "bn_gate_hw_backward(x)");
  check_cl(grad, "bn_gate_hw_backward(grad)");
  TORCH_CHECK(grad.sizes() == x.sizes(), "bn_gate_hw_backward: grad shape ", grad.sizes(), " != x shape ", x.sizes());
  const Aff f = aff_in(mean, a, b, g, "bn_gate_hw_backward(mean/a/b)");
  const at::Tensor a_h = small_in(a_h_, g, g.H, "bn_gate_hw_backward(a_h)");
  const at::Tensor a_w = small_in(a_w_, g, g.W, "bn_gate_hw_backward(a_w)");
  const i64 L = g.H + g.W;
  at::Tensor ga_h = at::empty_like(a_h), ga_w = at::empty_like(a_w);
  at::Tensor mk = at::empty({g.N, L, g.C}, x.options()), mkx = at::empty({g.N, L, g.C}, x.options());
  at::Tensor s1 = at::empty({g.N, g.C}, x.options()), s1x = at::empty({g.N, g.C}, x.options());
  const float *gp = grad.data_ptr<float>(), *xp = x.data_ptr<float>();
  const float *hp = a_h.data_ptr<float>(), *wp = a_w.data_ptr<float>();
  for_nhwc_tasks(g, [&](i64 n, i64 c0, i64 cn) {
    const i64 big = n * g.H * g.W * g.C + c0, sh = n * g.H * g.C + c0, sw = n * g.W * g.C + c0;
    const i64 sl = n * L * g.C + c0;
    BwdOut o{ga_h.data_ptr<float>() + sh, ga_w.data_ptr<float>() + sw,
             mk.data_ptr<float>() + sl, mkx.data_ptr<float>() + sl,
             mk.data_ptr<float>() + sl + g.H * g.C, mkx.data_ptr<float>() + sl + g.H * g.C,
             s1.data_ptr<float>() + n * g.C + c0, s1x.data_ptr<float>() + n * g.C + c0};
#if COORDSWEEP_HAVE_AVX512
    if (use_avx512())
      bn_gate_bwd_avx512(gp + big, xp + big, f.at(c0), hp + sh, wp + sw, o, g.H, g.W, g.C, cn);
    else
#endif
      bn_gate_bwd_nhwc(gp + big, xp + big, f.at(c0), hp + sh, wp + sw, o, g.H, g.W, g.C, cn);
    if (sigmoid) {  // while this task's gate gradients are in cache
      sigmoid_grad_rows(o.gah, hp + sh, g.H, g.C, cn);
      sigmoid_grad_rows(o.gaw, wp + sw, g.W, g.C, cn);
    }
  });
  return {ga_h, ga_w, mk, mkx, s1, s1x};
}

// Backward of BN + ReLU6 + CA, second half: -> (grad_x, grad_weight, grad_bias). g_pooled (N, H+W, C)
// is the gradient of the pooled means (from the middle part), mk / mkx / s1 / s1x the sums
// bn_gate_hw_backward returned. BN's masked sums over all pixels are assembled here (float
// partial sums per sample, double across samples, fixed order), then one pass writes grad_x.
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_input_grad_hw(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd_,
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_h_, const at::Tensor& a_w_,
    const at::Tensor& g_pooled_, const at::Tensor& mk_, const at::Tensor& mkx_, const at::Tensor& s1_,
    const at::Tensor& s1x_) {
  const Geo g = check_cl(x, "bn_input_grad_hw(x)");
  check_cl(grad, "bn_input_grad_hw(grad)");
  TORCH_CHECK(grad.sizes() == x.sizes(), "bn_input_grad_hw: grad shape ", grad.sizes(), " != x shape ", x.sizes());
  const Aff f = aff_in(mean, a, b, g, "bn_input_grad_hw(mean/a/b)");
  const at::Tensor invstd = chan_vec(invstd_, g, "bn_input_grad_hw(invstd)");
  const at::Tensor a_h = small_in(a_h_, g, g.H, "bn_input_grad_hw(a_h)");
  const at::Tensor a_w = small_in(a_w_, g, g.W, "bn_input_grad_hw(a_w)");
  const i64 L = g.H + g.W, C = g.C;
  const at::Tensor gp = small_in(g_pooled_, g, L, "bn_input_grad_hw(g_pooled)");
  const at::Tensor mk = small_in(mk_, g, L, "bn_input_grad_hw(mk)"), mkx = small_in(mkx_, g, L, "bn_input_grad_hw(mkx)");
  TORCH_CHECK(s1_.dim() == 2 && s1_.size(0) == g.N && s1_.size(1) == C && s1x_.sizes() == s1_.sizes(),
              "bn_input_grad_hw: s1 / s1x must be (N, C)");
  const at::Tensor s1 = s1_.contiguous(), s1x = s1x_.contiguous();
  // q = g_pooled with rows divided by W and columns by H: the per-pixel terms of dL/dy; per sample
  // (in parallel) p1 = s1 + sum_l q * mk, p2 = s1x + sum_l q * mkx; then summed over samples in
  // double, in sample order.
  at::Tensor q = at::empty({g.N, L, C}, x.options()), p12 = at::empty({g.N, 2, C}, x.options());
  const float *gpp = gp.data_ptr<float>(), *mkp = mk.data_ptr<float>(), *mxp = mkx.data_ptr<float>();
  const float *s1p = s1.data_ptr<float>(), *s1xp = s1x.data_ptr<float>();
  float *qp = q.data_ptr<float>(), *pp = p12.data_ptr<float>();
  at::parallel_for(0, g.N, 1, [&](i64 begin, i64 end) {
    for (i64 n = begin; n < end; ++n) {
      const i64 o = n * L * C;
      pooled_grad_sums(gpp + o, mkp + o, mxp + o, s1p + n * C, s1xp + n * C, qp + o, pp + 2 * n * C, g.H, g.W, C);
    }
  });
  std::vector<double> sg(C, 0.0), sgx(C, 0.0);
  for (i64 n = 0; n < g.N; ++n) {
    for (i64 c = 0; c < C; ++c) {
      sg[c] += pp[2 * n * C + c];
      sgx[c] += pp[(2 * n + 1) * C + c];
    }
  }
  const double M = static_cast<double>(g.N * g.H * g.W);
  at::Tensor mg = at::empty({C}, x.options()), mgx = at::empty({C}, x.options());
  at::Tensor gw = at::empty({C}, x.options()), gb = at::empty({C}, x.options());
  const float* ip = invstd.data_ptr<float>();
  for (i64 c = 0; c < C; ++c) {  // as bn_relu6_backward
    gb.data_ptr<float>()[c] = static_cast<float>(sg[c]);
    gw.data_ptr<float>()[c] = static_cast<float>(sgx[c] * ip[c]);
    mg.data_ptr<float>()[c] = static_cast<float>(sg[c] / M);
    mgx.data_ptr<float>()[c] = static_cast<float>(sgx[c] / M * ip[c] * ip[c]);
  }
  at::Tensor out = new_big(g, x);
  const float *gradp = grad.data_ptr<float>(), *xp = x.data_ptr<float>(), *hp = a_h.data_ptr<float>();
  const float* wp = a_w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for_nhwc_tasks(g, [&](i64 n, i64 c0, i64 cn) {
    const i64 big = n * g.H * g.W * C + c0, sh = n * g.H * C + c0, sw = n * g.W * C + c0;
    const float* qn = qp + n * L * C + c0;
#if COORDSWEEP_HAVE_AVX512
    if (use_avx512()) {
      bn_igrad_avx512(gradp + big, xp + big, f.at(c0), hp + sh, wp + sw, qn, qn + g.H * C, mg.data_ptr<float>() + c0,
                      mgx.data_ptr<float>() + c0, op + big, g.H, g.W, C, cn);
      return;
    }
#endif
    bn_igrad_nhwc(gradp + big, xp + big, f.at(c0), hp + sh, wp + sw, qn, qn + g.H * C, mg.data_ptr<float>() + c0,
                  mgx.data_ptr<float>() + c0, op + big, g.H, g.W, C, cn);
  });
  return {out, gw, gb};
}

}  // namespace

// ---------------------------------------------------------------- ops: CA's middle part
std::tuple<at::Tensor, at::Tensor> hswish_split(const at::Tensor& y_, int64_t H) {
  TORCH_CHECK(y_.dim() == 3 && y_.scalar_type() == at::kFloat && y_.device().is_cpu(),
              "hswish_split: expected a float32 CPU tensor (M, N, L)");
  const at::Tensor y = y_.contiguous();
  const i64 M = y.size(0), N = y.size(1), L = y.size(2), W = L - H;
  TORCH_CHECK(H >= 0 && W >= 0, "hswish_split: H=", H, " outside [0, L=", L, "]");
  at::Tensor oh = at::empty({M, N * H}, y.options()), ow = at::empty({M, N * W}, y.options());
  hswish_split_rows(y.data_ptr<float>(), oh.data_ptr<float>(), ow.data_ptr<float>(), M * N, H, W);
  return {oh, ow};
}

at::Tensor hswish_backward(const at::Tensor& g_h_, const at::Tensor& g_w_, const at::Tensor& y_) {
  TORCH_CHECK(y_.dim() == 3 && y_.scalar_type() == at::kFloat && y_.device().is_cpu(),
              "hswish_backward: expected a float32 CPU tensor y (M, N, L)");
  const at::Tensor y = y_.contiguous(), g_h = g_h_.contiguous(), g_w = g_w_.contiguous();
  const i64 M = y.size(0), N = y.size(1), L = y.size(2);
  TORCH_CHECK(g_h.dim() == 2 && g_w.dim() == 2 && g_h.size(0) == M && g_w.size(0) == M && g_h.size(1) % N == 0 &&
                  g_w.size(1) % N == 0 && g_h.size(1) / N + g_w.size(1) / N == L,
              "hswish_backward: g_h (M, N*H) and g_w (M, N*W) must match y (M, N, H+W)");
  const i64 H = g_h.size(1) / N, W = L - H;
  at::Tensor out = at::empty_like(y);
  hswish_bwd_rows(g_h.data_ptr<float>(), g_w.data_ptr<float>(), y.data_ptr<float>(), out.data_ptr<float>(), M * N,
                  H, W);
  return out;
}

TORCH_LIBRARY(coordsweep_ca, m) {
  m.def("simd_path() -> str", simd_path);  // "avx512" or "generic" (COORDSWEEP_SIMD=generic forces the latter)
  m.def("hswish_split(Tensor y, int h) -> (Tensor, Tensor)");
  m.def("hswish_backward(Tensor g_h, Tensor g_w, Tensor y) -> Tensor");
  m.def("pool_hw(Tensor x) -> Tensor");
  m.def("gate_hw(Tensor x, Tensor a_h, Tensor a_w) -> Tensor");
  // sigmoid=True: return the gradients of the gates' pre-activations, ga * (1 - a) * a
  m.def("gate_hw_backward(Tensor grad, Tensor x, Tensor a_h, Tensor a_w, bool sigmoid=False) -> (Tensor, Tensor)");
  m.def("input_grad_hw(Tensor grad, Tensor a_h, Tensor a_w, Tensor g_pooled) -> Tensor");
  m.def("pool_hw_bn(Tensor x, Tensor mean, Tensor a, Tensor b) -> Tensor");
  m.def("gate_hw_bn(Tensor x, Tensor mean, Tensor a, Tensor b, Tensor a_h, Tensor a_w) -> Tensor");
  m.def("bn_gate_hw_backward(Tensor grad, Tensor x, Tensor mean, Tensor a, Tensor b, Tensor a_h, Tensor a_w,"
        " bool sigmoid=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("bn_input_grad_hw(Tensor grad, Tensor x, Tensor mean, Tensor invstd, Tensor a, Tensor b, Tensor a_h,"
        " Tensor a_w, Tensor g_pooled, Tensor mk, Tensor mkx, Tensor s1, Tensor s1x) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(coordsweep_ca, CPU, m) {
  m.impl("pool_hw", &pool_hw);
  m.impl("hswish_split", &hswish_split);
  m.impl("hswish_backward", &hswish_backward);
  m.impl("gate_hw", &gate_hw);
  m.impl("gate_hw_backward", &gate_hw_backward);
  m.impl("input_grad_hw", &input_grad_hw);
  m.impl("pool_hw_bn", &pool_hw_bn);
  m.impl("gate_hw_bn", &gate_hw_bn);
  m.impl("bn_gate_hw_backward", &bn_gate_hw_backward);
  m.impl("bn_input_grad_hw", &bn_input_grad_hw);
}
