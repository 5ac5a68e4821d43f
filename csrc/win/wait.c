/*
 * wait.c - sleeping on a shared 32-bit word on Windows, for the ring (common/wait.h).
 *
 * WaitOnAddress only wakes threads of its own process, so a sleeper here waits on an
 * auto-reset event named after the word's key (the ring's key plus the word's offset, the
 * same in both processes).  The sleeper opens the event before it looks at the word, and
 * the waker changes the word before it sets the event: either the sleeper sees the new
 * value, or it holds the event open when the waker sets it, so no wake-up is lost.  A
 * signal left from an earlier round only makes a wait return early, which every caller
 * allows (it re-checks).  The events live as long as someone holds them: nothing outlives
 * the two processes.
 *
 * What it does not do: decide when to sleep or wake (ring.c's handshake does).
 */
#include <errno.h>
#include <stdio.h>

#include "../common/wait.h"
#include "internal.h"

static HANDLE pfd__event(unsigned long long key, int *err) {
  wchar_t name[64];
  HANDLE h;
  _snwprintf(name, sizeof name / sizeof name[0], L"Local\\pyforkd-ring-%016llx", key);
  name[sizeof name / sizeof name[0] - 1] = L'\0';
  h = CreateEventW(NULL, FALSE, FALSE, name); /* opens it when it exists */
  if (h == NULL) *err = pfd__win_last_errno();
  return h;
}

int pfd__wait_on_word(pfd_atomic_u32_t *word, unsigned expected, int timeout_ms,
                      unsigned long long key) {
  int err = 0;
  DWORD r;
  HANDLE h = pfd__event(key, &err);
  if (h == NULL) return err;
  if (pfd_atomic_load_u32(word) != expected) {
    r = WAIT_OBJECT_0;
  } else {
    r = WaitForSingleObject(h, timeout_ms < 0 ? INFINITE : (DWORD)timeout_ms);
  }
  if (r == WAIT_FAILED) err = pfd__win_last_errno();
  CloseHandle(h);
  if (err < 0) return err;
  return r == WAIT_TIMEOUT ? -ETIMEDOUT : 0;
}

int pfd__wake_word(pfd_atomic_u32_t *word, unsigned long long key) {
  int err = 0;
  HANDLE h = pfd__event(key, &err);
  (void)word;
  if (h == NULL) return err;
  if (!SetEvent(h)) err = pfd__win_last_errno();
  CloseHandle(h);
  return err;
}

unsigned long long pfd__wait_key_new(void) {
  /* This process's id, the time, and a count: unique among the live processes' rings. */
  static volatile LONG counter;
  LARGE_INTEGER now;
  unsigned long long n = (unsigned long long)InterlockedIncrement(&counter);
  QueryPerformanceCounter(&now);
  return ((unsigned long long)GetCurrentProcessId() << 40) ^
         ((unsigned long long)now.QuadPart << 12) ^ (n << 8);
}

long long pfd__monotonic_us(void) {
  static LARGE_INTEGER frequency;
  LARGE_INTEGER now;
  if (frequency.QuadPart == 0) QueryPerformanceFrequency(&frequency); /* never fails */
  QueryPerformanceCounter(&now);
  return (long long)(now.QuadPart / frequency.QuadPart * 1000000 +
                     now.QuadPart % frequency.QuadPart * 1000000 / frequency.QuadPart);
}

void pfd__yield(void) { (void)SwitchToThread(); }
