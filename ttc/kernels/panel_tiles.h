// The work split shared by the packed-panel matmul kernels: y [M, N] = x @ w with w
// stored as column panels, computed tile by tile in registers.
#ifndef TTC_KERNELS_PANEL_TILES_H_
#define TTC_KERNELS_PANEL_TILES_H_

#include <algorithm>
#include <cstdint>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ttc {

// One call's operands; X and W are the element types of x and the panels.
template <typename X, typename W>
struct PanelProblem {
  const X* x;       // [M, K] row-major (K as the kernel reads it: bf16 x holds K pairs)
  const W* panels;  // [J, panel_elements] one panel after another
  float* y;         // [M, N] row-major, N = J * panel columns
  int64_t m, k, n;
};

// Rows per work item: a multiple of every kernel's tile rows (6, 12), so only a
// block's last tile is partial, and few enough that one thread's rows stay in cache
// while it walks the panels.
constexpr int64_t kBlockRows = 96;

// Kernel::Tile<R>(p, panel, m0, n0): y[m0 : m0 + R, n0 : n0 + Kernel::kColumns] for
// R in [1, Kernel::kTileRows], all of K at once.
template <typename Kernel, int R, typename P, typename W>
void LastTile(const P& p, const W* panel, int64_t m0, int64_t n0, int rows) {
  if constexpr (R > 0) {
    if (rows == R) return Kernel::template Tile<R>(p, panel, m0, n0);
    LastTile<Kernel, R - 1>(p, panel, m0, n0, rows);
  }
}

// Computes every (row block, panel) item of y over XLA's intra-op thread pool,
// row block by row block. panel_elements: elements of W per panel.
template <typename Kernel, typename P>
void RunTiles(xla::ffi::ThreadPool& pool, const P& p, int64_t num_panels,
              int64_t panel_elements) {
  const int64_t blocks = (p.m + kBlockRows - 1) / kBlockRows;
  ParallelFor(pool, blocks * num_panels, [=](int64_t i) {
    const int64_t block = i / num_panels, j = i % num_panels;
    const auto* panel = p.panels + j * panel_elements;
    const int64_t end = std::min(p.m, (block + 1) * kBlockRows), n0 = j * Kernel::kColumns;
    int64_t m0 = block * kBlockRows;
    for (; m0 + Kernel::kTileRows <= end; m0 += Kernel::kTileRows)
      Kernel::template Tile<Kernel::kTileRows>(p, panel, m0, n0);
    if (end > m0)
      LastTile<Kernel, Kernel::kTileRows - 1>(p, panel, m0, n0, static_cast<int>(end - m0));
  });
}

}  // namespace ttc

#endif  // TTC_KERNELS_PANEL_TILES_H_
