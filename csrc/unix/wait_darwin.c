/*
 * wait_darwin.c - sleeping on a shared 32-bit word on macOS.
 *
 * os_sync_wait_on_address (macOS 14.4+, OS_SYNC_WAIT_ON_ADDRESS_SHARED) when the system
 * has it, else the older __ulock_wait/__ulock_wake with UL_COMPARE_AND_WAIT_SHARED (in
 * libSystem since 10.12, used by libc++ and Chromium), else short sleeps re-checking the
 * word.  Each is weakly imported, so one binary built for macOS 10.13 takes the best the
 * running system has.  Cross-compiled and linked here (zig cc for x86_64 and arm64 macOS
 * in .ci/run); run by the macOS jobs of ci.yml and wheels.yml.
 *
 * What it does not do: decide when to sleep or wake (ring.c's handshake does).
 */
#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "../common/wait.h"
#include "pyforkd.h"

/* <os/os_sync_wait_on_address.h> (macOS 14.4 SDK), declared here under names of our own so
 * that older SDKs build it too: the asm labels bind them to the system's symbols. */
#define PFD__OS_SYNC_SHARED 1u               /* OS_SYNC_{WAIT_ON,WAKE_BY}_ADDRESS_SHARED */
#define PFD__OS_CLOCK_MACH_ABSOLUTE_TIME 32u /* the clock of a relative timeout in ns */
extern int pfd__os_sync_wait(void *addr, uint64_t value, size_t size, uint32_t flags)
    __asm__("_os_sync_wait_on_address") __attribute__((weak_import));
extern int pfd__os_sync_wait_timeout(void *addr, uint64_t value, size_t size, uint32_t flags,
                                     uint32_t clockid, uint64_t timeout_ns)
    __asm__("_os_sync_wait_on_address_with_timeout") __attribute__((weak_import));
extern int pfd__os_sync_wake_all(void *addr, size_t size, uint32_t flags)
    __asm__("_os_sync_wake_by_address_all") __attribute__((weak_import));

/* <sys/ulock.h>, private but stable since 10.12. */
#define PFD__UL_COMPARE_AND_WAIT_SHARED 3u
#define PFD__ULF_WAKE_ALL 0x00000100u
extern int __ulock_wait(uint32_t operation, void *addr, uint64_t value, uint32_t timeout_us)
    __attribute__((weak_import));
extern int __ulock_wake(uint32_t operation, void *addr, uint64_t wake_value)
    __attribute__((weak_import));

/* Whether this system has the os_sync calls (all three came together, in 14.4). */
static int pfd__have_os_sync(void) {
  return pfd__os_sync_wait != NULL && pfd__os_sync_wait_timeout != NULL &&
         pfd__os_sync_wake_all != NULL;
}

/* What a failed wait's errno means to the caller: a timeout, a signal, or (anything else,
 * such as EFAULT on memory unmapped meanwhile) a wake-up to re-check the word. */
static int pfd__wait_failed(int err) {
  if (err == ETIMEDOUT) return -ETIMEDOUT;
  if (err == EINTR) return -EINTR;
  return 0;
}

int pfd__wait_on_word(pfd_atomic_u32_t *word, unsigned expected, int timeout_ms,
                      unsigned long long key) {
  (void)key; /* the kernel keys on the shared memory itself */
  if (timeout_ms == 0) return pfd_atomic_load_u32(word) == expected ? -ETIMEDOUT : 0;
  if (pfd__have_os_sync()) {
    int r = timeout_ms < 0
                ? pfd__os_sync_wait((void *)word, expected, sizeof(*word), PFD__OS_SYNC_SHARED)
                : pfd__os_sync_wait_timeout((void *)word, expected, sizeof(*word),
                                            PFD__OS_SYNC_SHARED,
                                            PFD__OS_CLOCK_MACH_ABSOLUTE_TIME,
                                            (uint64_t)timeout_ms * 1000000u);
    return r >= 0 ? 0 : pfd__wait_failed(errno); /* >= 0: woken, or the word had changed */
  }
  if (__ulock_wait != NULL) {
    /* A timeout of 0 means "for ever" to __ulock_wait (0 ms was answered above); the
     * microseconds are capped at what 32 bits hold (71 minutes: the caller waits again). */
    uint32_t us = timeout_ms < 0                 ? 0u
                  : timeout_ms > 4294967         ? UINT32_MAX
                                                 : (uint32_t)timeout_ms * 1000u;
    if (__ulock_wait(PFD__UL_COMPARE_AND_WAIT_SHARED, (void *)word, expected, us) >= 0) return 0;
    return pfd__wait_failed(errno);
  }
  {
    /* Neither: re-check every 200 us. */
    struct timespec pause = {0, 200000};
    long long waited_us = 0;
    while (pfd_atomic_load_u32(word) == expected) {
      if (timeout_ms >= 0 && waited_us >= (long long)timeout_ms * 1000) return -ETIMEDOUT;
      if (nanosleep(&pause, NULL) != 0 && errno == EINTR) return -EINTR;
      waited_us += 200;
    }
    return 0;
  }
}

int pfd__wake_word(pfd_atomic_u32_t *word, unsigned long long key) {
  (void)key;
  /* Both answer ENOENT when nobody sleeps there: not an error to the caller. */
  if (pfd__have_os_sync()) {
    (void)pfd__os_sync_wake_all((void *)word, sizeof(*word), PFD__OS_SYNC_SHARED);
  } else if (__ulock_wake != NULL) {
    (void)__ulock_wake(PFD__UL_COMPARE_AND_WAIT_SHARED | PFD__ULF_WAKE_ALL, (void *)word, 0);
  }
  return 0; /* without either the sleepers poll the word */
}

unsigned long long pfd__wait_key_new(void) { return 0; /* no names needed here */ }

long long pfd__monotonic_us(void) {
  struct timespec ts;
  (void)clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail with this clock */
  return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void pfd__yield(void) { (void)sched_yield(); /* cannot fail on Linux or macOS */ }
