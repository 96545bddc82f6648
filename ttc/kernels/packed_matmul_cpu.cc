// x @ w on CPU with w stored in column panels, as an XLA FFI custom call.
//
// XLA:CPU's matmul library repacks the weight operand into its own panel layout
// on every call. A decode step multiplies a few dozen rows by every weight of the
// model, so that repacking was a fifth of the step (SmolLM2-135M, 64 rows). Here
// the weights are packed once, before decoding (`packed_matmul.pack`), and each
// call streams them in order.
//
// Operands (float32):
//   x       [M, K]         row-major
//   panels  [J, K, 16]     panels[j, k, c] = w[k, 16 j + c]; N = 16 J
// Result: y [M, N] = x @ w.
//
// Each (row block, panel) item computes y[rows, 16 j : 16 j + 16] in registers,
// six rows by sixteen columns (12 AVX accumulators) at a time, over all of K. The
// items are spread over XLA's intra-op thread pool (`panel_tiles.h`). The AVX-512
// kernels, on 32-column panels, are in packed_matmul_avx512_cpu.cc.
//
// The packing handlers write the panels of every format, each panel once: XLA's own
// transposes of SmolLM2-135M's weights took 1.6 s per sampling call under the
// profiler (about ten decode steps at 64 rows), this about a third of that, most of
// it the first touch of freshly mapped memory.

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "panel_tiles.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float Lanes __attribute__((vector_size(32), aligned(4), may_alias));
constexpr int64_t kPrefetchSteps = 16;  // panel rows ahead (1 KiB)

inline Lanes Load(const float* x) { return *reinterpret_cast<const Lanes*>(x); }
inline void Store(float* x, Lanes value) { *reinterpret_cast<Lanes*>(x) = value; }

using Problem = ttc::PanelProblem<float, float>;

// Sixteen-column panels, six rows at a time: 6 x 2 accumulators + 2 weight vectors +
// 1 broadcast of AVX2's 16 registers.
struct Avx2Kernel {
  static constexpr int64_t kColumns = 16;
  static constexpr int kTileRows = 6;

  // y[m0 : m0 + R, n0 : n0 + 16] = x[m0 : m0 + R] @ panel; R rows, 1 <= R <= 6.
  template <int R>
  static void Tile(const Problem& p, const float* panel, int64_t m0, int64_t n0) {
    Lanes acc[R][2] = {};
    const float* x = p.x + m0 * p.k;
    // Unrolled: the loop's own counter and branch otherwise take issue slots from
    // the 12 FMAs of each step (8% faster on a 30-layer MLP chain at 64 rows).
#pragma GCC unroll 4
    for (int64_t kk = 0; kk < p.k; ++kk) {
      const Lanes w0 = Load(panel + kk * kColumns), w1 = Load(panel + kk * kColumns + 8);
      __builtin_prefetch(panel + (kk + kPrefetchSteps) * kColumns);
      for (int r = 0; r < R; ++r) {
        const float a = x[r * p.k + kk];
        acc[r][0] += a * w0;
        acc[r][1] += a * w1;
      }
    }
    for (int r = 0; r < R; ++r) {
      Store(p.y + (m0 + r) * p.n + n0, acc[r][0]);
      Store(p.y + (m0 + r) * p.n + n0 + 8, acc[r][1]);
    }
  }
};

ffi::Error PackedMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                        ffi::Buffer<ffi::F32> panels, ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions(), pd = panels.dimensions();
  if (xd.size() != 2 || pd.size() != 3 || pd[2] != Avx2Kernel::kColumns || pd[1] != xd[1])
    return ffi::Error::InvalidArgument(
        "packed_matmul: needs x [M, K] and panels [J, K, 16] with the same K");
  const Problem p{x.typed_data(), panels.typed_data(), y->typed_data(), xd[0], xd[1],
                  pd[0] * Avx2Kernel::kColumns};
  ttc::RunTiles<Avx2Kernel>(pool, p, pd[0], pd[1] * pd[2]);
  return ffi::Error::Success();
}

// The panels are written into fresh memory, and mapping it 4 KiB page by page
// took most of the packing time (the system maps huge pages only where asked).
// Whole 2 MiB pages inside [data, data + bytes) are asked for; a failure only
// leaves small pages.
void AskForHugePages(void* data, size_t bytes) {
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

// Rounds to the nearest bfloat16, ties to even (as XLA's convert; w is finite).
inline uint16_t ToBfloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return static_cast<uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

// Writes the panels of w [K, N], or of w [N, K] (transposed: the tied output
// projection's embedding, read row by row), with columns past N and rows past K zero.
// Panel j holds columns C j .. C j + C - 1, w[k, C j + c] at
//   float32 panels:        k * C + c                    ([K, C])
//   bfloat16 pair panels:  (k / 2) * 2 C + 2 c + k % 2  ([ceil(K / 2), C, 2]: the two
//                          rows each bf16 dot-product instruction sums, side by side)
template <int64_t C, typename T>
void FillPanels(ffi::ThreadPool& pool, const float* src, bool transposed, int64_t k, int64_t n,
                int64_t num_panels, int64_t panel_elements, T* dst) {
  constexpr bool kPairs = std::is_same_v<T, uint16_t>;
  AskForHugePages(dst, num_panels * panel_elements * sizeof(T));
  ttc::ParallelFor(pool, num_panels, [=](int64_t j) {
    T* panel = dst + j * panel_elements;
    std::fill(panel, panel + panel_elements, T{0});
    const int64_t columns = std::min(C, n - j * C);
    auto put = [panel](int64_t kk, int64_t c, float value) {
      if constexpr (kPairs) panel[(kk / 2) * 2 * C + 2 * c + kk % 2] = ToBfloat16(value);
      else panel[kk * C + c] = value;
    };
    if (transposed) {  // panel column c is row C j + c of w, read in order
      for (int64_t c = 0; c < columns; ++c) {
        const float* row = src + (j * C + c) * k;
        for (int64_t kk = 0; kk < k; ++kk) put(kk, c, row[kk]);
      }
    } else {
      for (int64_t kk = 0; kk < k; ++kk)
        for (int64_t c = 0; c < columns; ++c) put(kk, c, src[kk * n + j * C + c]);
    }
  });
}

// float32 panels [ceil(N / C), K, C] for C = 16 (the AVX2 kernel) or 32 (AVX-512).
ffi::Error PackPanels(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w, bool transposed,
                      ffi::ResultBuffer<ffi::F32> panels) {
  auto wd = w.dimensions(), pd = panels->dimensions();
  if (wd.size() != 2 || pd.size() != 3 || (pd[2] != 16 && pd[2] != 32))
    return ffi::Error::InvalidArgument("pack_panels: needs a 2-D w and [J, K, 16 or 32] panels");
  const int64_t k = transposed ? wd[1] : wd[0], n = transposed ? wd[0] : wd[1];
  if (pd[0] != (n + pd[2] - 1) / pd[2] || pd[1] != k)
    return ffi::Error::InvalidArgument("pack_panels: panels must be [ceil(N / C), K, C]");
  auto fill = pd[2] == 16 ? FillPanels<16, float> : FillPanels<32, float>;
  fill(pool, w.typed_data(), transposed, k, n, pd[0], k * pd[2], panels->typed_data());
  return ffi::Error::Success();
}

// bfloat16 pair panels [ceil(N / 32), ceil(K / 2), 32, 2] (the AVX-512 bf16 kernel).
ffi::Error PackPanelsBf16(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w, bool transposed,
                          ffi::ResultBuffer<ffi::BF16> panels) {
  auto wd = w.dimensions(), pd = panels->dimensions();
  if (wd.size() != 2 || pd.size() != 4)
    return ffi::Error::InvalidArgument("pack_panels_bf16: needs a 2-D w and 4-D panels");
  const int64_t k = transposed ? wd[1] : wd[0], n = transposed ? wd[0] : wd[1];
  if (pd[0] != (n + 31) / 32 || pd[1] != (k + 1) / 2 || pd[2] != 32 || pd[3] != 2)
    return ffi::Error::InvalidArgument(
        "pack_panels_bf16: panels must be [ceil(N / 32), ceil(K / 2), 32, 2]");
  FillPanels<32, uint16_t>(pool, w.typed_data(), transposed, k, n, pd[0], pd[1] * 64,
                           panels->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TtcPackedMatmul, PackedMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(TtcPackPanels, PackPanels,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("transposed")
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(TtcPackPanelsBf16, PackPanelsBf16,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("transposed")
                                  .Ret<ffi::Buffer<ffi::BF16>>());
