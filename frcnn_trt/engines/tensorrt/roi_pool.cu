// Caffe RoI max pooling, forward only: the CUDA kernel of frcnn-trt's TensorRT RoIPool plugin.
//
// Semantics are those of torchvision.ops.roi_pool (= Caffe's roi_pooling_layer.cu, py-faster-rcnn):
//   roi coords   round(x * spatial_scale), half away from zero (roundf)
//   roi size     max(end - start + 1, 1)
//   bin size     size / pooled (float)
//   bin          [floor(p * bin) + start, ceil((p + 1) * bin) + start), clipped to [0, H] / [0, W]
//   empty bin    0;  otherwise the max over the bin, NaNs skipped (a `>` compare, as torchvision),
//                an all-NaN/-inf bin gives -FLT_MAX (as torchvision)
//   batch index  (int) rois[r, 0], truncated toward zero (as torchvision); one outside [0, N) gives 0
//                (torchvision reads out of bounds there).
// All index and compare arithmetic is float32, whatever the storage type.
//
// Glossary: N images, C channels, H x W feature map, R RoIs, PH x PW pooled shape.
//   features [N, C, H, W] contiguous;  rois [R, 5] contiguous (batch_index, x1, y1, x2, y2) in image
//   pixels;  output [R, C, PH, PW] contiguous.
//
// Compile-time constants (written by frcnn_trt.engines.tensorrt.kernel.kernel_source): TensorRT AOT
// plugins pass only integer extra arguments and do not serialize plugin attributes, so the float
// spatial scale and the pooled shape are baked into the PTX:
//   FRCNN_POOLED_H, FRCNN_POOLED_W   positive int literals
//   FRCNN_SPATIAL_SCALE              float literal, exactly float32(spatial_scale)
//   FRCNN_ROI_POOL_F32 / FRCNN_ROI_POOL_F16 / FRCNN_ROI_POOL_F16_F16ROIS   which entry to emit
//
// Entries (extern "C", so the PTX symbol is the plain name). The parameter order is TensorRT's for
// AOT quickly deployable plugins: input tensors, then the integer extra arguments, then outputs.
//   roi_pool_fwd_f32          features float,  rois float,  output float
//   roi_pool_fwd_f16          features half,   rois float,  output half   (recommended FP16 form)
//   roi_pool_fwd_f16_f16rois  features half,   rois half,   output half
//       (void)(const T* features, const U* rois, int N, int C, int H, int W, int R, T* output)
// Half values are read and written as raw 16-bit patterns and converted with PTX cvt instructions,
// so no cuda_fp16.h is needed. RoIs in half lose precision (spacing 0.5 px above 512 px, 1 px
// above 1024 px), which moves the rounded RoI edges: keep RoIs in float32 where the graph allows.
//
// Launch: one thread per output element, a 1-D grid of ceil(R*C*PH*PW / block) blocks; the loop is
// grid-stride, so a smaller grid is also correct. No shared memory.

#if !defined(FRCNN_POOLED_H) || !defined(FRCNN_POOLED_W) || !defined(FRCNN_SPATIAL_SCALE)
#error "define FRCNN_POOLED_H, FRCNN_POOLED_W and FRCNN_SPATIAL_SCALE (use kernel.kernel_source)"
#endif

#define FRCNN_NEG_FLT_MAX (-3.40282347e+38f)

typedef unsigned short frcnn_half_bits;

static __device__ __forceinline__ float frcnn_load(const float* p) { return *p; }

static __device__ __forceinline__ float frcnn_load(const frcnn_half_bits* p) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(*p));
  return f;
}

static __device__ __forceinline__ void frcnn_store(float* p, float v) { *p = v; }

static __device__ __forceinline__ void frcnn_store(frcnn_half_bits* p, float v) {
  // Exact for every value the kernel stores (0, or a max of half inputs); -FLT_MAX becomes -inf.
  frcnn_half_bits h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
  *p = h;
}

static __device__ __forceinline__ int frcnn_clip(int v, int hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

template <typename FeatT, typename RoiT>
static __device__ __forceinline__ void frcnn_roi_pool_fwd(const FeatT* __restrict__ features,
                                                          const RoiT* __restrict__ rois, int N, int C,
                                                          int H, int W, int R,
                                                          FeatT* __restrict__ output) {
  const long long bins = (long long)FRCNN_POOLED_H * FRCNN_POOLED_W;
  const long long total = (long long)R * C * bins;
  const long long stride = (long long)blockDim.x * gridDim.x;
  for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
       index += stride) {
    // (r, c, ph, pw) is an element of the pooled output.
    const int pw = (int)(index % FRCNN_POOLED_W);
    const int ph = (int)((index / FRCNN_POOLED_W) % FRCNN_POOLED_H);
    const int c = (int)((index / bins) % C);
    const long long r = index / bins / C;

    const RoiT* roi = rois + r * 5;
    const int b = (int)frcnn_load(roi);
    if (b < 0 || b >= N) {
      frcnn_store(output + index, 0.0f);
      continue;
    }
    const int roi_start_w = (int)roundf(frcnn_load(roi + 1) * FRCNN_SPATIAL_SCALE);
    const int roi_start_h = (int)roundf(frcnn_load(roi + 2) * FRCNN_SPATIAL_SCALE);
    const int roi_end_w = (int)roundf(frcnn_load(roi + 3) * FRCNN_SPATIAL_SCALE);
    const int roi_end_h = (int)roundf(frcnn_load(roi + 4) * FRCNN_SPATIAL_SCALE);

    // Malformed RoIs are forced to 1x1.
    const int roi_w = max(roi_end_w - roi_start_w + 1, 1);
    const int roi_h = max(roi_end_h - roi_start_h + 1, 1);
    const float bin_h = (float)roi_h / (float)FRCNN_POOLED_H;
    const float bin_w = (float)roi_w / (float)FRCNN_POOLED_W;

    const int hstart = frcnn_clip((int)floorf((float)ph * bin_h) + roi_start_h, H);
    const int hend = frcnn_clip((int)ceilf((float)(ph + 1) * bin_h) + roi_start_h, H);
    const int wstart = frcnn_clip((int)floorf((float)pw * bin_w) + roi_start_w, W);
    const int wend = frcnn_clip((int)ceilf((float)(pw + 1) * bin_w) + roi_start_w, W);
    const bool is_empty = (hend <= hstart) || (wend <= wstart);

    float maxval = is_empty ? 0.0f : FRCNN_NEG_FLT_MAX;
    const FeatT* plane = features + ((long long)b * C + c) * H * W;
    for (int h = hstart; h < hend; ++h) {
      const FeatT* row = plane + (long long)h * W;
      for (int w = wstart; w < wend; ++w) {
        const float v = frcnn_load(row + w);
        if (v > maxval) maxval = v;
      }
    }
    frcnn_store(output + index, maxval);
  }
}

#if defined(FRCNN_ROI_POOL_F32)
extern "C" __global__ void roi_pool_fwd_f32(const float* __restrict__ features,
                                            const float* __restrict__ rois, int N, int C, int H, int W,
                                            int R, float* __restrict__ output) {
  frcnn_roi_pool_fwd<float, float>(features, rois, N, C, H, W, R, output);
}
#endif

#if defined(FRCNN_ROI_POOL_F16)
extern "C" __global__ void roi_pool_fwd_f16(const frcnn_half_bits* __restrict__ features,
                                            const float* __restrict__ rois, int N, int C, int H, int W,
                                            int R, frcnn_half_bits* __restrict__ output) {
  frcnn_roi_pool_fwd<frcnn_half_bits, float>(features, rois, N, C, H, W, R, output);
}
#endif

#if defined(FRCNN_ROI_POOL_F16_F16ROIS)
extern "C" __global__ void roi_pool_fwd_f16_f16rois(const frcnn_half_bits* __restrict__ features,
                                                    const frcnn_half_bits* __restrict__ rois, int N,
                                                    int C, int H, int W, int R,
                                                    frcnn_half_bits* __restrict__ output) {
  frcnn_roi_pool_fwd<frcnn_half_bits, frcnn_half_bits>(features, rois, N, C, H, W, R, output);
}
#endif
