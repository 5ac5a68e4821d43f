/*
 * handoff.c - the dispatchers' shared bookkeeping (see handoff.h) and the worker's side
 * of a hand-off (cdef/dispatch.h: pfd_dispatch_take, pfd_dispatch_ack).
 *
 * Nothing is lost.  A connection is "pending" on a worker from the hand-off until the
 * worker's acknowledgement: only then does the dispatcher close its copy.  A worker that
 * goes down gives its pending connections back, oldest first, to the front of the queue
 * of connections waiting for a worker, and they go to the others.  A worker holding
 * `room` pending connections gets no more until it acknowledges one, so a stuck worker
 * stops receiving work; when no worker can take one, accepted connections wait in a
 * bounded queue, and past that in the kernel's backlog (the platform stops accepting).
 *
 * Everything here is built on pfd_fd_send / pfd_fd_recv, so the one text serves both
 * platforms (Unix passes the connection with SCM_RIGHTS, Windows in a libuv frame).
 * The caller holds its dispatcher's lock around every table call.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "handoff.h"

void pfd__seq_put(unsigned char msg[PFD__MSG], unsigned long long seq) {
  int k;
  for (k = 0; k < PFD__MSG; k++) msg[k] = (unsigned char)(seq >> (8 * k));
}

unsigned long long pfd__seq_get(const unsigned char msg[PFD__MSG]) {
  unsigned long long seq = 0;
  int k;
  for (k = 0; k < PFD__MSG; k++) seq |= (unsigned long long)msg[k] << (8 * k);
  return seq;
}

/* ---- the table ----------------------------------------------------------------------- */

int pfd__table_push(pfd__table_t *t, int conn, int front) {
  if (t->qlen == PFD__QUEUE_MAX) return -1;
  if (front) {
    t->qhead = (t->qhead + PFD__QUEUE_MAX - 1) % PFD__QUEUE_MAX;
    t->queue[t->qhead] = conn;
  } else {
    t->queue[(t->qhead + t->qlen) % PFD__QUEUE_MAX] = conn;
  }
  t->qlen++;
  return 0;
}

void pfd__table_worker_down(pfd__table_t *t, pfd__worker_t *w) {
  unsigned i;
  w->live = 0;
  for (i = w->npending; i > 0; i--) {
    int conn = w->pending[i - 1].conn;
    if (pfd__table_push(t, conn, 1) < 0) {
      (void)pfd_fd_close(conn); /* the queue is full of newer ones: this one cannot be kept */
    } else {
      t->redispatched++;
    }
  }
  w->npending = 0;
}

/* The worker's own count of open connections: written by the worker alone, so a stale
 * value only skews one choice (an aligned 64-bit load is not torn on the platforms built
 * for). */
static unsigned long long pfd__open_count(const pfd__worker_t *w) {
  return w->open ? *(const volatile unsigned long long *)w->open : 0;
}

/* The worker that should take the next connection and has not been tried for it: the next
 * in turn, or the least loaded (ties go to the next in turn).  -1 when there is none. */
static int pfd__choose(pfd__table_t *t) {
  int best = -1, tried;
  unsigned long long best_load = 0;
  for (tried = 0; tried < t->nslots; tried++) {
    int slot = (t->next + tried) % t->nslots;
    pfd__worker_t *w = &t->workers[slot];
    unsigned long long load;
    if (w->sock < 0 || !w->live || w->npending >= w->room || w->tried == t->attempt) continue;
    if (t->balance == PFD_DISPATCH_ROUND_ROBIN) return slot;
    load = w->npending + pfd__open_count(w);
    if (best < 0 || load < best_load) {
      best = slot;
      best_load = load;
    }
  }
  return best;
}

/* Hands `conn` to a worker; 1 when one took it, 0 when none can now. */
static int pfd__hand(pfd__table_t *t, int conn) {
  int slot;
  t->attempt++;
  while ((slot = pfd__choose(t)) >= 0) {
    pfd__worker_t *w = &t->workers[slot];
    unsigned char msg[PFD__MSG];
    unsigned long long seq = t->seq + 1;
    long n;
    w->tried = t->attempt;
    pfd__seq_put(msg, seq);
    n = pfd_fd_send(w->sock, msg, sizeof(msg), NULL, 0, &conn, 1, 0);
    if (n == -EAGAIN) continue; /* its channel is full: a busy worker, try another */
    if (n != PFD__MSG) {
      /* Gone (-EPIPE, -ECONNRESET, -ESRCH), or a hand-off cut in two: the stream to this
       * worker cannot be trusted any more either way. */
      pfd__table_worker_down(t, w);
      continue;
    }
    t->seq = seq;
    w->pending[w->npending].seq = seq;
    w->pending[w->npending].conn = conn;
    w->npending++;
    w->handed++;
    t->next = (slot + 1) % t->nslots;
    return 1;
  }
  return 0;
}

void pfd__table_flush(pfd__table_t *t) {
  while (t->qlen > 0 && pfd__hand(t, t->queue[t->qhead])) {
    t->qhead = (t->qhead + 1) % PFD__QUEUE_MAX;
    t->qlen--;
  }
}

int pfd__table_acks(pfd__table_t *t, pfd__worker_t *w, const unsigned char *buf, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) {
    unsigned long long seq;
    unsigned j;
    w->ack[w->ack_fill++] = buf[i];
    if (w->ack_fill < PFD__MSG) continue;
    w->ack_fill = 0;
    seq = pfd__seq_get(w->ack);
    for (j = 0; j < w->npending && w->pending[j].seq != seq; j++) {
    }
    if (j == w->npending) return -1; /* not a connection it holds: a broken worker */
    (void)pfd_fd_close(w->pending[j].conn);
    memmove(&w->pending[j], &w->pending[j + 1], (w->npending - j - 1) * sizeof(pfd__conn_t));
    w->npending--;
    w->acked++;
    t->accept_paused = 0; /* a descriptor was freed */
  }
  return 0;
}

int pfd__table_add(pfd__table_t *t, int sock, unsigned room) {
  int slot;
  pfd__conn_t *pending;
  for (slot = 0; slot < t->nslots && t->workers[slot].sock >= 0; slot++) {
  }
  if (slot == t->nslots) {
    pfd__worker_t *grown;
    if (t->nslots == PFD_DISPATCH_MAX_WORKERS) return -EMFILE;
    grown = realloc(t->workers, sizeof(*grown) * (size_t)(t->nslots + 1));
    if (grown == NULL) return -ENOMEM;
    t->workers = grown;
    memset(&t->workers[slot], 0, sizeof(t->workers[slot]));
    t->workers[slot].sock = -1;
    t->nslots++;
  }
  pending = calloc(t->max_inflight, sizeof(*pending));
  if (pending == NULL) return -ENOMEM;
  free(t->workers[slot].pending);
  memset(&t->workers[slot], 0, sizeof(t->workers[slot]));
  t->workers[slot].pending = pending;
  t->workers[slot].sock = sock;
  t->workers[slot].live = 1;
  t->workers[slot].room = room && room < t->max_inflight ? room : t->max_inflight;
  return slot;
}

pfd__worker_t *pfd__table_live(pfd__table_t *t, int slot) {
  if (slot < 0 || slot >= t->nslots) return NULL;
  if (t->workers[slot].sock < 0 || !t->workers[slot].live) return NULL;
  return &t->workers[slot];
}

int pfd__table_stats(const pfd__table_t *t, int slot, unsigned long long out[4]) {
  if (slot == -1) {
    out[0] = t->accepted;
    out[1] = t->qlen;
    out[2] = t->redispatched;
    out[3] = t->accept_errors;
  } else if (slot >= 0 && slot < t->nslots && t->workers[slot].pending != NULL) {
    const pfd__worker_t *w = &t->workers[slot];
    out[0] = w->handed;
    out[1] = w->acked;
    out[2] = w->npending;
    out[3] = (unsigned long long)(w->sock >= 0 && w->live);
  } else {
    return -ENOENT;
  }
  return 0;
}

void pfd__table_free(pfd__table_t *t) {
  int i;
  unsigned k;
  for (i = 0; i < t->nslots; i++) {
    pfd__worker_t *w = &t->workers[i];
    for (k = 0; k < w->npending; k++) (void)pfd_fd_close(w->pending[k].conn);
    free(w->pending);
  }
  for (k = 0; k < t->qlen; k++) (void)pfd_fd_close(t->queue[(t->qhead + k) % PFD__QUEUE_MAX]);
  free(t->workers);
  t->workers = NULL;
  t->nslots = 0;
  t->qlen = 0;
}

/* ---- the worker's side ------------------------------------------------------------------ */

int pfd_dispatch_take(int sock, unsigned long long *seq, int flags) {
  unsigned char msg[PFD__MSG];
  size_t got = 0;
  int conn = -1;
  while (got < PFD__MSG) {
    int fds[1], nfds = 0;
    long n = pfd_fd_recv(sock, msg + got, PFD__MSG - got, fds, 1, &nfds,
                         got ? PFD_FD_BLOCK : flags);
    if (n == -EINTR && got) continue; /* the rest of a hand-off is on its way */
    if (n < 0 || n == 0 || nfds == PFD_FD_TRUNCATED || (nfds > 0 && (got || conn >= 0))) {
      if (nfds > 0) (void)pfd_fd_close(fds[0]);
      if (conn >= 0) (void)pfd_fd_close(conn);
      if (n < 0) return (int)n;
      return n == 0 ? -EPIPE : -EBADMSG;
    }
    if (nfds == 1) conn = fds[0];
    got += (size_t)n;
  }
  if (conn < 0) return -EBADMSG;
  *seq = pfd__seq_get(msg);
  return conn;
}

int pfd_dispatch_ack(int sock, const unsigned long long *seqs, unsigned n) {
  /* Up to PFD__ACK_BATCH acknowledgements per send: the dispatcher reads them as a stream. */
  unsigned char msg[PFD__MSG * PFD__ACK_BATCH];
  unsigned done = 0;
  while (done < n) {
    unsigned k, batch = n - done < PFD__ACK_BATCH ? n - done : PFD__ACK_BATCH;
    size_t sent = 0, size = (size_t)batch * PFD__MSG;
    for (k = 0; k < batch; k++) pfd__seq_put(msg + (size_t)k * PFD__MSG, seqs[done + k]);
    while (sent < size) {
      long r = pfd_fd_send(sock, msg + sent, size - sent, NULL, 0, NULL, 0, PFD_FD_BLOCK);
      if (r == -EINTR) continue;
      if (r < 0) return (int)r;
      sent += (size_t)r;
    }
    done += batch;
  }
  return 0;
}
