/*
 * wait.h - sleeping on a 32-bit word in shared memory (internal to the C core).
 *
 * One implementation per platform: csrc/unix/wait_linux.c (futex), csrc/unix/wait_darwin.c
 * (os_sync_wait_on_address / __ulock_wait), csrc/win/wait.c (WaitOnAddress cannot cross
 * processes there: events).  The ring's sleep/wake handshake (ring.c) is built on these.
 */
#ifndef PFD_WAIT_H
#define PFD_WAIT_H

#include "atomic.h"

/* Sleeps while *word == expected, at most timeout_ms (< 0: no limit).  The word may be in
 * memory shared with other processes.  `key` names the word the same way in every process
 * that maps it (the ring's key plus the word's offset): Windows sleeps on a named event
 * of that name, since its address waits do not cross processes; futex and ulock key on
 * the memory itself and ignore it.  Returns 0 when woken (perhaps spuriously) or when the
 * word was not `expected` any more, -ETIMEDOUT, -EINTR, or -errno. */
int pfd__wait_on_word(pfd_atomic_u32_t *word, unsigned expected, int timeout_ms,
                      unsigned long long key);

/* Wakes every sleeper on `word` (in any process; `key` as above).  Returns 0 or -errno. */
int pfd__wake_word(pfd_atomic_u32_t *word, unsigned long long key);

/* A key for a new ring, unique among the rings of this machine's live processes. */
unsigned long long pfd__wait_key_new(void);

/* Microseconds on a clock that never jumps (for timeouts and spinning). */
long long pfd__monotonic_us(void);

/* Lets another thread that shares this CPU run (for a waiter that spins). */
void pfd__yield(void);

#endif /* PFD_WAIT_H */
