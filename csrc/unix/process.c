/*
 * process.c - a started child on Unix: waiting, reaping, signalling, collecting output.
 *
 * Waiting never polls on a timer and installs no SIGCHLD handler: Linux waits on a pidfd
 * (readable once the child has exited), macOS on a kqueue EVFILT_PROC filter, and a wait
 * without a timeout is one blocking waitid().  Waiting and reaping are separate calls: the
 * wait leaves the child a zombie (WNOWAIT), so that the caller reaps it under its own lock,
 * and a kill() under that lock can never hit a pid that was reaped and reused meanwhile.
 *
 * Every blocking call returns -EINTR when a signal interrupts it instead of retrying, so
 * that the Python caller gets to run its signal handlers (Ctrl-C) and then calls again.
 *
 * What it does not do: start children (spawn.c) or own any state between calls.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE
#endif
#if defined(__APPLE__) && !defined(_DARWIN_C_SOURCE)
#define _DARWIN_C_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
#include <sys/prctl.h>
#include <sys/syscall.h>
#endif
#ifdef __APPLE__
#include <sys/event.h>
#endif

#include "pyforkd.h"
#include "../common/atomic.h"
#include "../common/collect.h"
#include "internal.h"


/* Milliseconds left until `deadline` (CLOCK_MONOTONIC), or -1 for no deadline. */
static int pfd__remaining_ms(const struct timespec *deadline) {
  struct timespec now;
  long long ms;
  if (deadline == NULL) return -1;
  clock_gettime(CLOCK_MONOTONIC, &now);
  ms = (long long)(deadline->tv_sec - now.tv_sec) * 1000 +
       (deadline->tv_nsec - now.tv_nsec + 999999) / 1000000;
  return ms < 0 ? 0 : (ms > 0x7fffffff ? 0x7fffffff : (int)ms);
}

static void pfd__deadline_set(struct timespec *deadline, int timeout_ms) {
  clock_gettime(CLOCK_MONOTONIC, deadline);
  deadline->tv_sec += timeout_ms / 1000;
  deadline->tv_nsec += (long)(timeout_ms % 1000) * 1000000;
  if (deadline->tv_nsec >= 1000000000) {
    deadline->tv_sec += 1;
    deadline->tv_nsec -= 1000000000;
  }
}

#ifndef __APPLE__
/* poll(2) until `fd` is readable or the deadline passes.  Returns 1, 0 (timeout), -errno.
 * (macOS waits on a kqueue instead: below.) */
static int pfd__poll_one(int fd, int timeout_ms) {
  struct pollfd p;
  int r;
  p.fd = fd;
  p.events = POLLIN;
  p.revents = 0;
  r = poll(&p, 1, timeout_ms);
  if (r < 0) return -errno;
  return r > 0 ? 1 : 0;
}
#endif

int pfd_process_open(int pid) {
#if defined(__linux__) && defined(SYS_pidfd_open)
  long fd = syscall(SYS_pidfd_open, (pid_t)pid, 0);
  if (fd < 0) return -errno;
  /* pidfds are close-on-exec from birth (the kernel sets O_CLOEXEC on them). */
  return (int)fd;
#else
  (void)pid;
  return -ENOSYS;
#endif
}

#ifdef __APPLE__
/* macOS: a kqueue watching the child's exit.  A child that has already exited (a zombie)
 * cannot be registered (ESRCH), which also means "exited". */
static int pfd__wait_kqueue(int pid, int timeout_ms) {
  struct kevent change, event;
  struct timespec ts;
  int kq, r, err;
  kq = kqueue();
  if (kq < 0) return -errno;
  EV_SET(&change, (uintptr_t)pid, EVFILT_PROC, EV_ADD | EV_ONESHOT, NOTE_EXIT, 0, NULL);
  if (kevent(kq, &change, 1, NULL, 0, NULL) < 0) {
    err = errno;
    (void)close(kq);
    return err == ESRCH ? 1 : -err;
  }
  ts.tv_sec = timeout_ms / 1000;
  ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000;
  r = kevent(kq, NULL, 0, &event, 1, &ts);
  err = errno;
  (void)close(kq);
  if (r < 0) return -err;
  return r > 0 ? 1 : 0;
}
#endif

int pfd_process_wait(int pid, int handle, int timeout_ms) {
  if (pid <= 0) return -EINVAL;
  if (timeout_ms < 0) {
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOWAIT) < 0) return -errno;
    return 1;
  }
#ifdef __APPLE__
  (void)handle;
  return pfd__wait_kqueue(pid, timeout_ms);
#else
  /* Without a pidfd (Linux before 5.3) there is no way to bound a wait without polling;
   * the caller then waits in a thread of its own instead. */
  if (handle < 0) return -ENOSYS;
  return pfd__poll_one(handle, timeout_ms);
#endif
}

int pfd_process_reap(int pid, int *exit_code, int *term_signal) {
  int status = 0;
  pid_t r;
  if (pid <= 0) return -EINVAL;
  r = waitpid((pid_t)pid, &status, WNOHANG);
  if (r < 0) return -errno;
  if (r == 0) return 0;
  if (WIFSIGNALED(status)) {
    *exit_code = -1;
    *term_signal = WTERMSIG(status);
  } else {
    *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 0;
    *term_signal = 0;
  }
  return 1;
}

int pfd_process_kill(int pid, int handle, int sig) {
  if (pid <= 0) return -EINVAL;
#if defined(__linux__) && defined(SYS_pidfd_send_signal)
  if (handle >= 0) {
    if (syscall(SYS_pidfd_send_signal, handle, sig, NULL, 0) == 0) return 0;
    if (errno != ENOSYS) return -errno;
  }
#else
  (void)handle;
#endif
  if (kill((pid_t)pid, sig) < 0) return -errno;
  return 0;
}

int pfd_process_die_with_parent(int sig, int expected_parent) {
#ifdef __linux__
  if (prctl(PR_SET_PDEATHSIG, (unsigned long)sig) < 0) return -errno;
  /* The parent may have died before prctl: then we belong to another process already. */
  if (getppid() != (pid_t)expected_parent) return -ESRCH;
  return 0;
#else
  (void)sig;
  (void)expected_parent;
  return -ENOTSUP;
#endif
}

/* ---- dying with the parent, whatever the interpreter does ---------------------------- */

/* Whether a hang-up still ends this process (pfd_process_unwatch clears it).  Written by
 * the caller's threads, read by the watcher: sequentially consistent, it is read once. */
static pfd_atomic_u32_t pfd__hangup_armed;
/* Where the parent says it let this process go (pfd_process_spare_on_hangup), or 0. */
static pfd_atomic_u64_t pfd__hangup_spare;

static int pfd__hangup_spared(void) {
  unsigned long long at = pfd_atomic_load_acquire_u64(&pfd__hangup_spare);
  return at != 0 && pfd_atomic_load_acquire_u64((pfd_atomic_u64_t *)(uintptr_t)at) != 0;
}

static void *pfd__hangup_watch(void *arg) {
  int sock = (int)(intptr_t)arg;
  int r;
  do {
    r = pfd_fd_wait_hangup(sock, -1);
  } while (r == -EINTR || r == 0);
  /* The peer hung up, or the descriptor broke: either way the channel is over. */
  if (pfd_atomic_load_u32(&pfd__hangup_armed) && !pfd__hangup_spared()) (void)kill(getpid(), SIGKILL);
  (void)close(sock);
  return NULL;
}

int pfd_process_watch_hangup(int sock) {
  pthread_attr_t attr;
  pthread_t thread;
  sigset_t all, old;
  int copy, r;
  /* A copy of its own: the watch outlives whatever the process does with `sock`. */
  copy = fcntl(sock, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return -errno;
  pfd_atomic_store_u32(&pfd__hangup_armed, 1u);
  /* (a spare word set in the process this one was forked from is not this watch's) */
  pfd_atomic_store_release_u64(&pfd__hangup_spare, 0ull);
  r = pthread_attr_init(&attr);
  if (r != 0) goto error;
  (void)pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  (void)pthread_attr_setstacksize(&attr, PTHREAD_STACK_MIN > 65536 ? PTHREAD_STACK_MIN : 65536);
  /* Every signal blocked in the watcher (it inherits the mask): signals meant for the
   * program, Ctrl-C included, go to the threads that run it. */
  (void)sigfillset(&all);
  (void)pthread_sigmask(SIG_SETMASK, &all, &old);
  r = pthread_create(&thread, &attr, pfd__hangup_watch, (void *)(intptr_t)copy);
  (void)pthread_sigmask(SIG_SETMASK, &old, NULL);
  (void)pthread_attr_destroy(&attr);
  if (r != 0) goto error;
  return 0;
error:
  (void)close(copy);
  return -r;
}

void pfd_process_unwatch(void) {
  pfd_atomic_store_u32(&pfd__hangup_armed, 0u);
}

void pfd_process_spare_on_hangup(const void *word) {
  pfd_atomic_store_release_u64(&pfd__hangup_spare, (unsigned long long)(uintptr_t)word);
}

/* ---- collecting output -------------------------------------------------------------- */

static void pfd__close_slot(int *fd) {
  pfd__close_quietly(*fd);
  *fd = -1;
}

/* Reads what is ready on stream i.  Returns 0 to go on, -ENOBUFS when over max_buffer,
 * or -errno. */
static int pfd__collect_read(pfd_collect_t *c, int i) {
  for (;;) {
    ssize_t n;
    char *at;
    size_t room;
    int err = pfd__collect_room(c, i, &at, &room);
    if (err < 0) return err;
    n = read(c->out_fd[i], at, room);
    if (n > 0) {
      if ((err = pfd__collect_took(c, i, (size_t)n)) < 0) return err;
      continue;
    }
    if (n == 0) {
      pfd__close_slot(&c->out_fd[i]);
      return 0;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    if (errno == EINTR) return -EINTR;
    return -errno;
  }
}

/* Writes what the pipe takes.  A child that closed its stdin (EPIPE) just does not get the
 * rest, as with a shell pipeline; Python ignores SIGPIPE, so the write fails instead. */
static int pfd__collect_write(pfd_collect_t *c) {
  while (c->input_done < c->input_size) {
    ssize_t n = write(c->in_fd, c->input + c->input_done, c->input_size - c->input_done);
    if (n >= 0) {
      c->input_done += (size_t)n;
      continue;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    if (errno == EINTR) return -EINTR;
    if (errno != EPIPE) return -errno;
    break;
  }
  pfd__close_slot(&c->in_fd);
  return 0;
}

int pfd_collect_run(pfd_collect_t *c, int timeout_ms) {
  struct timespec deadline;
  int i, err;
  if (timeout_ms >= 0) pfd__deadline_set(&deadline, timeout_ms);
  if (c->in_fd >= 0 && (err = pfd__set_nonblocking(c->in_fd, 1)) < 0) return err;
  for (i = 0; i < 2; i++) {
    if (c->out_fd[i] >= 0 && (err = pfd__set_nonblocking(c->out_fd[i], 1)) < 0) return err;
  }
  if (c->overflow) return -ENOBUFS;
  for (;;) {
    struct pollfd p[3];
    int n = 0, r, wait_ms;
    if (c->in_fd >= 0) {
      p[n].fd = c->in_fd;
      p[n].events = POLLOUT;
      p[n++].revents = 0;
    }
    for (i = 0; i < 2; i++) {
      if (c->out_fd[i] < 0) continue;
      p[n].fd = c->out_fd[i];
      p[n].events = POLLIN;
      p[n++].revents = 0;
    }
    if (n == 0) return 0;
    wait_ms = pfd__remaining_ms(timeout_ms >= 0 ? &deadline : NULL);
    r = poll(p, (nfds_t)n, wait_ms);
    if (r < 0) return -errno;
    if (r == 0) return -ETIMEDOUT;
    for (i = 0; i < n; i++) {
      if (p[i].revents == 0) continue;
      if (p[i].fd == c->in_fd) {
        err = pfd__collect_write(c);
      } else {
        err = pfd__collect_read(c, p[i].fd == c->out_fd[0] ? 0 : 1);
      }
      if (err < 0) return err;
    }
  }
}

void pfd_collect_close(pfd_collect_t *c) {
  int i;
  pfd__close_slot(&c->in_fd);
  for (i = 0; i < 2; i++) pfd__close_slot(&c->out_fd[i]);
  pfd__collect_free(c);
}
