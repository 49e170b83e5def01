/* Runs the generated model on every input in inputs.bin (int8 images, back to back) and writes
 * logits.bin (int8 logits per image) and counts.bin (per image, the counter before each layer
 * and after the last: ZN_NUM_LAYERS + 1 uint32). */
#include "model.h"
#include "zn_platform.h"

static uint32_t marks[ZN_NUM_LAYERS + 1];

int main(void) {
  int in = zn_open("inputs.bin", 0);
  int logits = zn_open("logits.bin", 1);
  int counts = zn_open("counts.bin", 1);
  if (in < 0 || logits < 0 || counts < 0) {
    zn_log("zeronas-mcu: cannot open inputs.bin, logits.bin or counts.bin\n");
    return 1;
  }
  int32_t images = 0;
  while (zn_read(in, zn_input(), ZN_INPUT_BYTES) == ZN_INPUT_BYTES) {
    zn_invoke(marks);
    zn_write(logits, zn_output(), ZN_OUTPUT_BYTES);
    zn_write(counts, marks, sizeof(marks));
    ++images;
  }
  zn_close(in);
  zn_close(logits);
  zn_close(counts);
  return images > 0 ? 0 : 2;
}
