/*
 * Minimal bare-metal startup for Cortex-M (QEMU mps2-an386 / mps2-an385 and similar):
 * vector table, reset handler (copy .data, zero .bss, run main), ARM semihosting output and
 * exit, and the memset/memcpy a freestanding compiler may call.  No libc is linked.
 */
#include <stddef.h>
#include <stdint.h>

#include "semihost.h"

extern uint32_t _sidata[], _sdata[], _edata[], _sbss[], _ebss[], _estack[];
extern int main(void);

void Reset_Handler(void);
void Fault_Handler(void);

/* initial stack pointer, reset, NMI, hard fault, memory management, bus and usage faults */
__attribute__((section(".vectors"), used)) void (*const bet_vectors[7])(void) = {
    (void (*)(void))(uintptr_t)_estack, Reset_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler};

static uint32_t semihost_call(uint32_t op, const void *arg)
{
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void semihost_write(const char *text)
{
    (void)semihost_call(0x04u, text); /* SYS_WRITE0 */
}

void semihost_exit(int code)
{
    /* SYS_EXIT: ADP_Stopped_ApplicationExit (0x20026) exits QEMU with status 0, else 1 */
    (void)semihost_call(0x18u, (const void *)(uintptr_t)(code == 0 ? 0x20026u : 0x20023u));
    for (;;) {
    }
}

void Reset_Handler(void)
{
    uint32_t *src = _sidata, *dst = _sdata;
    while (dst < _edata) {
        *dst++ = *src++;
    }
    for (dst = _sbss; dst < _ebss; ++dst) {
        *dst = 0u;
    }
    semihost_exit(main());
}

void Fault_Handler(void)
{
    semihost_write("fault\n");
    semihost_exit(1);
}

void *memset(void *s, int c, size_t n)
{
    unsigned char *p = (unsigned char *)s;
    while (n--) {
        *p++ = (unsigned char)c;
    }
    return s;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    while (n--) {
        *d++ = *s++;
    }
    return dst;
}
