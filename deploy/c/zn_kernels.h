/* zeronas-mcu int8 kernels: TFLite's int8 arithmetic (gemmlowp double rounding), NHWC, batch 1.
 * Hand-written for this project; the generated model.c calls them with const parameter blocks.
 * Fused activations (ReLU, ReLU6) are an int8 clamp [act_min, act_max] of the output, computed
 * by the generator as TFLite Micro's CalculateActivationRangeQuantized does.
 * With the DSP extension (Cortex-M4/M7, __ARM_FEATURE_DSP) the conv dot products use SMLAD;
 * elsewhere (a host build) the same sums in plain C. Integer sums are exact either way. */
#ifndef ZN_KERNELS_H
#define ZN_KERNELS_H
#include <stdint.h>

typedef struct {
  const int8_t *weights;   /* [out_c][k][k][in_c] */
  const int32_t *bias;     /* [out_c] */
  const int32_t *mult;     /* Q31 significands [out_c] */
  const int32_t *shift;    /* [out_c] */
  int16_t in_h, in_w, in_c, out_h, out_w, out_c, kernel, stride;
  int16_t pad_h, pad_w;    /* padding before the first row / column (TF SAME: total // 2) */
  int32_t in_offset, out_offset;  /* -input zero point, output zero point */
  int32_t act_min, act_max;       /* the fused activation's int8 clamp (none: -128, 127) */
} zn_conv_t;

typedef struct {          /* k x k depthwise conv, depth multiplier 1 */
  const int8_t *weights;   /* [k][k][c] */
  const int32_t *bias, *mult, *shift;  /* [c] */
  int16_t in_h, in_w, c, out_h, out_w, kernel, stride, pad_h, pad_w;
  int32_t in_offset, out_offset, act_min, act_max;
} zn_depthwise_t;

typedef struct {          /* per-channel affine: a 1x1 depthwise conv, depth multiplier 1 */
  const int8_t *weights; const int32_t *bias, *mult, *shift;
  int32_t pixels, channels, in_offset, out_offset, act_min, act_max;
} zn_affine_t;

typedef struct {          /* fully connected, weights [out][in] */
  const int8_t *weights; const int32_t *bias, *mult, *shift;
  int32_t in_n, out_n, in_offset, out_offset, act_min, act_max;
} zn_dense_t;

typedef struct {          /* TFLite int8 ADD; an input of `channels` elements is broadcast */
  int32_t n, channels, a_count, b_count;
  int32_t a_offset, b_offset, out_offset, left_shift;
  int32_t a_mult, a_shift, b_mult, b_shift, out_mult, out_shift;
  int32_t act_min, act_max;
} zn_add_t;

typedef struct {          /* average / max pool; average: divisor = in-bounds window elements */
  int16_t in_h, in_w, c, out_h, out_w, kernel, stride, pad_h, pad_w;
  int16_t act_min, act_max;
} zn_pool_t;

typedef struct { int16_t in_h, in_w, c, pad; int32_t value; } zn_pad_t;

void zn_conv(const zn_conv_t *p, const int8_t *in, int8_t *out, int16_t *col);
void zn_depthwise(const zn_depthwise_t *p, const int8_t *in, int8_t *out);
void zn_affine(const zn_affine_t *p, const int8_t *in, int8_t *out);
void zn_dense(const zn_dense_t *p, const int8_t *in, int8_t *out);
void zn_add(const zn_add_t *p, const int8_t *a, const int8_t *b, int8_t *out);
void zn_avg_pool(const zn_pool_t *p, const int8_t *in, int8_t *out);
void zn_max_pool(const zn_pool_t *p, const int8_t *in, int8_t *out);
void zn_relu(int32_t n, int32_t zero_point, const int8_t *in, int8_t *out);
void zn_pad(const zn_pad_t *p, const int8_t *in, int8_t *out);
void zn_copy(int32_t n, const int8_t *in, int8_t *out);

/* gemmlowp fixed point, as TFLite Micro's reference kernels compute it */
int32_t zn_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int32_t shift);

/* the platform: a deterministic counter (instructions / ZN_COUNTER_TICK under QEMU -icount) */
uint32_t zn_counter(void);
#endif
