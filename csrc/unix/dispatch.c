/*
 * dispatch.c - the cluster's connection dispatcher: one thread, no GIL, accepts in batches
 * and hands connections to workers round-robin over their private sockets.
 *
 * Nothing is lost.  A connection is "pending" on a worker from the hand-off until the
 * worker's acknowledgement: only then does the dispatcher close its copy.  A worker that
 * dies (its socket hangs up or refuses a send) or is removed gives its pending connections
 * back, oldest first, to the front of the queue of connections waiting for a worker, and
 * they go to the others.  A worker with `max_inflight` pending connections gets no more
 * until it acknowledges one, so a stuck worker stops receiving work; when no worker can
 * take one, accepted connections wait in a bounded queue, and past that in the kernel's
 * backlog (the listening socket is not polled meanwhile).
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
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "pyforkd.h"

#define PFD__QUEUE_MAX 1024  /* accepted connections waiting for a worker, at most */
#define PFD__ACCEPT_BATCH 64 /* accepts per wake-up */
#define PFD__MSG 8           /* a hand-off or an acknowledgement: a u64 sequence number */

typedef struct {
  unsigned long long seq;
  int fd;
} pfd__conn_t;

typedef struct {
  int sock;          /* -1: a free slot */
  int live;          /* 0 once dead or removed (the socket waits for the thread to close it) */
  pfd__conn_t *pending;
  unsigned npending;
  unsigned char ack[PFD__MSG];
  unsigned ack_fill; /* bytes of a partly received acknowledgement */
  unsigned long long handed, acked;
  const unsigned long long *open; /* the worker's own count of open connections, or NULL */
  unsigned long long tried;       /* == the dispatcher's `attempt`: tried for this one */
} pfd__worker_t;

struct pfd_dispatch_s {
  pfd_dispatch_t *next_live; /* the registry of dispatchers, for fork (below) */
  pthread_mutex_t lock;
  pthread_t thread;
  int started, stopping;
  int listen_fd;
  int wake[2];
  unsigned max_inflight;
  pfd__worker_t *workers;
  int nslots;
  int next; /* where the round-robin looks first */
  int balance;                /* PFD_DISPATCH_ROUND_ROBIN or PFD_DISPATCH_LEAST_CONN */
  unsigned long long attempt; /* counts pfd__hand calls (marks the workers tried) */
  int queue[PFD__QUEUE_MAX];
  unsigned qhead, qlen;
  int accept_paused; /* out of descriptors: wait for one to be freed before accepting */
  unsigned long long seq, accepted, redispatched, accept_errors;
};

/* accept4 / pipe2 where the system has them (Linux); accept / pipe + fcntl elsewhere (no
 * other thread of ours execs a child in between that would matter: spawn.c closes every
 * descriptor a child is not given). */
static int pfd__accept(int listen_fd) {
#ifdef __linux__
  return accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
#else
  int fd = accept(listen_fd, NULL, NULL);
  if (fd >= 0) (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
  return fd;
#endif
}

static int pfd__pipe(int fds[2]) {
#ifdef __linux__
  return pipe2(fds, O_CLOEXEC | O_NONBLOCK);
#else
  int i;
  if (pipe(fds) < 0) return -1;
  for (i = 0; i < 2; i++) {
    if (fcntl(fds[i], F_SETFD, FD_CLOEXEC) < 0 || fcntl(fds[i], F_SETFL, O_NONBLOCK) < 0) {
      int err = errno;
      (void)close(fds[0]);
      (void)close(fds[1]);
      errno = err;
      return -1;
    }
  }
  return 0;
#endif
}

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
    for (i = 0; i < d->nslots; i++) {
      pfd__worker_t *w = &d->workers[i];
      for (k = 0; k < w->npending; k++) (void)close(w->pending[k].fd);
      w->npending = 0;
      if (w->sock >= 0) (void)close(w->sock);
      w->sock = -1;
      w->live = 0;
    }
    for (k = 0; k < d->qlen; k++) (void)close(d->queue[(d->qhead + k) % PFD__QUEUE_MAX]);
    d->qlen = 0;
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

static int pfd__queue_push(pfd_dispatch_t *d, int fd, int front) {
  if (d->qlen == PFD__QUEUE_MAX) return -1;
  if (front) {
    d->qhead = (d->qhead + PFD__QUEUE_MAX - 1) % PFD__QUEUE_MAX;
    d->queue[d->qhead] = fd;
  } else {
    d->queue[(d->qhead + d->qlen) % PFD__QUEUE_MAX] = fd;
  }
  d->qlen++;
  return 0;
}

/* A worker is gone (or removed): its pending connections go back to the front of the
 * queue, oldest first; the socket stays open until the thread closes it. */
static void pfd__worker_down(pfd_dispatch_t *d, pfd__worker_t *w) {
  unsigned i;
  w->live = 0;
  for (i = w->npending; i > 0; i--) {
    int fd = w->pending[i - 1].fd;
    if (pfd__queue_push(d, fd, 1) < 0) {
      (void)close(fd); /* the queue is full of newer ones: this one cannot be kept */
    } else {
      d->redispatched++;
    }
  }
  w->npending = 0;
}

/* The worker that should take the next connection and has not been tried for it: the next
 * in turn, or the least loaded (ties go to the next in turn).  -1 when there is none. */
static int pfd__choose(pfd_dispatch_t *d) {
  int best = -1, tried;
  unsigned long long best_load = 0;
  for (tried = 0; tried < d->nslots; tried++) {
    int slot = (d->next + tried) % d->nslots;
    pfd__worker_t *w = &d->workers[slot];
    unsigned long long load;
    if (w->sock < 0 || !w->live || w->npending >= d->max_inflight || w->tried == d->attempt)
      continue;
    if (d->balance == PFD_DISPATCH_ROUND_ROBIN) return slot;
    /* A worker's count is written by the worker alone; a stale value only skews a choice. */
    load = w->npending + (w->open ? __atomic_load_n(w->open, __ATOMIC_RELAXED) : 0);
    if (best < 0 || load < best_load) {
      best = slot;
      best_load = load;
    }
  }
  return best;
}

/* Hands `fd` to a worker; 1 when one took it, 0 when none can now. */
static int pfd__hand(pfd_dispatch_t *d, int fd) {
  int slot;
  d->attempt++;
  while ((slot = pfd__choose(d)) >= 0) {
    pfd__worker_t *w = &d->workers[slot];
    unsigned char msg[PFD__MSG];
    unsigned long long seq;
    long n;
    int k;
    w->tried = d->attempt;
    seq = d->seq + 1;
    for (k = 0; k < PFD__MSG; k++) msg[k] = (unsigned char)(seq >> (8 * k));
    n = pfd_fd_send(w->sock, msg, sizeof(msg), NULL, 0, &fd, 1, 0);
    if (n == -EAGAIN) continue; /* its socket is full: a busy worker, try another */
    if (n != PFD__MSG) {
      /* Gone (-EPIPE, -ECONNRESET), or a hand-off cut in two: the stream to this worker
       * cannot be trusted any more either way. */
      pfd__worker_down(d, w);
      continue;
    }
    d->seq = seq;
    w->pending[w->npending].seq = seq;
    w->pending[w->npending].fd = fd;
    w->npending++;
    w->handed++;
    d->next = (slot + 1) % d->nslots;
    return 1;
  }
  return 0;
}

static void pfd__flush_queue(pfd_dispatch_t *d) {
  while (d->qlen > 0 && pfd__hand(d, d->queue[d->qhead])) {
    d->qhead = (d->qhead + 1) % PFD__QUEUE_MAX;
    d->qlen--;
  }
}

/* Reads a worker's acknowledgements; a hang-up or garbage takes it down. */
static void pfd__read_acks(pfd_dispatch_t *d, pfd__worker_t *w) {
  unsigned char buf[PFD__MSG * 64];
  for (;;) {
    ssize_t n = recv(w->sock, buf, sizeof(buf), MSG_DONTWAIT);
    ssize_t i;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) {
      pfd__worker_down(d, w);
      return;
    }
    for (i = 0; i < n; i++) {
      unsigned long long seq = 0;
      unsigned j, k;
      w->ack[w->ack_fill++] = buf[i];
      if (w->ack_fill < PFD__MSG) continue;
      w->ack_fill = 0;
      for (k = 0; k < PFD__MSG; k++) seq |= (unsigned long long)w->ack[k] << (8 * k);
      for (j = 0; j < w->npending && w->pending[j].seq != seq; j++) {
      }
      if (j == w->npending) { /* not a connection it holds: a broken worker */
        pfd__worker_down(d, w);
        return;
      }
      (void)close(w->pending[j].fd);
      memmove(&w->pending[j], &w->pending[j + 1], (w->npending - j - 1) * sizeof(pfd__conn_t));
      w->npending--;
      w->acked++;
      d->accept_paused = 0; /* a descriptor was freed */
    }
  }
}

static void pfd__accept_batch(pfd_dispatch_t *d) {
  int i;
  for (i = 0; i < PFD__ACCEPT_BATCH && d->qlen < PFD__QUEUE_MAX; i++) {
    int fd = pfd__accept(d->listen_fd);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      d->accept_errors++;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        d->accept_paused = 1; /* until an acknowledgement frees a descriptor */
      }
      return;
    }
    d->accepted++;
    (void)pfd__queue_push(d, fd, 0); /* room was checked by the loop condition */
    pfd__flush_queue(d);
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
    for (i = 0; i < d->nslots; i++) {
      pfd__worker_t *w = &d->workers[i];
      if (w->sock >= 0 && !w->live) {
        (void)close(w->sock);
        w->sock = -1;
      }
    }
    pfd__flush_queue(d);
    grown = realloc(fds, sizeof(*fds) * (size_t)(d->nslots + 2));
    grown_slots = realloc(slots, sizeof(*slots) * (size_t)(d->nslots + 2));
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
    have_listen = d->qlen < PFD__QUEUE_MAX && !d->accept_paused;
    if (have_listen) {
      fds[n].fd = d->listen_fd;
      fds[n].events = POLLIN;
      slots[n++] = -2;
    }
    for (i = 0; i < d->nslots; i++) {
      if (d->workers[i].sock < 0 || !d->workers[i].live) continue;
      fds[n].fd = d->workers[i].sock;
      fds[n].events = POLLIN;
      slots[n++] = i;
    }
    paused = d->accept_paused; /* (read under the lock: remove() may change it) */
    (void)pthread_mutex_unlock(&d->lock);
    /* Paused accepting (no descriptors): look again every 100 ms. */
    r = poll(fds, (nfds_t)n, paused ? 100 : -1);
    (void)pthread_mutex_lock(&d->lock);
    if (r < 0) continue; /* EINTR cannot happen (signals blocked); ENOMEM: try again */
    if (r == 0) d->accept_paused = 0;
    for (i = 0; i < n; i++) {
      if (!fds[i].revents) continue;
      if (slots[i] == -1) {
        char buf[64];
        while (read(d->wake[0], buf, sizeof(buf)) > 0) {
        }
      } else if (slots[i] >= 0) {
        pfd__worker_t *w = &d->workers[slots[i]];
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
  int flags, r;
  *out = NULL;
  if (listen_fd < 0) return -EINVAL;
  flags = fcntl(listen_fd, F_GETFL);
  if (flags < 0) return -errno;
  if (fcntl(listen_fd, F_SETFL, flags | O_NONBLOCK) < 0) return -errno;
  d = calloc(1, sizeof(*d));
  if (d == NULL) return -ENOMEM;
  d->listen_fd = listen_fd;
  d->max_inflight = max_inflight ? max_inflight : PFD_DISPATCH_DEFAULT_INFLIGHT;
  if (pfd__pipe(d->wake) < 0) {
    r = -errno;
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
  int slot, r = 0;
  pfd__conn_t *pending;
  (void)pthread_mutex_lock(&d->lock);
  for (slot = 0; slot < d->nslots && d->workers[slot].sock >= 0; slot++) {
  }
  if (slot == d->nslots) {
    pfd__worker_t *grown;
    if (d->nslots == PFD_DISPATCH_MAX_WORKERS) {
      r = -EMFILE;
      goto done;
    }
    grown = realloc(d->workers, sizeof(*grown) * (size_t)(d->nslots + 1));
    if (grown == NULL) {
      r = -ENOMEM;
      goto done;
    }
    d->workers = grown;
    memset(&d->workers[slot], 0, sizeof(d->workers[slot]));
    d->workers[slot].sock = -1;
    d->nslots++;
  }
  pending = calloc(d->max_inflight, sizeof(*pending));
  if (pending == NULL) {
    r = -ENOMEM;
    goto done;
  }
  free(d->workers[slot].pending);
  memset(&d->workers[slot], 0, sizeof(d->workers[slot]));
  d->workers[slot].pending = pending;
  d->workers[slot].sock = sock;
  d->workers[slot].live = 1;
  r = slot;
done:
  (void)pthread_mutex_unlock(&d->lock);
  if (r >= 0) pfd__wake(d);
  return r;
}

int pfd_dispatch_balance(pfd_dispatch_t *d, int mode) {
  if (mode != PFD_DISPATCH_ROUND_ROBIN && mode != PFD_DISPATCH_LEAST_CONN) return -EINVAL;
  (void)pthread_mutex_lock(&d->lock);
  d->balance = mode;
  (void)pthread_mutex_unlock(&d->lock);
  return 0;
}

int pfd_dispatch_load(pfd_dispatch_t *d, int slot, const unsigned long long *open) {
  int r = -ENOENT;
  (void)pthread_mutex_lock(&d->lock);
  if (slot >= 0 && slot < d->nslots && d->workers[slot].sock >= 0 && d->workers[slot].live) {
    d->workers[slot].open = open;
    r = 0;
  }
  (void)pthread_mutex_unlock(&d->lock);
  return r;
}

int pfd_dispatch_remove(pfd_dispatch_t *d, int slot) {
  int r = -ENOENT;
  (void)pthread_mutex_lock(&d->lock);
  if (slot >= 0 && slot < d->nslots && d->workers[slot].sock >= 0 && d->workers[slot].live) {
    pfd__worker_t *w = &d->workers[slot];
    /* The worker may be acknowledging right now.  After shutdown() its next
     * acknowledgement fails (EPIPE: it closes that connection, never serves it), and the
     * ones it sent before are still queued: read them, so that only connections it does
     * not have go to another worker.  Otherwise one could be served by two workers (one
     * of which waits for a request the other read, holding the client open). */
    (void)shutdown(w->sock, SHUT_RDWR);
    pfd__read_acks(d, w); /* ends in pfd__worker_down (the shut-down socket reads as EOF) */
    if (w->live) pfd__worker_down(d, w);
    w->open = NULL; /* the caller may unmap or reuse that memory now */
    if (!d->started) { /* no thread polls it: close now */
      (void)close(d->workers[slot].sock);
      d->workers[slot].sock = -1;
    }
    r = 0;
  }
  (void)pthread_mutex_unlock(&d->lock);
  if (r == 0) pfd__wake(d);
  return r;
}

int pfd_dispatch_stats(pfd_dispatch_t *d, int slot, unsigned long long out[4]) {
  int r = 0;
  (void)pthread_mutex_lock(&d->lock);
  if (slot == -1) {
    out[0] = d->accepted;
    out[1] = d->qlen;
    out[2] = d->redispatched;
    out[3] = d->accept_errors;
  } else if (slot >= 0 && slot < d->nslots && d->workers[slot].pending != NULL) {
    pfd__worker_t *w = &d->workers[slot];
    out[0] = w->handed;
    out[1] = w->acked;
    out[2] = w->npending;
    out[3] = (unsigned long long)(w->sock >= 0 && w->live);
  } else {
    r = -ENOENT;
  }
  (void)pthread_mutex_unlock(&d->lock);
  return r;
}

void pfd_dispatch_free(pfd_dispatch_t *d) {
  pfd_dispatch_t **link;
  int i;
  unsigned k;
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
  for (i = 0; i < d->nslots; i++) {
    pfd__worker_t *w = &d->workers[i];
    for (k = 0; k < w->npending; k++) (void)close(w->pending[k].fd);
    if (w->sock >= 0) (void)close(w->sock);
    free(w->pending);
  }
  for (k = 0; k < d->qlen; k++) (void)close(d->queue[(d->qhead + k) % PFD__QUEUE_MAX]);
  free(d->workers);
  if (d->wake[0] >= 0) (void)close(d->wake[0]);
  if (d->wake[1] >= 0) (void)close(d->wake[1]);
  (void)pthread_mutex_destroy(&d->lock);
  free(d);
}

int pfd_dispatch_take(int sock, unsigned long long *seq, int flags) {
  unsigned char msg[PFD__MSG];
  size_t got = 0;
  int fd = -1, k;
  while (got < PFD__MSG) {
    int fds[1], nfds = 0;
    long n = pfd_fd_recv(sock, msg + got, PFD__MSG - got, fds, 1, &nfds,
                         got ? PFD_FD_BLOCK : flags);
    if (n == -EINTR && got) continue; /* the rest of a hand-off is on its way */
    if (n < 0 || n == 0 || nfds == PFD_FD_TRUNCATED || (nfds > 0 && (got || fd >= 0))) {
      if (nfds > 0) (void)close(fds[0]);
      if (fd >= 0) (void)close(fd);
      if (n < 0) return (int)n;
      return n == 0 ? -EPIPE : -EBADMSG;
    }
    if (nfds == 1) fd = fds[0];
    got += (size_t)n;
  }
  if (fd < 0) return -EBADMSG;
  *seq = 0;
  for (k = 0; k < PFD__MSG; k++) *seq |= (unsigned long long)msg[k] << (8 * k);
  return fd;
}

int pfd_dispatch_ack(int sock, unsigned long long seq) {
  unsigned char msg[PFD__MSG];
  size_t sent = 0;
  int k;
  for (k = 0; k < PFD__MSG; k++) msg[k] = (unsigned char)(seq >> (8 * k));
  while (sent < PFD__MSG) {
    long n = pfd_fd_send(sock, msg + sent, PFD__MSG - sent, NULL, 0, NULL, 0, PFD_FD_BLOCK);
    if (n == -EINTR) continue;
    if (n < 0) return (int)n;
    sent += (size_t)n;
  }
  return 0;
}
