/*
 * dispatch.c - the cluster's connection dispatcher on Unix: one thread, no GIL, accepts in
 * batches and hands connections to workers over their private AF_UNIX sockets.  Who gets
 * which connection, and what happens to those a dead worker held, is common/handoff.c's
 * table (shared with win/dispatch.c); this file is the thread, accepting and sleeping.
 *
 * Threads.  One mutex guards everything below; the dispatcher thread holds it except while
 * it sleeps in poll().  The API (add, remove, stats) takes it and writes a byte to the
 * wake pipe so the thread rebuilds its poll set.  A removed worker's socket is closed by
 * the thread, after it has left poll(), so a descriptor number it polls is never reused
 * under it.  The thread blocks every signal: they stay with the program's own threads.
 *
 * poll(), not epoll/kqueue: the set is one listening socket, the wake pipe and one socket
 * per worker, rebuilt only when workers change, and poll() is the same on Linux and macOS.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/handoff.h"
#include "internal.h"

struct pfd_dispatch_s {
  pfd_dispatch_t *next_live; /* the registry of dispatchers, for fork (below) */
  pthread_mutex_t lock;
  pthread_t thread;
  int started, stopping;
  int listen_fd;
  int wake[2];
  pfd__table_t t;
};

/* ---- fork ----------------------------------------------------------------------------
 * A process forked while dispatchers run (a new worker) must not keep their descriptors:
 * a copy of a worker's socket there would hide that worker's hang-up from the dispatcher
 * and the dispatcher's from the worker.  pthread_atfork handlers take every dispatcher's
 * lock around fork() (so the child sees consistent tables: the thread holds the lock only
 * between polls), and in the child close every descriptor they hold and forget the
 * thread, which does not exist there. */

static pthread_mutex_t pfd__registry_lock = PTHREAD_MUTEX_INITIALIZER;
static pfd_dispatch_t *pfd__registry;
static pthread_once_t pfd__atfork_once = PTHREAD_ONCE_INIT;

static void pfd__prepare(void) {
  pfd_dispatch_t *d;
  (void)pthread_mutex_lock(&pfd__registry_lock);
  for (d = pfd__registry; d != NULL; d = d->next_live) (void)pthread_mutex_lock(&d->lock);
}

static void pfd__parent(void) {
  pfd_dispatch_t *d;
  for (d = pfd__registry; d != NULL; d = d->next_live) (void)pthread_mutex_unlock(&d->lock);
  (void)pthread_mutex_unlock(&pfd__registry_lock);
}

static void pfd__child(void) {
  pfd_dispatch_t *d;
  for (d = pfd__registry; d != NULL; d = d->next_live) {
    int i;
    unsigned k;
    for (i = 0; i < d->t.nslots; i++) {
      pfd__worker_t *w = &d->t.workers[i];
      for (k = 0; k < w->npending; k++) (void)close(w->pending[k].conn);
      w->npending = 0;
      if (w->sock >= 0) (void)close(w->sock);
      w->sock = -1;
      w->live = 0;
    }
    for (k = 0; k < d->t.qlen; k++) (void)close(d->t.queue[(d->t.qhead + k) % PFD__QUEUE_MAX]);
    d->t.qlen = 0;
    (void)close(d->wake[0]);
    (void)close(d->wake[1]);
    d->wake[0] = d->wake[1] = -1;
    d->started = 0; /* no thread here: pfd_dispatch_free must not join one */
    d->stopping = 1;
    (void)pthread_mutex_unlock(&d->lock);
  }
  (void)pthread_mutex_unlock(&pfd__registry_lock);
}

static void pfd__install_atfork(void) {
  (void)pthread_atfork(pfd__prepare, pfd__parent, pfd__child);
}

static void pfd__wake(pfd_dispatch_t *d) {
  char c = 1;
  /* A full pipe already holds a wake-up: nothing is lost when this write fails. */
  if (d->wake[1] >= 0) (void)!write(d->wake[1], &c, 1);
}

/* Reads a worker's acknowledgements; a hang-up or garbage takes it down. */
static void pfd__read_acks(pfd_dispatch_t *d, pfd__worker_t *w) {
  unsigned char buf[PFD__MSG * 64];
  for (;;) {
    ssize_t n = recv(w->sock, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0 || pfd__table_acks(&d->t, w, buf, (size_t)n) < 0) {
      pfd__table_worker_down(&d->t, w);
      return;
    }
  }
}

static void pfd__accept_batch(pfd_dispatch_t *d) {
  int i;
  for (i = 0; i < PFD__ACCEPT_BATCH && d->t.qlen < PFD__QUEUE_MAX; i++) {
    int fd = pfd__cloexec_accept(d->listen_fd);
    if (fd < 0) {
      if (fd == -EINTR || fd == -ECONNABORTED) continue;
      if (fd == -EAGAIN || fd == -EWOULDBLOCK) return;
      d->t.accept_errors++;
      if (fd == -EMFILE || fd == -ENFILE || fd == -ENOBUFS || fd == -ENOMEM) {
        d->t.accept_paused = 1; /* until an acknowledgement frees a descriptor */
      }
      return;
    }
    d->t.accepted++;
    (void)pfd__table_push(&d->t, fd, 0); /* room was checked by the loop condition */
    pfd__table_flush(&d->t);
  }
}

static void *pfd__run(void *arg) {
  pfd_dispatch_t *d = arg;
  struct pollfd *fds = NULL;
  int *slots = NULL;
  sigset_t all;
  (void)sigfillset(&all);
  (void)pthread_sigmask(SIG_BLOCK, &all, NULL);
  (void)pthread_mutex_lock(&d->lock);
  for (;;) {
    int n = 0, i, r, have_listen, paused;
    struct pollfd *grown;
    int *grown_slots;
    if (d->stopping) break;
    /* Close the sockets of workers that went down, now that no poll() holds them. */
    for (i = 0; i < d->t.nslots; i++) {
      pfd__worker_t *w = &d->t.workers[i];
      if (w->sock >= 0 && !w->live) {
        (void)close(w->sock);
        w->sock = -1;
      }
    }
    pfd__table_flush(&d->t);
    grown = realloc(fds, sizeof(*fds) * (size_t)(d->t.nslots + 2));
    grown_slots = realloc(slots, sizeof(*slots) * (size_t)(d->t.nslots + 2));
    if (grown) fds = grown;
    if (grown_slots) slots = grown_slots;
    if (!grown || !grown_slots) {
      /* Out of memory: wait a little and try again (connections wait in the backlog). */
      (void)pthread_mutex_unlock(&d->lock);
      (void)poll(NULL, 0, 10);
      (void)pthread_mutex_lock(&d->lock);
      continue;
    }
    fds[n].fd = d->wake[0];
    fds[n].events = POLLIN;
    slots[n++] = -1;
    have_listen = d->t.qlen < PFD__QUEUE_MAX && !d->t.accept_paused;
    if (have_listen) {
      fds[n].fd = d->listen_fd;
      fds[n].events = POLLIN;
      slots[n++] = -2;
    }
    for (i = 0; i < d->t.nslots; i++) {
      if (d->t.workers[i].sock < 0 || !d->t.workers[i].live) continue;
      fds[n].fd = d->t.workers[i].sock;
      fds[n].events = POLLIN;
      slots[n++] = i;
    }
    paused = d->t.accept_paused; /* (read under the lock: remove() may change it) */
    (void)pthread_mutex_unlock(&d->lock);
    /* Paused accepting (no descriptors): look again every 100 ms. */
    r = poll(fds, (nfds_t)n, paused ? 100 : -1);
    (void)pthread_mutex_lock(&d->lock);
    if (r < 0) continue; /* EINTR cannot happen (signals blocked); ENOMEM: try again */
    if (r == 0) d->t.accept_paused = 0;
    for (i = 0; i < n; i++) {
      if (!fds[i].revents) continue;
      if (slots[i] == -1) {
        char buf[64];
        while (read(d->wake[0], buf, sizeof(buf)) > 0) {
        }
      } else if (slots[i] >= 0) {
        pfd__worker_t *w = &d->t.workers[slots[i]];
        if (w->live && w->sock == fds[i].fd) pfd__read_acks(d, w);
      }
    }
    for (i = 0; i < n; i++) {
      if (slots[i] == -2 && fds[i].revents) pfd__accept_batch(d);
    }
  }
  (void)pthread_mutex_unlock(&d->lock);
  free(fds);
  free(slots);
  return NULL;
}

int pfd_dispatch_new(pfd_dispatch_t **out, int listen_fd, unsigned max_inflight) {
  pfd_dispatch_t *d;
  int r;
  *out = NULL;
  if (listen_fd < 0) return -EINVAL;
  if ((r = pfd__set_nonblocking(listen_fd, 1)) < 0) return r;
  d = calloc(1, sizeof(*d));
  if (d == NULL) return -ENOMEM;
  d->listen_fd = listen_fd;
  d->t.max_inflight = max_inflight ? max_inflight : PFD_DISPATCH_DEFAULT_INFLIGHT;
  if ((r = pfd__cloexec_pipe(d->wake, 1)) < 0) {
    free(d);
    return r;
  }
  r = pthread_mutex_init(&d->lock, NULL);
  if (r != 0) {
    (void)close(d->wake[0]);
    (void)close(d->wake[1]);
    free(d);
    return -r;
  }
  (void)pthread_once(&pfd__atfork_once, pfd__install_atfork);
  (void)pthread_mutex_lock(&pfd__registry_lock);
  d->next_live = pfd__registry;
  pfd__registry = d;
  (void)pthread_mutex_unlock(&pfd__registry_lock);
  *out = d;
  return 0;
}

int pfd_dispatch_start(pfd_dispatch_t *d) {
  int r;
  (void)pthread_mutex_lock(&d->lock);
  if (d->started) {
    (void)pthread_mutex_unlock(&d->lock);
    return -EBUSY;
  }
  r = pthread_create(&d->thread, NULL, pfd__run, d);
  if (r == 0) d->started = 1;
  (void)pthread_mutex_unlock(&d->lock);
  return -r;
}

int pfd_dispatch_add(pfd_dispatch_t *d, int sock) {
  int r;
  (void)pthread_mutex_lock(&d->lock);
  r = pfd__table_add(&d->t, sock, 0);
  (void)pthread_mutex_unlock(&d->lock);
  if (r >= 0) pfd__wake(d);
  return r;
}

int pfd_dispatch_balance(pfd_dispatch_t *d, int mode) {
  if (mode != PFD_DISPATCH_ROUND_ROBIN && mode != PFD_DISPATCH_LEAST_CONN) return -EINVAL;
  (void)pthread_mutex_lock(&d->lock);
  d->t.balance = mode;
  (void)pthread_mutex_unlock(&d->lock);
  return 0;
}

int pfd_dispatch_load(pfd_dispatch_t *d, int slot, const unsigned long long *open) {
  pfd__worker_t *w;
  (void)pthread_mutex_lock(&d->lock);
  if ((w = pfd__table_live(&d->t, slot)) != NULL) w->open = open;
  (void)pthread_mutex_unlock(&d->lock);
  return w ? 0 : -ENOENT;
}

int pfd_dispatch_remove(pfd_dispatch_t *d, int slot) {
  pfd__worker_t *w;
  (void)pthread_mutex_lock(&d->lock);
  if ((w = pfd__table_live(&d->t, slot)) != NULL) {
    /* The worker may be acknowledging right now.  After shutdown() its next
     * acknowledgement fails (EPIPE: it closes that connection, never serves it), and the
     * ones it sent before are still queued: read them, so that only connections it does
     * not have go to another worker.  Otherwise one could be served by two workers (one
     * of which waits for a request the other read, holding the client open). */
    (void)shutdown(w->sock, SHUT_RDWR);
    pfd__read_acks(d, w); /* ends in worker_down (the shut-down socket reads as EOF) */
    if (w->live) pfd__table_worker_down(&d->t, w);
    w->open = NULL; /* the caller may unmap or reuse that memory now */
    if (!d->started) { /* no thread polls it: close now */
      (void)close(w->sock);
      w->sock = -1;
    }
  }
  (void)pthread_mutex_unlock(&d->lock);
  if (w != NULL) pfd__wake(d);
  return w ? 0 : -ENOENT;
}

int pfd_dispatch_stats(pfd_dispatch_t *d, int slot, unsigned long long out[4]) {
  int r;
  (void)pthread_mutex_lock(&d->lock);
  r = pfd__table_stats(&d->t, slot, out);
  (void)pthread_mutex_unlock(&d->lock);
  return r;
}

void pfd_dispatch_free(pfd_dispatch_t *d) {
  pfd_dispatch_t **link;
  int i;
  if (d == NULL) return;
  (void)pthread_mutex_lock(&pfd__registry_lock);
  for (link = &pfd__registry; *link != NULL; link = &(*link)->next_live) {
    if (*link == d) {
      *link = d->next_live;
      break;
    }
  }
  (void)pthread_mutex_unlock(&pfd__registry_lock);
  (void)pthread_mutex_lock(&d->lock);
  d->stopping = 1;
  (void)pthread_mutex_unlock(&d->lock);
  pfd__wake(d);
  if (d->started) (void)pthread_join(d->thread, NULL);
  for (i = 0; i < d->t.nslots; i++) {
    if (d->t.workers[i].sock >= 0) (void)close(d->t.workers[i].sock);
  }
  pfd__table_free(&d->t);
  if (d->wake[0] >= 0) (void)close(d->wake[0]);
  if (d->wake[1] >= 0) (void)close(d->wake[1]);
  (void)pthread_mutex_destroy(&d->lock);
  free(d);
}
