/*
 * wait_darwin.c - sleeping on a shared 32-bit word on macOS.
 *
 * os_sync_wait_on_address (macOS 14.4+, OS_SYNC_WAIT_ON_ADDRESS_SHARED) when the system
 * has it, else the older __ulock_wait/__ulock_wake with UL_COMPARE_AND_WAIT_SHARED (in
 * libSystem since 10.12, used by libc++ and Chromium), else short sleeps re-checking the
 * word.  Written for the portability issue; not compiled or run on this project's Linux
 * machines yet.
 *
 * What it does not do: decide when to sleep or wake (ring.c's handshake does).
 */
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <time.h>

#include "../common/wait.h"
#include "pyforkd.h"

#define PFD__UL_COMPARE_AND_WAIT_SHARED 3
#define PFD__ULF_WAKE_ALL 0x00000100

extern int __ulock_wait(uint32_t operation, void *addr, uint64_t value, uint32_t timeout_us)
    __attribute__((weak_import));
extern int __ulock_wake(uint32_t operation, void *addr, uint64_t wake_value)
    __attribute__((weak_import));

int pfd__wait_on_word(pfd_atomic_u32_t *word, unsigned expected, int timeout_ms,
                      unsigned long long key) {
  (void)key; /* the kernel keys on the shared memory itself */
  if (__ulock_wait != NULL) {
    /* timeout 0 means "for ever" to __ulock_wait; a 0 ms wait is a check only. */
    uint32_t us = timeout_ms < 0 ? 0 : (uint32_t)timeout_ms * 1000u;
    int r;
    if (timeout_ms == 0) return pfd_atomic_load_u32(word) == expected ? -ETIMEDOUT : 0;
    r = __ulock_wait(PFD__UL_COMPARE_AND_WAIT_SHARED, (void *)word, expected, us);
    if (r >= 0) return 0;
    return errno == ETIMEDOUT ? -ETIMEDOUT : (errno == EINTR ? -EINTR : 0);
  } else {
    /* No ulock: re-check every 200 us. */
    struct timespec pause = {0, 200000};
    long waited_us = 0;
    while (pfd_atomic_load_u32(word) == expected) {
      if (timeout_ms >= 0 && waited_us >= (long)timeout_ms * 1000) return -ETIMEDOUT;
      if (nanosleep(&pause, NULL) != 0 && errno == EINTR) return -EINTR;
      waited_us += 200;
    }
    return 0;
  }
}

int pfd__wake_word(pfd_atomic_u32_t *word, unsigned long long key) {
  (void)key;
  if (__ulock_wake != NULL) {
    (void)__ulock_wake(PFD__UL_COMPARE_AND_WAIT_SHARED | PFD__ULF_WAKE_ALL, (void *)word, 0);
  }
  return 0; /* without ulock the sleepers poll the word */
}

unsigned long long pfd__wait_key_new(void) { return 0; /* no names needed here */ }

long long pfd__monotonic_us(void) {
  struct timespec ts;
  (void)clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail with this clock */
  return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void pfd__yield(void) { (void)sched_yield(); /* cannot fail on Linux or macOS */ }
