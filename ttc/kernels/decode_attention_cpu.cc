// One-token (decode) attention over a KV cache on CPU, as an XLA FFI custom call.
//
// XLA:CPU lowers the two cache reductions of a decode step (q . k over head_dim,
// then p . v over slots) to single-threaded loop fusions that run several times
// slower than reading the cache from memory. This kernel reads each key and value
// once, runs the softmax in between, skips empty slots and splits the (row, kv head)
// pairs over XLA's intra-op thread pool.
//
// Operands (float32 unless noted; B rows, K kv heads, G query heads per kv head,
// E head_dim, S suffix slots, Q prompts, P prefix slots, N = B / Q rows per prompt):
//   q            [B, K, G, E]
//   k, v         [B, K, S, E]   each row's own cache
//   mask         pred[B, S]     which own slots the row's query sees
//   prefix_k, v  [Q, K, P, E]   prompt keys shared by the N rows of each prompt (P may be 0)
//   prefix_mask  pred[B, P]
// Attribute: scale (float32), multiplies q . k.
// Result: out [B, K, G, E], softmax over the visible prefix and own slots together.
// A query that sees no slot gets zeros.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "parallel_for.h"
#include "vector_exp.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Problem {
  const float* q;
  const float* k;
  const float* v;
  const bool* mask;
  const float* prefix_k;
  const float* prefix_v;
  const bool* prefix_mask;
  float* out;
  int64_t rows, kv_heads, group, head_dim, slots, prompts, prefix_slots;
  float scale;
};

// Eight float lanes (one AVX register with -march=native; two SSE ones without),
// loaded from and stored to any float address.
typedef float Lanes __attribute__((vector_size(32), aligned(4), may_alias));
constexpr int64_t kLanes = 8;
constexpr int64_t kPrefetchSlots = 4;

inline Lanes Load(const float* x) { return *reinterpret_cast<const Lanes*>(x); }
inline void Store(float* x, Lanes value) { *reinterpret_cast<Lanes*>(x) = value; }
inline float Sum(Lanes x) {
  float total = 0.f;
  for (int i = 0; i < kLanes; ++i) total += x[i];
  return total;
}

// scores[g, offset + n] = scale * q[g] . keys[s] for the n-th visible slot s of one
// key block, all G queries per key read; returns the number of visible slots.
// scores is [G, capacity]; visible[offset + n] = s.
template <int G>
int64_t Scores(const Problem& p, const float* q_GxE, const float* keys_SxE,
               const float* values_SxE, const bool* mask_S, int64_t num_slots, int64_t* visible,
               float* scores, int64_t capacity, int64_t offset) {
  const int64_t e = p.head_dim;
  int64_t n = 0;
  for (int64_t s = 0; s < num_slots; ++s) {
    if (!mask_S[s]) continue;
    const float* key = keys_SxE + s * e;
    // The cache streams from memory: ask for keys a few slots ahead, and for this
    // slot's values, which the weighted sum reads next.
    for (int64_t j = 0; j < e; j += 16) {
      __builtin_prefetch(key + kPrefetchSlots * e + j);
      __builtin_prefetch(values_SxE + s * e + j);
    }
    Lanes acc[G] = {};
    for (int64_t j = 0; j < e; j += kLanes) {
      const Lanes k = Load(key + j);
      for (int g = 0; g < G; ++g) acc[g] += Load(q_GxE + g * e + j) * k;
    }
    for (int g = 0; g < G; ++g) scores[g * capacity + offset + n] = p.scale * Sum(acc[g]);
    visible[offset + n] = s;
    ++n;
  }
  return n;
}

// Attention of row b, kv head h. scores holds G * (P + S) floats, visible P + S slot ids.
template <int G>
void AttendOne(const Problem& p, int64_t b, int64_t h, float* scores, int64_t* visible) {
  const int64_t e = p.head_dim;
  const int64_t capacity = p.prefix_slots + p.slots;
  const int64_t prompt = b / (p.rows / p.prompts);
  const float* q = p.q + (b * p.kv_heads + h) * G * e;
  float* out = p.out + (b * p.kv_heads + h) * G * e;
  std::fill(out, out + G * e, 0.f);

  const float* pk = p.prefix_k + (prompt * p.kv_heads + h) * p.prefix_slots * e;
  const float* pv = p.prefix_v + (prompt * p.kv_heads + h) * p.prefix_slots * e;
  const float* k = p.k + (b * p.kv_heads + h) * p.slots * e;
  const float* v = p.v + (b * p.kv_heads + h) * p.slots * e;
  const int64_t num_prefix = Scores<G>(p, q, pk, pv, p.prefix_mask + b * p.prefix_slots,
                                       p.prefix_slots, visible, scores, capacity, 0);
  const int64_t num_own = Scores<G>(p, q, k, v, p.mask + b * p.slots, p.slots, visible, scores,
                                    capacity, num_prefix);
  const int64_t n = num_prefix + num_own;
  if (n == 0) return;

  for (int g = 0; g < G; ++g) {
    float* row = scores + g * capacity;
    float max = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; ++i) max = std::max(max, row[i]);
    ttc::ExpShifted(row, max, n, row);  // vectorised: a scalar expf was most of the softmax
    float sum = 0.f;
    for (int64_t i = 0; i < n; ++i) sum += row[i];
    const float inv = 1.f / sum;
    for (int64_t i = 0; i < n; ++i) row[i] *= inv;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float* value = (i < num_prefix ? pv : v) + visible[i] * e;
    for (int64_t j = 0; j < e; j += kLanes) {
      const Lanes x = Load(value + j);
      for (int g = 0; g < G; ++g)
        Store(out + g * e + j, Load(out + g * e + j) + scores[g * capacity + i] * x);
    }
  }
}

// The kernel instantiated for p.group query heads per kv head (1..8).
auto AttendFor(const Problem& p) {
  switch (p.group) {
    case 2: return &AttendOne<2>;
    case 3: return &AttendOne<3>;
    case 4: return &AttendOne<4>;
    case 5: return &AttendOne<5>;
    case 6: return &AttendOne<6>;
    case 7: return &AttendOne<7>;
    case 8: return &AttendOne<8>;
  }
  return &AttendOne<1>;
}

ffi::Error DecodeAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                           ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask,
                           ffi::Buffer<ffi::F32> prefix_k, ffi::Buffer<ffi::F32> prefix_v,
                           ffi::Buffer<ffi::PRED> prefix_mask, float scale,
                           ffi::ResultBuffer<ffi::F32> out) {
  auto qd = q.dimensions(), kd = k.dimensions(), pd = prefix_k.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || pd.size() != 4)
    return ffi::Error::InvalidArgument("decode_attention: q, k and prefix_k must be rank 4");
  const Problem p{q.typed_data(), k.typed_data(), v.typed_data(), mask.typed_data(),
                  prefix_k.typed_data(), prefix_v.typed_data(), prefix_mask.typed_data(),
                  out->typed_data(), qd[0], qd[1], qd[2], qd[3], kd[2], pd[0], pd[2], scale};
  if (p.group < 1 || p.group > 8 || p.head_dim % kLanes)
    return ffi::Error::InvalidArgument(
        "decode_attention: needs 1 to 8 query heads per kv head and head_dim a multiple of 8");
  if (p.prompts <= 0 || p.rows % p.prompts)
    return ffi::Error::InvalidArgument("decode_attention: rows must be a multiple of prompts");
  const auto attend = AttendFor(p);
  ttc::ParallelFor(pool, p.rows * p.kv_heads, [p, attend](int64_t item) {
    // Scratch per thread, reused across items and calls.
    thread_local std::vector<float> scores;
    thread_local std::vector<int64_t> visible;
    scores.resize(p.group * (p.prefix_slots + p.slots));
    visible.resize(p.prefix_slots + p.slots);
    attend(p, item / p.kv_heads, item % p.kv_heads, scores.data(), visible.data());
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TtcDecodeAttention, DecodeAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>());
