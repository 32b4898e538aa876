// Shared by the CPU kernels (search_space/bn_relu6_cpu.cpp, search_space/attention/coord_cpu.cpp):
// whether this process runs their AVX-512 forms, and the lane mask of a channel tail.
//
// The AVX-512 forms are used when the CPU has AVX-512F and COORDSWEEP_SIMD is not "generic"
// (read once per process, when the first op asks); each extension reports the decision as
// torch.ops.<namespace>.simd_path(): "avx512" or "generic".
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define COORDSWEEP_HAVE_AVX512 1
#include <immintrin.h>
#else
#define COORDSWEEP_HAVE_AVX512 0
#endif

namespace coordsweep_simd {

inline bool use_avx512() {
  static const bool on = [] {
#if COORDSWEEP_HAVE_AVX512
    const char* env = std::getenv("COORDSWEEP_SIMD");
    if (env != nullptr && std::strcmp(env, "generic") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
#else
    return false;
#endif
  }();
  return on;
}

inline std::string simd_path() { return use_avx512() ? "avx512" : "generic"; }

#if COORDSWEEP_HAVE_AVX512
// Lanes of a 16-float vector that hold one of the `left` remaining channels.
inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}
#endif

}  // namespace coordsweep_simd
