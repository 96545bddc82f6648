// RMSNorm of a decode step's rows on CPU, as one XLA FFI custom call.
//
// XLA:CPU runs the model's RMSNorm as three thunks (a YNNPACK sum of squares, the
// rsqrt, the scaling multiply), each paying its dispatch for a few dozen rows: at
// 64 rows of SmolLM2 they took about 4% of a decode step, for 61 norms that read
// 150 KB each. This kernel normalises each row in one pass over it while it is in
// cache (see rms_norm.py for the measurement).
//
// Operands: x float32 [M, D], scale float32 [D]. Attribute: eps (float32).
// Result: out float32 [M, D], out[m] = (x[m] * rsqrt(mean(x[m]^2) + eps)) * scale,
// the order of Llama's float32 RMSNorm (normalise, then scale).

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Rows per work item: a decode step's few dozen rows are one item (splitting them
// costs more in hand-offs than it saves); a prefill's thousands spread over threads.
constexpr int64_t kBlockRows = 256;

void NormalizeRows(const float* x, const float* scale, float eps, int64_t d, int64_t begin,
                   int64_t end, float* out) {
  for (int64_t m = begin; m < end; ++m) {
    const float* row = x + m * d;
    float sum = 0.f;  // -ffast-math vectorises this sum (in a different order than XLA's)
    for (int64_t j = 0; j < d; ++j) sum += row[j] * row[j];
    const float inv = 1.f / std::sqrt(sum / static_cast<float>(d) + eps);
    float* y = out + m * d;
    for (int64_t j = 0; j < d; ++j) y[j] = (row[j] * inv) * scale[j];
  }
}

ffi::Error RmsNorm(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                   float eps, ffi::ResultBuffer<ffi::F32> out) {
  auto xd = x.dimensions(), sd = scale.dimensions();
  if (xd.size() != 2 || sd.size() != 1 || sd[0] != xd[1])
    return ffi::Error::InvalidArgument("rms_norm: needs x [M, D] and scale [D]");
  const int64_t m = xd[0], d = xd[1];
  const float *xs = x.typed_data(), *s = scale.typed_data();
  float* y = out->typed_data();
  ttc::ParallelFor(pool, (m + kBlockRows - 1) / kBlockRows, [=](int64_t block) {
    const int64_t begin = block * kBlockRows;
    NormalizeRows(xs, s, eps, d, begin, std::min(begin + kBlockRows, m), y);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TtcRmsNorm, RmsNorm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps")
                                  .Ret<ffi::Buffer<ffi::F32>>());
