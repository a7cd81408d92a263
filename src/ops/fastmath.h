/* Branch-free float32 exp, sigmoid and tanh that gcc vectorises (libm's are scalar calls, which
 * dominated recurrent layers). Accuracy, measured against double libm: exp within 1 ulp on
 * [-87, 88]; sigmoid and tanh within 3 ulp (sigmoid below x = -87, where the true value is denormal,
 * stays near 1e-38).
 * float64 kernels keep libm, so that they agree with PyTorch to 1e-12.
 * Private: included by kernels.c. */
#ifndef NB_FASTMATH_H
#define NB_FASTMATH_H

#include <stdint.h>
#include <string.h>

/* e^x for x in [-87, 88] (clamped outside): x = n ln2 + r, |r| <= ln2/2, e^r by its Taylor series
 * to r^7 (truncation below 1e-9 relative), 2^n put into the exponent bits. NaN gives NaN. */
static inline float nb_fast_expf(float x)
{
    const float in = x;
    /* NaN goes through as 0 (no float-to-int conversion of NaN, which is undefined) and comes out NaN */
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : (x == x ? x : 0.0f));
    /* n = round(x / ln 2): adding and removing 1.5 * 2^23 rounds to an integer (|x / ln 2| < 2^22),
     * in plain IEEE arithmetic, which vectorises where floorf does not */
    float t = x * 1.44269504088896341f + 12582912.0f, n = t - 12582912.0f;
    float r = x - n * 0.693145751953125f;   /* ln 2, high bits (exact product for |n| < 2^9) */
    r = r - n * 1.42860682030941723e-06f;   /* ln 2, the rest */
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.66666667e-1f + r * (4.16666667e-2f +
              r * (8.33333333e-3f + r * (1.38888889e-3f + r * 1.98412698e-4f))))));
    /* 2^n: n is t's low mantissa bits (t's exponent is 23), so the integer n + 127 is read from t's
     * bits in unsigned arithmetic: a NaN x (NaN r, NaN p) then makes garbage bits, not an undefined
     * float-to-int conversion or a shift of a negative number, and the result is NaN */
    uint32_t tb;
    memcpy(&tb, &t, sizeof tb);
    uint32_t bits = (tb - 0x4B400000u + 127u) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return in == in ? p * scale : in;
}

/* 1 / (1 + e^-x): e^-x is clamped, so no overflow and no NaN for any finite x */
static inline float nb_fast_sigmoidf(float x) { return 1.0f / (1.0f + nb_fast_expf(-x)); }

/* tanh x = sign(x) (1 - e) / (1 + e), e = e^(-2|x|); below |x| = 0.1, where 1 - e cancels, the odd
 * series x - x^3/3 + 2x^5/15 - 17x^7/315 + 62x^9/2835 (truncation below 1e-13 relative) */
static inline float nb_fast_tanhf(float x)
{
    float a = __builtin_fabsf(x);
    float e = nb_fast_expf(-2.0f * a);
    float big = (1.0f - e) / (1.0f + e);
    float x2 = x * x;
    float small = x * (1.0f + x2 * (-3.33333333e-1f + x2 * (1.33333333e-1f + x2 * (-5.39682540e-2f +
                  x2 * 2.18694885e-2f))));
    return a < 0.1f ? small : __builtin_copysignf(big, x);
}

#endif
