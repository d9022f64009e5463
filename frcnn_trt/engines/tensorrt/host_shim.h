// Host shim: lets the RoI-pool CUDA kernel (roi_pool.cu, unchanged) compile as host C++ for the CPU emulation
// in frcnn_trt.engines.tensorrt.emulation. The translation unit is
//   this header + kernel.kernel_source(...) (the shipped roi_pool.cu after the same baked constants as the
//   NVRTC path) + one FRCNN_HOST_LAUNCHER(entry) line.
// Nothing here defines or changes the FRCNN_* constants; it only supplies what CUDA C would:
//   __global__ / __device__ / __forceinline__   empty / inline
//   blockIdx, threadIdx, blockDim, gridDim      per-host-thread variables; the launcher loops over the grid
//                                               and the block, running the kernel body once per (block, thread)
//   max(int, int)                               CUDA's integer max
//   the two PTX `cvt` inline-asm statements     a software IEEE half <-> float32 conversion:
//       cvt.f32.f16      exact widening;  cvt.rn.f16.f32  round to nearest even, overflow to +-inf,
//       subnormal halves kept (no .ftz), NaN stays NaN.
// The asm statements are matched by their full text at compile time (static_assert), so a changed kernel
// fails to build here instead of being emulated wrongly.
// Glossary: N images, C channels, H x W feature map, R RoIs, PH x PW pooled shape.

#include <math.h>
#include <stdint.h>
#include <string.h>

#define __global__
#define __device__
#define __forceinline__ inline

struct frcnn_host_dim3 {
  unsigned int x, y, z;
};
static thread_local frcnn_host_dim3 blockIdx = {0, 0, 0};
static thread_local frcnn_host_dim3 threadIdx = {0, 0, 0};
static thread_local frcnn_host_dim3 blockDim = {1, 1, 1};
static thread_local frcnn_host_dim3 gridDim = {1, 1, 1};

static inline int max(int a, int b) { return a > b ? a : b; }

// ---- IEEE binary16 <-> binary32 (the PTX cvt instructions the kernel uses) ----------------------------

static inline float frcnn_host_bits_to_float(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

static inline uint32_t frcnn_host_float_to_bits(float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof bits);
  return bits;
}

// cvt.f32.f16: every half is exactly a float.
static inline float frcnn_host_half_to_float(unsigned short h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  if (exp == 0x1Fu) return frcnn_host_bits_to_float(sign | 0x7F800000u | (mant << 13));  // inf / NaN
  if (exp != 0) return frcnn_host_bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return frcnn_host_bits_to_float(sign);  // +-0
  int e = 113;  // subnormal half: normalise
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    --e;
  }
  return frcnn_host_bits_to_float(sign | ((uint32_t)e << 23) | ((mant & 0x3FFu) << 13));
}

// cvt.rn.f16.f32: round to nearest, ties to even.
static inline unsigned short frcnn_host_float_to_half_rn(float f) {
  const uint32_t bits = frcnn_host_float_to_bits(f);
  const unsigned short sign = (unsigned short)((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return (unsigned short)(sign | 0x7E00u | ((abs >> 13) & 0x3FFu));  // NaN
  if (abs >= 0x477FF000u) return (unsigned short)(sign | 0x7C00u);  // rounds past 65504: inf
  if (abs < 0x38800000u) {                                          // below 2^-14: subnormal half or 0
    if (abs < 0x33000000u) return sign;                             // below 2^-25: rounds to 0
    const uint32_t exp = abs >> 23;
    const uint32_t mant = (abs & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126u - exp;  // 14..24
    uint32_t half = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1u);
    const uint32_t tie = 1u << (shift - 1u);
    if (rest > tie || (rest == tie && (half & 1u))) ++half;
    return (unsigned short)(sign | half);
  }
  uint32_t half = ((abs >> 13) - (112u << 10));  // rebias the exponent, keep 10 mantissa bits
  const uint32_t rest = abs & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;  // a carry moves into the exponent
  return (unsigned short)(sign | half);
}

// ---- the kernel's inline asm --------------------------------------------------------------------------
// roi_pool.cu has exactly two asm statements:
//   frcnn_load:  float f;  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(*p));  return f;
//   frcnn_store: frcnn_half_bits h;  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));  *p = h;
// The asm macro below passes the statement's text plus the operand names f, h, p, v of whichever function
// it is in; the names a function lacks resolve to the placeholders declared here (a local of the same name
// shadows them), and overloading on the operand types picks the conversion.

struct frcnn_host_no_operand {};
static const frcnn_host_no_operand f = {}, h = {}, v = {};

enum { FRCNN_HOST_ASM_UNKNOWN = 0, FRCNN_HOST_ASM_H2F = 1, FRCNN_HOST_ASM_F2H = 2 };

static constexpr bool frcnn_host_same(const char* a, const char* b) {
  return *a == *b && (*a == '\0' || frcnn_host_same(a + 1, b + 1));
}

static constexpr int frcnn_host_asm_form(const char* text) {
  return frcnn_host_same(text, "\"cvt.f32.f16 %0, %1;\" : \"=f\"(f) : \"h\"(*p)")         ? FRCNN_HOST_ASM_H2F
         : frcnn_host_same(text, "\"cvt.rn.f16.f32 %0, %1;\" : \"=h\"(h) : \"f\"(v)") ? FRCNN_HOST_ASM_F2H
                                                                                        : FRCNN_HOST_ASM_UNKNOWN;
}

template <int Form>
static inline void frcnn_host_asm(float& out, frcnn_host_no_operand, const unsigned short* p,
                                  frcnn_host_no_operand) {
  static_assert(Form == FRCNN_HOST_ASM_H2F, "asm text does not match a half -> float load");
  out = frcnn_host_half_to_float(*p);
}

template <int Form>
static inline void frcnn_host_asm(frcnn_host_no_operand, unsigned short& out, unsigned short*, float value) {
  static_assert(Form == FRCNN_HOST_ASM_F2H, "asm text does not match a float -> half store");
  out = frcnn_host_float_to_half_rn(value);
}

#define asm(...)                                                                                          \
  static_assert(frcnn_host_asm_form(#__VA_ARGS__) != FRCNN_HOST_ASM_UNKNOWN,                             \
                "host_shim.h does not know this inline asm of roi_pool.cu: " #__VA_ARGS__);               \
  frcnn_host_asm<frcnn_host_asm_form(#__VA_ARGS__)>(f, h, p, v)

// ---- launcher -----------------------------------------------------------------------------------------
// FRCNN_HOST_LAUNCHER(entry) (after the kernel) defines
//   int frcnn_host_launch(features, rois, N, C, H, W, R, output, grid_x, block_x)
// which runs `entry` over a grid_x x block_x 1-D launch, one (block, thread) after another; 0 = ran.

template <typename FeatT, typename RoiT>
static int frcnn_host_run(void (*entry)(const FeatT*, const RoiT*, int, int, int, int, int, FeatT*),
                          const void* features, const void* rois, int N, int C, int H, int W, int R,
                          void* output, unsigned int grid_x, unsigned int block_x) {
  if (grid_x == 0 || block_x == 0) return 1;
  gridDim = {grid_x, 1, 1};
  blockDim = {block_x, 1, 1};
  for (unsigned int b = 0; b < grid_x; ++b) {
    blockIdx = {b, 0, 0};
    for (unsigned int t = 0; t < block_x; ++t) {
      threadIdx = {t, 0, 0};
      entry((const FeatT*)features, (const RoiT*)rois, N, C, H, W, R, (FeatT*)output);
    }
  }
  return 0;
}

#define FRCNN_HOST_LAUNCHER(entry)                                                                        \
  extern "C" int frcnn_host_launch(const void* features, const void* rois, int N, int C, int H, int W,   \
                                   int R, void* output, unsigned int grid_x, unsigned int block_x) {      \
    return frcnn_host_run(entry, features, rois, N, C, H, W, R, output, grid_x, block_x);                \
  }                                                                                                       \
  extern "C" void frcnn_host_half_to_float_n(const unsigned short* in, float* out, long long n) {         \
    for (long long i = 0; i < n; ++i) out[i] = frcnn_host_half_to_float(in[i]);                          \
  }                                                                                                       \
  extern "C" void frcnn_host_float_to_half_n(const float* in, unsigned short* out, long long n) {         \
    for (long long i = 0; i < n; ++i) out[i] = frcnn_host_float_to_half_rn(in[i]);                        \
  }
