/*
 * handoff.h - what both dispatchers share (internal to the C core): the wire message, and
 * the bookkeeping of who holds which connection.
 *
 * A hand-off is 8 bytes, the connection's sequence number in little-endian order, sent
 * with the connection attached; the worker's acknowledgement is the same 8 bytes alone.
 *
 * The table (handoff.c) decides everything that does not depend on the system: which
 * worker takes the next connection, what a worker holds until it acknowledges, where the
 * connections of a worker that went down go.  unix/dispatch.c and win/dispatch.c own the
 * table under their lock and do the system's part: the thread, accepting, sleeping, and
 * reading the acknowledgements off the workers' channels.
 */
#ifndef PFD_HANDOFF_H
#define PFD_HANDOFF_H

#include "pyforkd.h"

#define PFD__MSG 8           /* a hand-off or an acknowledgement: a u64 sequence number */
#define PFD__ACK_BATCH 64    /* acknowledgements sent at once by pfd_dispatch_ack */
#define PFD__QUEUE_MAX 1024  /* accepted connections waiting for a worker, at most */
#define PFD__ACCEPT_BATCH 64 /* accepts per wake-up */

typedef struct {
  unsigned long long seq;
  int conn;
} pfd__conn_t;

typedef struct {
  int sock;          /* the channel to the worker; -1: a free slot */
  int live;          /* 0 once dead or removed (the platform closes `sock` when it may) */
  pfd__conn_t *pending; /* handed, not yet acknowledged (oldest first) */
  unsigned npending;
  unsigned room;     /* hand-offs it may hold at once (<= the table's max_inflight) */
  unsigned char ack[PFD__MSG];
  unsigned ack_fill; /* bytes of a partly received acknowledgement */
  unsigned long long handed, acked;
  const unsigned long long *open; /* the worker's own count of open connections, or NULL */
  unsigned long long tried;       /* == the table's `attempt`: tried for this one */
} pfd__worker_t;

typedef struct {
  unsigned max_inflight;
  pfd__worker_t *workers;
  int nslots;
  int next;                   /* where the round-robin looks first */
  int balance;                /* PFD_DISPATCH_ROUND_ROBIN or PFD_DISPATCH_LEAST_CONN */
  unsigned long long attempt; /* counts pfd__table_hand calls (marks the workers tried) */
  int queue[PFD__QUEUE_MAX];
  unsigned qhead, qlen;
  int accept_paused; /* out of descriptors: wait for one to be freed before accepting */
  unsigned long long seq, accepted, redispatched, accept_errors;
} pfd__table_t;

/* Writes seq into msg[0..7], little-endian. */
void pfd__seq_put(unsigned char msg[PFD__MSG], unsigned long long seq);

/* Reads it back. */
unsigned long long pfd__seq_get(const unsigned char msg[PFD__MSG]);

/* Queues an accepted connection (at the front: one given back by a worker that went
 * down).  Returns 0, or -1 when the queue is full. */
int pfd__table_push(pfd__table_t *t, int conn, int front);

/* A worker went down or was removed: its pending connections go back to the front of the
 * queue, oldest first.  Its channel stays open: that is the platform's to close. */
void pfd__table_worker_down(pfd__table_t *t, pfd__worker_t *w);

/* Hands the connections waiting in the queue to workers while some can take one. */
void pfd__table_flush(pfd__table_t *t);

/* Counts n bytes of acknowledgements read from worker w (the connections they name are
 * closed here).  Returns 0, or -1 when they name a connection the worker does not hold:
 * a broken worker, which the caller takes down. */
int pfd__table_acks(pfd__table_t *t, pfd__worker_t *w, const unsigned char *buf, size_t n);

/* A slot for a new worker with channel `sock` that may hold `room` hand-offs (0: the
 * table's max_inflight).  Returns the slot, -EMFILE (too many workers) or -ENOMEM. */
int pfd__table_add(pfd__table_t *t, int sock, unsigned room);

/* The live worker in `slot`, or NULL. */
pfd__worker_t *pfd__table_live(pfd__table_t *t, int slot);

/* pfd_dispatch_stats's answer. */
int pfd__table_stats(const pfd__table_t *t, int slot, unsigned long long out[4]);

/* Closes every connection the table holds and frees it (not the workers' channels). */
void pfd__table_free(pfd__table_t *t);

#endif /* PFD_HANDOFF_H */
