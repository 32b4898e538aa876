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

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
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
    stats_rows(xp + r0 * C, rows, C, k.data(), ps, pq);
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
  rows_parallel(M, C, [&](i64 r0, i64 rows) { norm_clamp_rows(xp + r0 * C, yp + r0 * C, rows, C, a.data(), b.data(), mp); });
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
    bwd_sums_rows(gp + r0 * C, xp + r0 * C, rows, C, a.data(), b.data(), mp, p1, p2);
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
    bwd_input_rows(gp + r0 * C, xp + r0 * C, dp + r0 * C, rows, C, a.data(), b.data(), mp, mg.data(), mgx.data());
  });
  return {dx, gw, gb};
}

}  // namespace

TORCH_LIBRARY(coordsweep_bn, m) {
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
