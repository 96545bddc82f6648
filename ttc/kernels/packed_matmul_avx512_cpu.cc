// The AVX-512 packed-panel matmuls (see packed_matmul_cpu.cc for the AVX2 one and
// the packing), as XLA FFI custom calls:
//
//   TtcPackedMatmulAvx512: x float32 [M, K], panels float32 [J, K, 32]
//       (panels[j, k, c] = w[k, 32 j + c]); twelve rows by two 16-float vectors at
//       a time: 24 accumulators + 2 weight vectors of the 32 registers.
//   TtcPackedMatmulBf16: x bfloat16 [M, 2 K2], panels bfloat16 [J, K2, 32, 2]
//       (panels[j, p, c, i] = w[2 p + i, 32 j + c]); each vdpbf16ps multiplies a
//       broadcast pair of x by the matching pair of 16 weight columns and adds both
//       products to float32 accumulators, so it does twice a float32 FMA's work
//       and reads half the weight bytes. Same twelve-row tile.
// Result: y float32 [M, 32 J] = x @ w, summed in float32.
//
// Both are compiled for their instruction sets whatever -march says (a GCC target
// pragma around the tiles) and refuse to run (an error, never an illegal
// instruction) where the CPU lacks them. Python asks first: `packed_matmul.runs_here`.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "panel_tiles.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// The kernels need x86-64 and GCC's target pragmas; elsewhere the handlers exist but
// refuse, and `TtcAvx512KernelsBuilt` tells Python not to ask for them.
#ifndef TTC_AVX512_KERNELS
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TTC_AVX512_KERNELS 1
#else
#define TTC_AVX512_KERNELS 0
#endif
#endif
#if TTC_AVX512_KERNELS
#include <immintrin.h>
#endif

extern "C" int TtcAvx512KernelsBuilt() { return TTC_AVX512_KERNELS; }

namespace {

#if TTC_AVX512_KERNELS

constexpr int64_t kColumns = 32;

using Float32Problem = ttc::PanelProblem<float, float>;
// x and panels as pairs of bfloat16 (one 32-bit element each); k counts pairs.
using Bf16Problem = ttc::PanelProblem<uint32_t, uint32_t>;

// The tiles are compiled for AVX-512 (and its bf16 dot products) whatever -march
// says; nothing else in this file is, so the library loads on any x86 CPU.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bf16")

// Both kernels read x from `TiledRows` (below): the rows of each tile interleaved, so
// a step's twelve broadcasts come from one pointer at fixed offsets. Read straight
// from [M, K], twelve row pointers did not fit the general registers, and the
// compiler spilled accumulators to the stack inside the loop.
//
// A tile of R rows keeps 2 R accumulator chains, one vector FMA latency (4-6 cycles)
// apart on each: below three rows too few to fill the pipes, so one and two rows
// (decoding a single sequence) also split K over kSplit chains each.
template <int R>
constexpr int kSplit = R <= 2 ? 4 : 1;

// y[m0 : m0 + R, n0 : n0 + 32] from the tile of x at m0 and one panel, given how one
// step (one k, or one pair of k: kColumns elements of the panel) multiplies a
// broadcast element of x by the panel's two weight vectors into two accumulators.
template <int R, int kTileRows, typename T, typename Step>
inline void TileLoop(const ttc::PanelProblem<T, T>& p, const T* panel, int64_t m0, int64_t n0,
                     Step step) {
  constexpr int S = kSplit<R>;
  __m512 acc[S][R][2];
  for (int s = 0; s < S; ++s)
    for (int r = 0; r < R; ++r) acc[s][r][0] = acc[s][r][1] = _mm512_setzero_ps();
  const T* x = p.x + m0 * p.k;  // tile m0 / kTileRows of the tiled rows
  int64_t kk = 0;
  for (; kk + S <= p.k; kk += S)
    for (int s = 0; s < S; ++s)
      for (int r = 0; r < R; ++r)
        step(x + (kk + s) * kTileRows + r, panel + (kk + s) * kColumns, acc[s][r]);
  for (; kk < p.k; ++kk)
    for (int r = 0; r < R; ++r) step(x + kk * kTileRows + r, panel + kk * kColumns, acc[0][r]);
  for (int r = 0; r < R; ++r) {
    for (int s = 1; s < S; ++s) {
      acc[0][r][0] = _mm512_add_ps(acc[0][r][0], acc[s][r][0]);
      acc[0][r][1] = _mm512_add_ps(acc[0][r][1], acc[s][r][1]);
    }
    _mm512_storeu_ps(p.y + (m0 + r) * p.n + n0, acc[0][r][0]);
    _mm512_storeu_ps(p.y + (m0 + r) * p.n + n0 + 16, acc[0][r][1]);
  }
}

// One step of each kernel: x's element times the panel's two weight vectors.
inline void Float32Step(const float* x, const float* w, __m512* acc) {
  const __m512 a = _mm512_set1_ps(*x);
  acc[0] = _mm512_fmadd_ps(a, _mm512_loadu_ps(w), acc[0]);
  acc[1] = _mm512_fmadd_ps(a, _mm512_loadu_ps(w + 16), acc[1]);
}

// x's element: a pair of bfloat16, x[r, 2 kk] in the low half, x[r, 2 kk + 1] in the high.
inline void Bf16Step(const uint32_t* x, const uint32_t* w, __m512* acc) {
  const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(*x));
  acc[0] = _mm512_dpbf16_ps(acc[0], a, (__m512bh)_mm512_loadu_si512(w));
  acc[1] = _mm512_dpbf16_ps(acc[1], a, (__m512bh)_mm512_loadu_si512(w + 16));
}

// A kernel for `ttc::RunTiles`: twelve rows by 32 columns, one `Step` per k (or pair).
template <typename T, void (*Step)(const T*, const T*, __m512*)>
struct Avx512Tiles {
  static constexpr int64_t kColumns = ::kColumns;
  static constexpr int kTileRows = 12;

  template <int R>
  static void Tile(const ttc::PanelProblem<T, T>& p, const T* panel, int64_t m0, int64_t n0) {
    TileLoop<R, kTileRows>(p, panel, m0, n0, Step);
  }
};

using Avx512Kernel = Avx512Tiles<float, Float32Step>;
using Bf16Kernel = Avx512Tiles<uint32_t, Bf16Step>;

#pragma GCC pop_options

// x [M, K] rearranged as tiles of kTileRows rows, tile t holding at [k, r] row
// t kTileRows + r (zero past M): [ceil(M / kTileRows), K, kTileRows]. Kept per
// thread and reused across calls (a decode step makes over a hundred).
template <int kTileRows, typename T>
const T* TiledRows(ffi::ThreadPool& pool, const T* x, int64_t m, int64_t k) {
  thread_local std::vector<T> tiled;
  const int64_t tiles = (m + kTileRows - 1) / kTileRows;
  tiled.resize(tiles * k * kTileRows);
  T* out = tiled.data();
  ttc::ParallelFor(pool, tiles, [=](int64_t t) {
    T* tile = out + t * k * kTileRows;
    const int rows = static_cast<int>(std::min<int64_t>(kTileRows, m - t * kTileRows));
    for (int64_t kk = 0; kk < k; ++kk)
      for (int r = 0; r < kTileRows; ++r)
        tile[kk * kTileRows + r] = r < rows ? x[(t * kTileRows + r) * k + kk] : T{0};
  });
  return out;
}

ffi::Error PackedMatmulAvx512(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::F32> panels, ffi::ResultBuffer<ffi::F32> y) {
  if (!__builtin_cpu_supports("avx512f"))
    return ffi::Error::Internal("packed_matmul_avx512: this CPU has no AVX-512");
  auto xd = x.dimensions(), pd = panels.dimensions();
  if (xd.size() != 2 || pd.size() != 3 || pd[2] != kColumns || pd[1] != xd[1])
    return ffi::Error::InvalidArgument(
        "packed_matmul_avx512: needs x [M, K] and panels [J, K, 32] with the same K");
  const float* tiled = TiledRows<Avx512Kernel::kTileRows>(pool, x.typed_data(), xd[0], xd[1]);
  const Float32Problem p{tiled, panels.typed_data(), y->typed_data(), xd[0], xd[1],
                         pd[0] * kColumns};
  ttc::RunTiles<Avx512Kernel>(pool, p, pd[0], pd[1] * kColumns);
  return ffi::Error::Success();
}

ffi::Error PackedMatmulBf16(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> x,
                            ffi::Buffer<ffi::BF16> panels, ffi::ResultBuffer<ffi::F32> y) {
  if (!__builtin_cpu_supports("avx512bf16"))
    return ffi::Error::Internal("packed_matmul_bf16: this CPU has no AVX-512 bf16");
  auto xd = x.dimensions(), pd = panels.dimensions();
  if (xd.size() != 2 || pd.size() != 4 || pd[2] != kColumns || pd[3] != 2 ||
      xd[1] != 2 * pd[1])
    return ffi::Error::InvalidArgument(
        "packed_matmul_bf16: needs x [M, 2 K2] and panels [J, K2, 32, 2]");
  const auto* pairs = reinterpret_cast<const uint32_t*>(x.typed_data());
  const Bf16Problem p{TiledRows<Bf16Kernel::kTileRows>(pool, pairs, xd[0], pd[1]),
                      reinterpret_cast<const uint32_t*>(panels.typed_data()), y->typed_data(),
                      xd[0], pd[1], pd[0] * kColumns};
  ttc::RunTiles<Bf16Kernel>(pool, p, pd[0], pd[1] * kColumns);
  return ffi::Error::Success();
}

#else  // !TTC_AVX512_KERNELS

ffi::Error NotBuilt() {
  return ffi::Error(ffi::ErrorCode::kUnimplemented,
                    "the AVX-512 packed matmuls need x86-64 and GCC; not built here");
}
ffi::Error PackedMatmulAvx512(ffi::ThreadPool, ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>,
                              ffi::ResultBuffer<ffi::F32>) {
  return NotBuilt();
}
ffi::Error PackedMatmulBf16(ffi::ThreadPool, ffi::Buffer<ffi::BF16>, ffi::Buffer<ffi::BF16>,
                            ffi::ResultBuffer<ffi::F32>) {
  return NotBuilt();
}

#endif  // TTC_AVX512_KERNELS

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TtcPackedMatmulAvx512, PackedMatmulAvx512,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(TtcPackedMatmulBf16, PackedMatmulBf16,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
