/*
 * fdpass.c - bytes and descriptors over a connected AF_UNIX stream socket (SCM_RIGHTS).
 *
 * What it does: one sendmsg/recvmsg per call (waiting only when asked), descriptors on the
 * first byte sent; received descriptors are close-on-exec from birth (MSG_CMSG_CLOEXEC, or
 * set right after receipt where that flag does not exist); a truncated control message
 * (MSG_CTRUNC: the sender attached more than we had room for) closes every descriptor that
 * did arrive and says so, so nothing leaks; no call ever raises SIGPIPE.  Waiting is a
 * separate call (pfd_fd_wait) so that the caller decides about timeouts and signals.
 *
 * What it does not do: framing (frame.c and the Python channel), or keep any state.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE
#endif
#if defined(__APPLE__) && !defined(_DARWIN_C_SOURCE)
#define _DARWIN_C_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#ifdef __APPLE__
#include <limits.h>
#include <sys/event.h>
#endif

#include "pyforkd.h"
#include "internal.h"

#ifdef MSG_NOSIGNAL
#define PFD__SEND_FLAGS MSG_NOSIGNAL
#else
#define PFD__SEND_FLAGS 0 /* macOS: pfd_socket_nosigpipe sets SO_NOSIGPIPE */
#endif

#ifdef MSG_CMSG_CLOEXEC
#define PFD__RECV_FLAGS MSG_CMSG_CLOEXEC
#else
#define PFD__RECV_FLAGS 0
#endif

/* A blocking call is not retried on EINTR: the caller runs its signal handlers first. */
#define PFD__DONTWAIT(flags) (((flags) & PFD_FD_BLOCK) ? 0 : MSG_DONTWAIT)

/* Room for the most descriptors one message can carry, aligned for struct cmsghdr. */
typedef union pfd__cmsg_buf_u {
  struct cmsghdr align;
  char buf[CMSG_SPACE(sizeof(int) * PFD_FRAME_MAX_FDS)];
} pfd__cmsg_buf_t;

long pfd_fd_send(int sock, const void *head, size_t head_size, const void *body,
                 size_t body_size, const int *fds, int nfds, int flags) {
  struct msghdr msg;
  struct iovec iov[2];
  pfd__cmsg_buf_t control;
  ssize_t n;
  int count = 0;

  if (nfds < 0 || nfds > PFD_FRAME_MAX_FDS || (nfds > 0 && fds == NULL)) return -EINVAL;
  /* A descriptor needs at least one byte to ride on. */
  if (nfds > 0 && head_size + body_size == 0) return -EINVAL;
  memset(&msg, 0, sizeof(msg));
  if (head_size > 0) {
    iov[count].iov_base = (void *)head;
    iov[count++].iov_len = head_size;
  }
  if (body_size > 0) {
    iov[count].iov_base = (void *)body;
    iov[count++].iov_len = body_size;
  }
  msg.msg_iov = iov;
  msg.msg_iovlen = count;
  if (nfds > 0) {
    struct cmsghdr *cmsg;
    memset(&control, 0, sizeof(control));
    msg.msg_control = control.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
    cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * (size_t)nfds);
  }
  do {
    n = sendmsg(sock, &msg, PFD__SEND_FLAGS | PFD__DONTWAIT(flags));
  } while (n < 0 && errno == EINTR && !(flags & PFD_FD_BLOCK));
  if (n < 0) return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  return (long)n;
}

static void pfd__close_received(struct msghdr *msg) {
  struct cmsghdr *cmsg;
  for (cmsg = CMSG_FIRSTHDR(msg); cmsg != NULL; cmsg = CMSG_NXTHDR(msg, cmsg)) {
    if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
      size_t i, count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (i = 0; i < count; i++) {
        int fd;
        memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
        (void)close(fd);
      }
    }
  }
}

long pfd_fd_recv(int sock, void *buf, size_t size, int *fds, int max_fds, int *nfds,
                 int flags) {
  struct msghdr msg;
  struct iovec iov;
  struct cmsghdr *cmsg;
  pfd__cmsg_buf_t control;
  ssize_t n;
  int count = 0;

  *nfds = 0;
  if (max_fds < 0 || max_fds > PFD_FRAME_MAX_FDS) return -EINVAL;
  memset(&msg, 0, sizeof(msg));
  iov.iov_base = buf;
  iov.iov_len = size;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof(control.buf);
  do {
    n = recvmsg(sock, &msg, PFD__RECV_FLAGS | PFD__DONTWAIT(flags));
  } while (n < 0 && errno == EINTR && !(flags & PFD_FD_BLOCK));
  if (n < 0) return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  if (msg.msg_flags & MSG_CTRUNC) {
    pfd__close_received(&msg);
    *nfds = PFD_FD_TRUNCATED;
    return (long)n;
  }
  for (cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    size_t i, got;
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
    got = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (i = 0; i < got; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
#ifndef MSG_CMSG_CLOEXEC
      (void)pfd__set_cloexec(fd); /* no MSG_CMSG_CLOEXEC: right after receipt */
#endif
      if (count < max_fds) {
        fds[count++] = fd;
      } else {
        /* More than the caller has room for: none of them may leak.  The walk closes
         * every descriptor of the message, those already copied to fds[] included. */
        pfd__close_received(&msg);
        *nfds = PFD_FD_TRUNCATED;
        return (long)n;
      }
    }
  }
  *nfds = count;
  return (long)n;
}

int pfd_fd_wait(int sock, int events, int timeout_ms) {
  struct pollfd p;
  int r;
  p.fd = sock;
  p.events = (short)(((events & PFD_POLL_IN) ? POLLIN : 0) |
                     ((events & PFD_POLL_OUT) ? POLLOUT : 0));
  p.revents = 0;
  r = poll(&p, 1, timeout_ms);
  if (r < 0) return -errno;
  if (r > 0 && (p.revents & POLLNVAL)) return -EBADF;
  return r > 0 ? 1 : 0;
}

int pfd_fd_wait_hangup(int sock, int timeout_ms) {
#ifdef __APPLE__
  /* A read filter whose low-water mark no message reaches fires on EOF alone. */
  struct kevent change, event;
  struct timespec ts, *tsp = NULL;
  int kq = kqueue(), r, err;
  if (kq < 0) return -errno;
  EV_SET(&change, (uintptr_t)sock, EVFILT_READ, EV_ADD, NOTE_LOWAT, INT_MAX, NULL);
  if (timeout_ms >= 0) {
    ts.tv_sec = timeout_ms / 1000;
    ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000;
    tsp = &ts;
  }
  r = kevent(kq, &change, 1, &event, 1, tsp);
  err = errno;
  (void)close(kq);
  if (r < 0) return -err;
  return r > 0 && (event.flags & EV_EOF) ? 1 : 0;
#else
  struct pollfd p;
  int r;
  p.fd = sock;
#ifdef POLLRDHUP
  p.events = POLLRDHUP;
#else
  p.events = 0; /* POLLHUP is always reported */
#endif
  p.revents = 0;
  r = poll(&p, 1, timeout_ms);
  if (r < 0) return -errno;
  if (r > 0 && (p.revents & POLLNVAL)) return -EBADF;
  return r > 0 ? 1 : 0;
#endif
}

int pfd_socket_nosigpipe(int sock) {
#ifdef SO_NOSIGPIPE
  int one = 1;
  if (setsockopt(sock, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one)) < 0) return -errno;
#else
  (void)sock;
#endif
  return 0;
}

int pfd_fd_close(int fd) {
  /* Linux and macOS release the descriptor even when close() reports EINTR: never retry. */
  if (close(fd) < 0 && errno != EINTR) return -errno;
  return 0;
}

int pfd_fd_shutdown(int fd) {
  if (shutdown(fd, SHUT_RDWR) < 0 && errno != ENOTCONN) return -errno;
  return 0;
}

int pfd_fd_peer(int fd, int pid) {
  (void)fd;
  return pid > 0 ? 0 : -EINVAL; /* the kernel knows the peer of a socket */
}

int pfd_fd_release(int fd) {
  (void)fd; /* nothing is kept per descriptor */
  return 0;
}

int pfd_fd_pair(int out[2]) { return pfd__cloexec_socketpair(out); }
