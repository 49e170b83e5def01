#include "zn_kernels.h"
#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

static inline int32_t srdhm(int32_t a, int32_t b) {
  /* SaturatingRoundingDoublingHighMul; b (a positive multiplier) is never INT32_MIN */
  int64_t ab = (int64_t)a * (int64_t)b;
  int64_t nudge = ab >= 0 ? (1ll << 30) : (1 - (1ll << 30));
  int64_t v = ab + nudge;
  /* C division truncates toward zero: add 2^31 - 1 before the shift when negative */
  return (int32_t)((v + ((v >> 63) & ((1ll << 31) - 1))) >> 31);
}

static inline int32_t rounding_divide_by_pot(int32_t x, int32_t exponent) {
  int32_t mask = (int32_t)((1ll << exponent) - 1);
  int32_t remainder = x & mask;
  int32_t threshold = (mask >> 1) + (x < 0);
  return (x >> exponent) + (remainder > threshold);
}

static inline int32_t mbqm(int32_t x, int32_t multiplier, int32_t shift) {
  int32_t left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
  return rounding_divide_by_pot(srdhm((int32_t)((uint32_t)x << left), multiplier), right);
}

int32_t zn_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int32_t shift) {
  return mbqm(x, multiplier, shift);
}

/* the fused activation: clamp to [lo, hi], a sub-range of int8 (no activation: -128, 127) */
static inline int8_t clamp(int32_t v, int32_t lo, int32_t hi) {
  return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}

static int32_t dot_plain(const int16_t *col, const int8_t *w, int32_t k, int32_t acc) {
  for (int32_t i = 0; i < k; ++i) acc += col[i] * w[i];
  return acc;
}

#if defined(__ARM_FEATURE_DSP)
/* the same sum over a col in the DSP layout (groups of four stored as x0, x2, x1, x3) */
static int32_t dot_plain_reordered(const int16_t *col, const int8_t *w, int32_t k, int32_t acc) {
  static const uint8_t lane[4] = {0, 2, 1, 3};
  for (int32_t i = 0; i < k; ++i) acc += col[(i & ~3) + lane[i & 3]] * w[i];
  return acc;
}
#endif

#if defined(__ARM_FEATURE_DSP)
/* col holds each group of four as (x0, x2, x1, x3) to match SXTB16's lanes of a weight word;
 * two output channels share each load of col */
static void dot2_dsp(const int16_t *col, const int8_t *w0, const int8_t *w1, int32_t k,
                     int32_t *acc0, int32_t *acc1) {
  const uint32_t *c = (const uint32_t *)col;
  const uint32_t *p0 = (const uint32_t *)w0, *p1 = (const uint32_t *)w1;
  int32_t a0 = *acc0, a1 = *acc1;
  for (int32_t i = 0; i < k; i += 4) {
    uint32_t c02 = c[0], c13 = c[1], u = *p0++, v = *p1++;
    c += 2;
    a0 = __smlad(c02, __sxtb16(u), a0);
    a0 = __smlad(c13, __sxtb16((u >> 8) | (u << 24)), a0);
    a1 = __smlad(c02, __sxtb16(v), a1);
    a1 = __smlad(c13, __sxtb16((v >> 8) | (v << 24)), a1);
  }
  *acc0 = a0;
  *acc1 = a1;
}
#endif

void zn_conv(const zn_conv_t *p, const int8_t *in, int8_t *out, int16_t *col) {
  const int32_t k = p->kernel, cin = p->in_c, depth = k * k * cin;
#if defined(__ARM_FEATURE_DSP)
  const int dsp = (cin % 4) == 0;
#else
  const int dsp = 0;
#endif
  for (int32_t oy = 0; oy < p->out_h; ++oy) {
    for (int32_t ox = 0; ox < p->out_w; ++ox) {
      int16_t *dst = col;
      for (int32_t ky = 0; ky < k; ++ky) {
        int32_t iy = oy * p->stride - p->pad_h + ky;
        for (int32_t kx = 0; kx < k; ++kx) {
          int32_t ix = ox * p->stride - p->pad_w + kx;
          if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
            for (int32_t c = 0; c < cin; ++c) *dst++ = 0;  /* padding: the zero point */
            continue;
          }
          const int8_t *src = in + (iy * p->in_w + ix) * cin;
          if (dsp) {
            for (int32_t c = 0; c < cin; c += 4) {
              dst[0] = (int16_t)(src[c] + p->in_offset);
              dst[1] = (int16_t)(src[c + 2] + p->in_offset);
              dst[2] = (int16_t)(src[c + 1] + p->in_offset);
              dst[3] = (int16_t)(src[c + 3] + p->in_offset);
              dst += 4;
            }
          } else {
            for (int32_t c = 0; c < cin; ++c) *dst++ = (int16_t)(src[c] + p->in_offset);
          }
        }
      }
      int8_t *o = out + (oy * p->out_w + ox) * p->out_c;
      const int8_t *w = p->weights;
      int32_t oc = 0;
#if defined(__ARM_FEATURE_DSP)
      if (dsp) {
        for (; oc + 1 < p->out_c; oc += 2, w += 2 * depth) {
          int32_t a0 = p->bias[oc], a1 = p->bias[oc + 1];
          dot2_dsp(col, w, w + depth, depth, &a0, &a1);
          a0 = mbqm(a0, p->mult[oc], p->shift[oc]);
          a1 = mbqm(a1, p->mult[oc + 1], p->shift[oc + 1]);
          o[oc] = clamp(a0 + p->out_offset, p->act_min, p->act_max);
          o[oc + 1] = clamp(a1 + p->out_offset, p->act_min, p->act_max);
        }
      }
#endif
      for (; oc < p->out_c; ++oc, w += depth) {  /* odd channel counts, and the plain build */
#if defined(__ARM_FEATURE_DSP)
        int32_t acc = dsp ? dot_plain_reordered(col, w, depth, p->bias[oc])
                          : dot_plain(col, w, depth, p->bias[oc]);
#else
        int32_t acc = dot_plain(col, w, depth, p->bias[oc]);
#endif
        acc = mbqm(acc, p->mult[oc], p->shift[oc]);
        o[oc] = clamp(acc + p->out_offset, p->act_min, p->act_max);
      }
    }
  }
}

void zn_depthwise(const zn_depthwise_t *p, const int8_t *in, int8_t *out) {
  /* every output channel reads its own input channel; taps outside the map are the padding
   * (the input zero point), which adds nothing, so they are skipped */
  const int32_t k = p->kernel, c = p->c;
  for (int32_t oy = 0; oy < p->out_h; ++oy) {
    const int32_t y0 = oy * p->stride - p->pad_h;
    const int32_t ky0 = y0 < 0 ? -y0 : 0;
    const int32_t ky1 = y0 + k > p->in_h ? p->in_h - y0 : k;
    for (int32_t ox = 0; ox < p->out_w; ++ox) {
      const int32_t x0 = ox * p->stride - p->pad_w;
      const int32_t kx0 = x0 < 0 ? -x0 : 0;
      const int32_t kx1 = x0 + k > p->in_w ? p->in_w - x0 : k;
      int8_t *o = out + (oy * p->out_w + ox) * c;
      for (int32_t ch = 0; ch < c; ++ch) {
        int32_t acc = p->bias[ch];
        for (int32_t ky = ky0; ky < ky1; ++ky) {
          const int8_t *src = in + ((y0 + ky) * p->in_w + x0) * c + ch;
          const int8_t *w = p->weights + ky * k * c + ch;
          for (int32_t kx = kx0; kx < kx1; ++kx)
            acc += (src[kx * c] + p->in_offset) * w[kx * c];
        }
        acc = mbqm(acc, p->mult[ch], p->shift[ch]);
        o[ch] = clamp(acc + p->out_offset, p->act_min, p->act_max);
      }
    }
  }
}

void zn_affine(const zn_affine_t *p, const int8_t *in, int8_t *out) {
  for (int32_t i = 0; i < p->pixels; ++i) {
    for (int32_t c = 0; c < p->channels; ++c) {
      int32_t acc = (in[c] + p->in_offset) * p->weights[c] + p->bias[c];
      acc = mbqm(acc, p->mult[c], p->shift[c]);
      out[c] = clamp(acc + p->out_offset, p->act_min, p->act_max);
    }
    in += p->channels;
    out += p->channels;
  }
}

void zn_dense(const zn_dense_t *p, const int8_t *in, int8_t *out) {
  const int8_t *w = p->weights;
  for (int32_t o = 0; o < p->out_n; ++o, w += p->in_n) {
    int32_t acc = p->bias[o];
    for (int32_t i = 0; i < p->in_n; ++i) acc += (in[i] + p->in_offset) * w[i];
    acc = mbqm(acc, p->mult[o], p->shift[o]);
    out[o] = clamp(acc + p->out_offset, p->act_min, p->act_max);
  }
}

void zn_add(const zn_add_t *p, const int8_t *a, const int8_t *b, int8_t *out) {
  /* an input of `channels` elements repeats at every pixel: its pointer goes back each pixel */
  const int32_t c = p->channels, a_step = p->a_count == p->n ? c : 0;
  const int32_t b_step = p->b_count == p->n ? c : 0;
  for (int32_t i = 0; i < p->n; i += c, a += a_step, b += b_step, out += c) {
    for (int32_t j = 0; j < c; ++j) {
      int32_t x = (a[j] + p->a_offset) * (1 << p->left_shift);
      int32_t y = (b[j] + p->b_offset) * (1 << p->left_shift);
      x = mbqm(x, p->a_mult, p->a_shift);
      y = mbqm(y, p->b_mult, p->b_shift);
      int32_t s = mbqm(x + y, p->out_mult, p->out_shift);
      out[j] = clamp(s + p->out_offset, p->act_min, p->act_max);
    }
  }
}

void zn_avg_pool(const zn_pool_t *p, const int8_t *in, int8_t *out) {
  for (int32_t oy = 0; oy < p->out_h; ++oy) {
    for (int32_t ox = 0; ox < p->out_w; ++ox) {
      int32_t y0 = oy * p->stride - p->pad_h, x0 = ox * p->stride - p->pad_w;
      int32_t y1 = y0 + p->kernel, x1 = x0 + p->kernel;
      if (y0 < 0) y0 = 0;
      if (x0 < 0) x0 = 0;
      if (y1 > p->in_h) y1 = p->in_h;
      if (x1 > p->in_w) x1 = p->in_w;
      int32_t count = (y1 - y0) * (x1 - x0);
      for (int32_t c = 0; c < p->c; ++c) {
        int32_t sum = 0;
        for (int32_t y = y0; y < y1; ++y)
          for (int32_t x = x0; x < x1; ++x) sum += in[(y * p->in_w + x) * p->c + c];
        /* rounding half away from zero, as TFLite's int8 average pool */
        int32_t avg = sum > 0 ? (sum + count / 2) / count : (sum - count / 2) / count;
        out[(oy * p->out_w + ox) * p->c + c] = clamp(avg, p->act_min, p->act_max);
      }
    }
  }
}

void zn_max_pool(const zn_pool_t *p, const int8_t *in, int8_t *out) {
  for (int32_t oy = 0; oy < p->out_h; ++oy) {
    for (int32_t ox = 0; ox < p->out_w; ++ox) {
      int32_t y0 = oy * p->stride - p->pad_h, x0 = ox * p->stride - p->pad_w;
      int32_t y1 = y0 + p->kernel, x1 = x0 + p->kernel;
      if (y0 < 0) y0 = 0;
      if (x0 < 0) x0 = 0;
      if (y1 > p->in_h) y1 = p->in_h;
      if (x1 > p->in_w) x1 = p->in_w;
      for (int32_t c = 0; c < p->c; ++c) {
        int32_t m = -128;
        for (int32_t y = y0; y < y1; ++y)
          for (int32_t x = x0; x < x1; ++x) {
            int32_t v = in[(y * p->in_w + x) * p->c + c];
            if (v > m) m = v;
          }
        out[(oy * p->out_w + ox) * p->c + c] = clamp(m, p->act_min, p->act_max);
      }
    }
  }
}

void zn_relu(int32_t n, int32_t zero_point, const int8_t *in, int8_t *out) {
  for (int32_t i = 0; i < n; ++i) out[i] = in[i] < zero_point ? (int8_t)zero_point : in[i];
}

void zn_pad(const zn_pad_t *p, const int8_t *in, int8_t *out) {
  int32_t ow = p->in_w + 2 * p->pad, oh = p->in_h + 2 * p->pad;
  for (int32_t y = 0; y < oh; ++y) {
    for (int32_t x = 0; x < ow; ++x) {
      int32_t iy = y - p->pad, ix = x - p->pad;
      int inside = iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w;
      for (int32_t c = 0; c < p->c; ++c)
        *out++ = inside ? in[(iy * p->in_w + ix) * p->c + c] : (int8_t)p->value;
    }
  }
}

void zn_copy(int32_t n, const int8_t *in, int8_t *out) {
  for (int32_t i = 0; i < n; ++i) out[i] = in[i];
}
