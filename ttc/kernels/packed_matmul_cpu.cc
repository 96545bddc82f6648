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
// items are spread over XLA's intra-op thread pool.
//
// A second handler packs the panels, writing each once: XLA's own transposes of
// SmolLM2-135M's weights took 1.6 s per sampling call under the profiler (about
// ten decode steps at 64 rows), this about a third of that, most of it the first
// touch of freshly mapped memory.

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float Lanes __attribute__((vector_size(32), aligned(4), may_alias));
constexpr int64_t kPanel = 16;       // columns per panel: two 8-float vectors
constexpr int kTileRows = 6;         // 6 x 2 accumulators + 2 weight vectors + 1 broadcast
constexpr int64_t kBlockRows = 96;   // rows per work item (a multiple of kTileRows)
constexpr int64_t kPrefetchSteps = 16;  // panel rows ahead (1 KiB)

inline Lanes Load(const float* x) { return *reinterpret_cast<const Lanes*>(x); }
inline void Store(float* x, Lanes value) { *reinterpret_cast<Lanes*>(x) = value; }

struct Problem {
  const float* x;
  const float* panels;
  float* y;
  int64_t m, k, n;
};

// y[m0 : m0 + R, n0 : n0 + 16] = x[m0 : m0 + R] @ panel; R rows, 1 <= R <= kTileRows.
template <int R>
void Tile(const Problem& p, const float* panel, int64_t m0, int64_t n0) {
  Lanes acc[R][2] = {};
  const float* x = p.x + m0 * p.k;
  // Unrolled: the loop's own counter and branch otherwise take issue slots from
  // the 12 FMAs of each step (8% faster on a 30-layer MLP chain at 64 rows).
#pragma GCC unroll 4
  for (int64_t kk = 0; kk < p.k; ++kk) {
    const Lanes w0 = Load(panel + kk * kPanel), w1 = Load(panel + kk * kPanel + 8);
    __builtin_prefetch(panel + (kk + kPrefetchSteps) * kPanel);
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

template <int R>
void LastTile(const Problem& p, const float* panel, int64_t m0, int64_t n0, int rows) {
  if constexpr (R > 0) {
    if (rows == R) return Tile<R>(p, panel, m0, n0);
    LastTile<R - 1>(p, panel, m0, n0, rows);
  }
}

void Item(const Problem& p, int64_t block, int64_t j) {
  const float* panel = p.panels + j * p.k * kPanel;
  const int64_t end = std::min(p.m, (block + 1) * kBlockRows);
  int64_t m0 = block * kBlockRows;
  for (; m0 + kTileRows <= end; m0 += kTileRows) Tile<kTileRows>(p, panel, m0, j * kPanel);
  if (end > m0) LastTile<kTileRows - 1>(p, panel, m0, j * kPanel, static_cast<int>(end - m0));
}

ffi::Error PackedMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                        ffi::Buffer<ffi::F32> panels, ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions(), pd = panels.dimensions();
  if (xd.size() != 2 || pd.size() != 3 || pd[2] != kPanel || pd[1] != xd[1])
    return ffi::Error::InvalidArgument(
        "packed_matmul: needs x [M, K] and panels [J, K, 16] with the same K");
  const Problem p{x.typed_data(), panels.typed_data(), y->typed_data(), xd[0], xd[1],
                  pd[0] * kPanel};
  const int64_t blocks = (p.m + kBlockRows - 1) / kBlockRows, num_panels = pd[0];
  // Row block by row block, so a thread's rows stay in cache while it walks the panels.
  ttc::ParallelFor(pool, blocks * num_panels,
                   [p, num_panels](int64_t i) { Item(p, i / num_panels, i % num_panels); });
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

// panels[j, k, c] = w[k, 16 j + c] from w [K, N], or from w [N, K] (transposed: the
// tied output projection's embedding); columns past N are zero.
ffi::Error PackPanels(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w, bool transposed,
                      ffi::ResultBuffer<ffi::F32> panels) {
  auto wd = w.dimensions(), pd = panels->dimensions();
  if (wd.size() != 2 || pd.size() != 3)
    return ffi::Error::InvalidArgument("pack_panels: needs a 2-D w and 3-D panels");
  const int64_t k = transposed ? wd[1] : wd[0], n = transposed ? wd[0] : wd[1];
  if (pd[0] != (n + kPanel - 1) / kPanel || pd[1] != k || pd[2] != kPanel)
    return ffi::Error::InvalidArgument("pack_panels: panels must be [ceil(N / 16), K, 16]");
  const float* src = w.typed_data();
  float* dst = panels->typed_data();
  AskForHugePages(dst, pd[0] * k * kPanel * sizeof(float));
  ttc::ParallelFor(pool, pd[0], [=](int64_t j) {
    float* panel = dst + j * k * kPanel;
    const int64_t columns = std::min(kPanel, n - j * kPanel);
    if (transposed) {  // panel column c is row 16 j + c of w, read in order
      for (int64_t c = 0; c < columns; ++c) {
        const float* row = src + (j * kPanel + c) * k;
        for (int64_t kk = 0; kk < k; ++kk) panel[kk * kPanel + c] = row[kk];
      }
      for (int64_t kk = 0; kk < k && columns < kPanel; ++kk)
        std::fill(panel + kk * kPanel + columns, panel + (kk + 1) * kPanel, 0.f);
    } else {
      for (int64_t kk = 0; kk < k; ++kk) {
        std::copy_n(src + kk * n + j * kPanel, columns, panel + kk * kPanel);
        std::fill(panel + kk * kPanel + columns, panel + (kk + 1) * kPanel, 0.f);
      }
    }
  });
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
