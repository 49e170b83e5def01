/* Host build of the generated project (gcc/clang on a PC): stdio files, no counter. It checks
 * the C kernels against the integer reference without an emulator. */
#include <stdio.h>
#include <stdlib.h>
#include "zn_platform.h"

static FILE *files[8];

int zn_open(const char *name, int write) {
  for (int h = 0; h < 8; ++h)
    if (!files[h]) {
      files[h] = fopen(name, write ? "wb" : "rb");
      return files[h] ? h : -1;
    }
  return -1;
}
int32_t zn_read(int h, void *buf, int32_t n) { return (int32_t)fread(buf, 1, n, files[h]); }
int32_t zn_write(int h, const void *buf, int32_t n) {
  return (int32_t)fwrite(buf, 1, n, files[h]);
}
void zn_close(int h) { fclose(files[h]); files[h] = 0; }
void zn_log(const char *text) { fputs(text, stderr); }
void zn_exit(int code) { exit(code); }
uint32_t zn_counter(void) { return 0; }
