/* Cortex-M on QEMU's mps2 boards (an386: M4, an500: M7): vector table, reset, Arm semihosting
 * for files, and the FPGAIO COUNTER, which advances once per SYSCLK (25 MHz). Under
 * `-icount shift=0` one instruction is one nanosecond of virtual time, so the counter reads
 * instructions / 40 exactly (floor), deterministically. */
#include <stdint.h>
#include <string.h>
#include "zn_platform.h"

#define FPGAIO_COUNTER (*(volatile uint32_t *)0x40028018u)

uint32_t zn_counter(void) { return FPGAIO_COUNTER; }

static int semihost(int op, void *arg) {
  register int r0 __asm__("r0") = op;
  register void *r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

int zn_open(const char *name, int write) {
  uint32_t args[3] = {(uint32_t)name, write ? 5u : 1u, (uint32_t)strlen(name)};  /* wb / rb */
  return semihost(0x01, args);
}

int32_t zn_read(int handle, void *buf, int32_t n) {
  uint32_t args[3] = {(uint32_t)handle, (uint32_t)buf, (uint32_t)n};
  return n - semihost(0x06, args);  /* SYS_READ returns the bytes not read */
}

int32_t zn_write(int handle, const void *buf, int32_t n) {
  uint32_t args[3] = {(uint32_t)handle, (uint32_t)buf, (uint32_t)n};
  return n - semihost(0x05, args);
}

void zn_close(int handle) {
  uint32_t args[1] = {(uint32_t)handle};
  semihost(0x02, args);
}

void zn_log(const char *text) { semihost(0x04, (void *)text); }

void zn_exit(int code) {
  /* ADP_Stopped_ApplicationExit exits QEMU with status 0, any other reason with 1 */
  semihost(0x18, (void *)(code == 0 ? 0x20026 : 0x20024));
  for (;;) {}
}

extern uint32_t __stack_top, __data_load, __data_start, __data_end, __bss_start, __bss_end;
int main(void);

void zn_reset(void) {
  uint32_t *src = &__data_load, *dst = &__data_start;
  while (dst < &__data_end) *dst++ = *src++;
  for (dst = &__bss_start; dst < &__bss_end; ++dst) *dst = 0;
  zn_exit(main());
}

static void zn_fault(void) {
  zn_log("zeronas-mcu: CPU fault\n");
  zn_exit(3);
}

__attribute__((section(".vectors"), used))
static void *const zn_vectors[16] = {
    &__stack_top, (void *)zn_reset, (void *)zn_fault, (void *)zn_fault, (void *)zn_fault,
    (void *)zn_fault, (void *)zn_fault, 0, 0, 0, 0, (void *)zn_fault, (void *)zn_fault, 0,
    (void *)zn_fault, (void *)zn_fault};
