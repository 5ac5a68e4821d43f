/*
 * internal.h - the plumbing the Unix files of the C core share (never part of the public
 * API): one helper for each job, so that a close-on-exec pipe or socketpair is made one
 * way everywhere.
 *
 * Where the system has pipe2 / SOCK_CLOEXEC / accept4 (Linux, the BSDs), the flag is set
 * by the call that makes the descriptor.  Elsewhere (macOS) it is set right after: another
 * thread's fork may see the descriptor in between; such a child execs or exits soon, and
 * spawn.c closes every descriptor a child is not given, so nothing leaks into a program.
 *
 * Every helper returns 0 (or a descriptor) or -errno, and leaves nothing open on failure.
 * None is async-signal-safe by promise: the code between fork/vfork and exec keeps to
 * spawn.c's own child section.
 */
#ifndef PFD_UNIX_INTERNAL_H
#define PFD_UNIX_INTERNAL_H

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#if defined(__linux__) || defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__)
#define PFD__HAVE_PIPE2 1 /* and SOCK_CLOEXEC, SOCK_NONBLOCK, accept4 */
#endif

/* Closes `fd` (if >= 0) and keeps errno.  close(2) is never retried: on Linux and macOS
 * the descriptor is gone even when it reports EINTR, and a retry could close another
 * thread's new one. */
static inline void pfd__close_quietly(int fd) {
  int saved = errno;
  if (fd >= 0) (void)close(fd);
  errno = saved;
}

/* Sets close-on-exec on `fd`. */
static inline int pfd__set_cloexec(int fd) {
  int flags = fcntl(fd, F_GETFD);
  if (flags < 0) return -errno;
  if (flags & FD_CLOEXEC) return 0;
  if (fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0) return -errno;
  return 0;
}

/* Sets (`on`) or clears O_NONBLOCK on `fd`. */
static inline int pfd__set_nonblocking(int fd, int on) {
  int flags = fcntl(fd, F_GETFL), want;
  if (flags < 0) return -errno;
  want = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
  if (want != flags && fcntl(fd, F_SETFL, want) < 0) return -errno;
  return 0;
}

/* After the pair in fds[] was made without the flags: sets them, or closes both. */
static inline int pfd__pair_flags(int fds[2], int nonblock) {
  int i, err = 0;
  for (i = 0; i < 2 && err == 0; i++) {
    err = pfd__set_cloexec(fds[i]);
    if (err == 0 && nonblock) err = pfd__set_nonblocking(fds[i], 1);
  }
  if (err < 0) {
    pfd__close_quietly(fds[0]);
    pfd__close_quietly(fds[1]);
  }
  return err;
}

/* A close-on-exec pipe (fds[0] reads, fds[1] writes), both ends nonblocking if asked. */
static inline int pfd__cloexec_pipe(int fds[2], int nonblock) {
#ifdef PFD__HAVE_PIPE2
  if (pipe2(fds, O_CLOEXEC | (nonblock ? O_NONBLOCK : 0)) < 0) return -errno;
  return 0;
#else
  if (pipe(fds) < 0) return -errno;
  return pfd__pair_flags(fds, nonblock);
#endif
}

/* A close-on-exec AF_UNIX stream socketpair (blocking). */
static inline int pfd__cloexec_socketpair(int fds[2]) {
#ifdef PFD__HAVE_PIPE2
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0) return -errno;
  return 0;
#else
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) < 0) return -errno;
  return pfd__pair_flags(fds, 0);
#endif
}

/* accept(2) of one connection, close-on-exec: the descriptor, or -errno. */
static inline int pfd__cloexec_accept(int listen_fd) {
#ifdef PFD__HAVE_PIPE2
  int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
  return fd < 0 ? -errno : fd;
#else
  int fd = accept(listen_fd, NULL, NULL), err;
  if (fd < 0) return -errno;
  if ((err = pfd__set_cloexec(fd)) < 0) {
    pfd__close_quietly(fd);
    return err;
  }
  return fd;
#endif
}

#endif /* PFD_UNIX_INTERNAL_H */
