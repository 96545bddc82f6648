// exp of eight floats at once, for the kernels' softmax and SiLU.
//
// The scalar expf the compiler otherwise calls (glibc's vector variants live in
// libmvec, which a process need not have loaded) was most of the decode-attention
// kernel's softmax. This is the usual range reduction: e^x = 2^n e^r with
// n = round(x / ln 2) and |r| <= ln(2) / 2, e^r by a degree-6 polynomial (Cephes'
// expf coefficients). Measured against double exp over [-20, 0]: at most 1.1e-7
// relative (2 ulp) with FMA, 1.1e-6 without. Inputs below -87.3 give 0 and NaN stays
// NaN; the kernels only take it of x - max <= 0.
#ifndef TTC_KERNELS_VECTOR_EXP_H_
#define TTC_KERNELS_VECTOR_EXP_H_

#include <cstdint>

namespace ttc {

typedef float Lanes8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t Ints8 __attribute__((vector_size(32), aligned(4), may_alias));

inline Lanes8 Exp8(Lanes8 x) {
  const auto underflows = x < -87.3f;  // e^x is 0 in float32 there
  x = underflows ? Lanes8{} - 87.3f : x;
  x = x > 88.3f ? Lanes8{} + 88.3f : x;
  // n = round(x / ln 2), by converting to int (which truncates) after adding +-0.5:
  // the add-and-subtract-2^23 trick does not survive -ffast-math's reassociation.
  const Lanes8 t = x * 1.44269504088896341f;
  const Ints8 ni = __builtin_convertvector(t + (t < 0.f ? Lanes8{} - 0.5f : Lanes8{} + 0.5f), Ints8);
  const Lanes8 n = __builtin_convertvector(ni, Lanes8);
  // r = x - n ln 2, ln 2 in two parts so that n ln2_hi is exact.
  const Lanes8 r = x - n * 0.693359375f + n * 2.12194440e-4f;
  Lanes8 p = Lanes8{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  // Times 2^n: add n to the exponent bits.
  const Ints8 scaled = reinterpret_cast<const Ints8&>(p) + (ni << 23);
  const Lanes8 result = reinterpret_cast<const Lanes8&>(scaled);
  return underflows ? Lanes8{} : result;
}

// out[i] = e^(in[i] - shift) for i < n; in and out may be the same.
inline void ExpShifted(const float* in, float shift, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    *reinterpret_cast<Lanes8*>(out + i) = Exp8(*reinterpret_cast<const Lanes8*>(in + i) - shift);
  if (i < n) {
    Lanes8 tail{};
    for (int64_t j = i; j < n; ++j) tail[j - i] = in[j] - shift;
    tail = Exp8(tail);
    for (int64_t j = i; j < n; ++j) out[j] = tail[j - i];
  }
}

}  // namespace ttc

#endif  // TTC_KERNELS_VECTOR_EXP_H_
