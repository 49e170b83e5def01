/* What main.c needs from a platform: files, a counter, exit. Two are provided: QEMU's mps2
 * boards over Arm semihosting (platform_qemu.c) and a host build on stdio (platform_host.c).
 * A real board replaces it with its UART / camera and a cycle counter (docs/deploy.md). */
#ifndef ZN_PLATFORM_H
#define ZN_PLATFORM_H
#include <stdint.h>
int zn_open(const char *name, int write);            /* handle, or -1 */
int32_t zn_read(int handle, void *buf, int32_t n);   /* bytes read */
int32_t zn_write(int handle, const void *buf, int32_t n);
void zn_close(int handle);
void zn_log(const char *text);
void zn_exit(int code);
uint32_t zn_counter(void);
#endif
