/*
 * process.c - a started child on Windows: waiting, reaping and killing.
 *
 * The same contract as csrc/unix/process.c (cdef/process.h).  A child's process handle
 * (from CreateProcessW) stays in this file's table until the child is reaped: Windows
 * keeps a process id from being reused while a handle to it is open, so a kill by pid
 * can never hit another program, as on Unix a zombie keeps its pid.
 *
 * Windows has no signals: kill(sig) is TerminateProcess with an exit code that records
 * the signal (PFD__WIN_KILLED), so that reaping reports the child as ended by `sig`, the
 * way Python reports `returncode == -SIGTERM` on Unix.  Signal 0 only checks that the
 * child still runs.
 *
 * Output collection (pfd_collect_*): anonymous pipes have no overlapped I/O, so the loop
 * looks at each pipe in turn: PeekNamedPipe says how much a read can take without
 * waiting, and the child's stdin is switched to PIPE_NOWAIT so that a write takes only
 * what fits.  When nothing moved it sleeps a millisecond (at most until the deadline).
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>

#include <stdint.h>

#include "internal.h"
#include "../common/atomic.h"
#include "../common/collect.h"

typedef struct pfd__win_child_s {
  DWORD pid;
  HANDLE process;
} pfd__win_child_t;

static SRWLOCK pfd__win_children_lock = SRWLOCK_INIT;
static pfd__win_child_t *pfd__win_children;
static size_t pfd__win_children_count, pfd__win_children_cap;

int pfd__child_add(DWORD pid, HANDLE process) {
  int err = 0;
  AcquireSRWLockExclusive(&pfd__win_children_lock);
  if (pfd__win_children_count == pfd__win_children_cap) {
    size_t cap = pfd__win_children_cap ? pfd__win_children_cap * 2 : 16;
    pfd__win_child_t *grown = realloc(pfd__win_children, cap * sizeof *grown);
    if (grown == NULL) {
      err = -ENOMEM;
    } else {
      pfd__win_children = grown;
      pfd__win_children_cap = cap;
    }
  }
  if (err == 0) {
    pfd__win_children[pfd__win_children_count].pid = pid;
    pfd__win_children[pfd__win_children_count++].process = process;
  }
  ReleaseSRWLockExclusive(&pfd__win_children_lock);
  return err;
}

HANDLE pfd__child_handle(DWORD pid) {
  HANDLE found = NULL;
  size_t i;
  AcquireSRWLockShared(&pfd__win_children_lock);
  for (i = 0; i < pfd__win_children_count; i++) {
    if (pfd__win_children[i].pid == pid) found = pfd__win_children[i].process;
  }
  ReleaseSRWLockShared(&pfd__win_children_lock);
  return found;
}

void pfd__child_remove(DWORD pid) {
  size_t i;
  AcquireSRWLockExclusive(&pfd__win_children_lock);
  for (i = 0; i < pfd__win_children_count; i++) {
    if (pfd__win_children[i].pid == pid) {
      CloseHandle(pfd__win_children[i].process);
      pfd__win_children[i] = pfd__win_children[--pfd__win_children_count];
      break;
    }
  }
  ReleaseSRWLockExclusive(&pfd__win_children_lock);
}

/* The handle to wait on or kill through: the caller's, else the table's. */
static HANDLE pfd__win_target(int pid, int handle) {
  if (handle >= 0) return PFD__HANDLE(handle);
  return pfd__child_handle((DWORD)pid);
}

int pfd_process_open(int pid) {
  HANDLE h = pfd__child_handle((DWORD)pid), dup;
  if (h == NULL) return -ECHILD;
  if (!DuplicateHandle(GetCurrentProcess(), h, GetCurrentProcess(), &dup, 0, FALSE,
                       DUPLICATE_SAME_ACCESS)) {
    return pfd__win_last_errno();
  }
  return PFD__FD(dup);
}

int pfd_process_wait(int pid, int handle, int timeout_ms) {
  HANDLE h = pfd__win_target(pid, handle);
  DWORD r;
  if (h == NULL) return -ECHILD;
  r = WaitForSingleObject(h, timeout_ms < 0 ? INFINITE : (DWORD)timeout_ms);
  if (r == WAIT_OBJECT_0) return 1;
  if (r == WAIT_TIMEOUT) return 0;
  return pfd__win_last_errno();
}

int pfd_process_reap(int pid, int *exit_code, int *term_signal) {
  HANDLE h = pfd__child_handle((DWORD)pid);
  DWORD r, code;
  if (h == NULL) return -ECHILD;
  r = WaitForSingleObject(h, 0);
  if (r == WAIT_TIMEOUT) return 0;
  if (r != WAIT_OBJECT_0) return pfd__win_last_errno();
  if (!GetExitCodeProcess(h, &code)) return pfd__win_last_errno();
  if ((code & 0xFFFFFF00u) == PFD__WIN_KILLED_MARK) {
    *exit_code = -1;
    *term_signal = (int)(code & 0xFFu);
  } else {
    *exit_code = (int)code; /* NTSTATUS crash codes (0xC0000005) come through as they are */
    *term_signal = 0;
  }
  pfd__child_remove((DWORD)pid);
  return 1;
}

int pfd_process_kill(int pid, int handle, int sig) {
  HANDLE h = pfd__win_target(pid, handle);
  if (h == NULL) return -ESRCH;
  if (sig < 0 || sig > 0xFF) return -EINVAL;
  if (WaitForSingleObject(h, 0) == WAIT_OBJECT_0) return -ESRCH; /* ended already */
  if (sig == 0) return 0;
  if (!TerminateProcess(h, PFD__WIN_KILLED(sig))) {
    DWORD e = GetLastError();
    /* Terminating a process that is ending gives ERROR_ACCESS_DENIED. */
    if (e == ERROR_ACCESS_DENIED && WaitForSingleObject(h, 0) == WAIT_OBJECT_0) return -ESRCH;
    return pfd__win_errno(e);
  }
  return 0;
}

int pfd_process_die_with_parent(int sig, int expected_parent) {
  (void)sig;
  (void)expected_parent;
  return -ENOTSUP; /* the Job Object of spawn.c does this for every child */
}

/* ---- dying with the parent, whatever the interpreter does ------------------------------- */

/* Whether a hang-up still ends this process (pfd_process_unwatch clears it). */
static pfd_atomic_u32_t pfd__hangup_armed;
/* Where the parent says it let this process go (pfd_process_spare_on_hangup), or 0. */
static pfd_atomic_u64_t pfd__hangup_spare;

static int pfd__hangup_spared(void) {
  unsigned long long at = pfd_atomic_load_acquire_u64(&pfd__hangup_spare);
  return at != 0 && pfd_atomic_load_acquire_u64((pfd_atomic_u64_t *)(uintptr_t)at) != 0;
}

static DWORD WINAPI pfd__hangup_watch(LPVOID arg) {
  HANDLE pipe = (HANDLE)arg;
  int r;
  do {
    r = pfd_fd_wait_hangup(PFD__FD(pipe), -1);
  } while (r == 0);
  /* The peer hung up, or the handle broke: either way the channel is over. */
  if (pfd_atomic_load_u32(&pfd__hangup_armed) && !pfd__hangup_spared()) TerminateProcess(GetCurrentProcess(), 1);
  CloseHandle(pipe);
  return 0;
}

int pfd_process_watch_hangup(int sock) {
  HANDLE self = GetCurrentProcess(), copy = NULL, thread;
  /* A copy of its own: the watch outlives whatever the process does with `sock`. */
  if (!DuplicateHandle(self, PFD__HANDLE(sock), self, &copy, 0, FALSE, DUPLICATE_SAME_ACCESS)) {
    return pfd__win_last_errno();
  }
  pfd_atomic_store_u32(&pfd__hangup_armed, 1u);
  /* (a spare word set in the process this one was forked from is not this watch's) */
  pfd_atomic_store_release_u64(&pfd__hangup_spare, 0ull);
  thread = CreateThread(NULL, 65536, pfd__hangup_watch, copy, 0, NULL);
  if (thread == NULL) {
    int err = pfd__win_last_errno();
    CloseHandle(copy);
    return err;
  }
  CloseHandle(thread); /* (it runs on, detached) */
  return 0;
}

void pfd_process_unwatch(void) {
  pfd_atomic_store_u32(&pfd__hangup_armed, 0u);
}

void pfd_process_spare_on_hangup(const void *word) {
  pfd_atomic_store_release_u64(&pfd__hangup_spare, (unsigned long long)(uintptr_t)word);
}

/* ---- output collection ------------------------------------------------------------------ */

static void pfd__win_close_slot(int *fd) {
  if (*fd >= 0) CloseHandle(PFD__HANDLE(*fd));
  *fd = -1;
}

/* Reads what stream i has now.  1 when something moved, 0 when not, or -errno. */
static int pfd__win_collect_read(pfd_collect_t *c, int i) {
  DWORD avail = 0, got = 0;
  char *at;
  size_t room;
  int err;
  if (!PeekNamedPipe(PFD__HANDLE(c->out_fd[i]), NULL, 0, NULL, &avail, NULL)) {
    DWORD e = GetLastError();
    if (e != ERROR_BROKEN_PIPE) return pfd__win_errno(e);
    pfd__win_close_slot(&c->out_fd[i]); /* the child closed its end: the stream is done */
    return 1;
  }
  if (avail == 0) return 0;
  if ((err = pfd__collect_room(c, i, &at, &room)) < 0) return err;
  if (avail > room) avail = (DWORD)room;
  if (!ReadFile(PFD__HANDLE(c->out_fd[i]), at, avail, &got, NULL)) return pfd__win_last_errno();
  if ((err = pfd__collect_took(c, i, got)) < 0) return err;
  return 1;
}

/* Writes what the child's stdin takes now (PIPE_NOWAIT).  1 when something moved. */
static int pfd__win_collect_write(pfd_collect_t *c) {
  DWORD n = 0;
  size_t left = c->input_size - c->input_done;
  if (left > 0) {
    if (!WriteFile(PFD__HANDLE(c->in_fd), c->input + c->input_done,
                   left > 65536 ? 65536 : (DWORD)left, &n, NULL)) {
      DWORD e = GetLastError();
      /* A child that closed its stdin just does not get the rest, as on Unix. */
      if (e != ERROR_NO_DATA && e != ERROR_BROKEN_PIPE) return pfd__win_errno(e);
      left = 0;
    }
    c->input_done += n;
    if (left > 0 && c->input_done < c->input_size) return n > 0;
  }
  pfd__win_close_slot(&c->in_fd);
  return 1;
}

int pfd_collect_run(pfd_collect_t *c, int timeout_ms) {
  ULONGLONG deadline = GetTickCount64() + (ULONGLONG)(timeout_ms < 0 ? 0 : timeout_ms);
  if (c->overflow) return -ENOBUFS;
  if (c->in_fd >= 0) {
    DWORD mode = PIPE_READMODE_BYTE | PIPE_NOWAIT;
    if (!SetNamedPipeHandleState(PFD__HANDLE(c->in_fd), &mode, NULL, NULL)) {
      return pfd__win_last_errno();
    }
  }
  for (;;) {
    int i, r, moved = 0;
    if (c->in_fd >= 0) {
      if ((r = pfd__win_collect_write(c)) < 0) return r;
      moved |= r;
    }
    for (i = 0; i < 2; i++) {
      if (c->out_fd[i] < 0) continue;
      if ((r = pfd__win_collect_read(c, i)) < 0) return r;
      moved |= r;
    }
    if (c->in_fd < 0 && c->out_fd[0] < 0 && c->out_fd[1] < 0) return 0;
    if (!moved) {
      if (timeout_ms >= 0 && GetTickCount64() >= deadline) return -ETIMEDOUT;
      Sleep(1);
    }
  }
}

void pfd_collect_close(pfd_collect_t *c) {
  int i;
  pfd__win_close_slot(&c->in_fd);
  for (i = 0; i < 2; i++) pfd__win_close_slot(&c->out_fd[i]);
  pfd__collect_free(c);
}
