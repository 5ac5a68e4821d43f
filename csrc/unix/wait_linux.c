/*
 * wait_linux.c - sleeping on a shared 32-bit word with futex(2).
 *
 * The futexes are not FUTEX_PRIVATE: the words live in memory mapped by two processes,
 * and a private futex would key on this process's address space only.
 *
 * What it does not do: decide when to sleep or wake (ring.c's handshake does).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <sched.h>
#include <linux/futex.h>
#include <limits.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../common/wait.h"
#include "pyforkd.h"

int pfd__wait_on_word(pfd_atomic_u32_t *word, unsigned expected, int timeout_ms,
                      unsigned long long key) {
  (void)key; /* the kernel keys on the shared memory itself */
  struct timespec ts, *tsp = NULL;
  long r;
  if (timeout_ms >= 0) {
    ts.tv_sec = timeout_ms / 1000;
    ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
    tsp = &ts;
  }
  r = syscall(SYS_futex, (void *)word, FUTEX_WAIT, expected, tsp, NULL, 0);
  if (r == 0 || errno == EAGAIN) return 0; /* woken, or the word had changed already */
  return -errno;                           /* ETIMEDOUT, EINTR, ... */
}

int pfd__wake_word(pfd_atomic_u32_t *word, unsigned long long key) {
  (void)key;
  if (syscall(SYS_futex, (void *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0) < 0) return -errno;
  return 0;
}

unsigned long long pfd__wait_key_new(void) { return 0; /* no names needed here */ }

long long pfd__monotonic_us(void) {
  struct timespec ts;
  (void)clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail with this clock */
  return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void pfd__yield(void) { (void)sched_yield(); /* cannot fail on Linux or macOS */ }
