/* The cluster's connection dispatcher (csrc/unix/dispatch.c): a thread of its own, outside
 * the GIL, accepts on a listening socket and hands each connection to a worker over that
 * worker's private AF_UNIX stream socket.  It keeps its copy of a connection until the
 * worker acknowledges it, so a connection given to a worker that dies first goes to
 * another worker: none is lost.
 *
 * On a worker's socket each hand-off is 8 bytes, a little-endian sequence number, with the
 * connection attached; the worker answers with the same 8 bytes once it has the connection
 * (pfd_dispatch_take / pfd_dispatch_ack are that side). */

typedef struct pfd_dispatch_s pfd_dispatch_t;

enum {
  PFD_DISPATCH_MAX_WORKERS = 4096,
  PFD_DISPATCH_DEFAULT_INFLIGHT = 64, /* hand-offs not yet acknowledged, per worker */
  PFD_DISPATCH_ROUND_ROBIN = 0,       /* each connection to the next worker in turn */
  PFD_DISPATCH_LEAST_CONN = 1         /* to the worker with the fewest open connections */
};

/* A dispatcher for `listen_fd` (made non-blocking here; the caller keeps owning it).
 * `max_inflight` (0: the default) bounds each worker's unacknowledged connections: a
 * stuck worker stops receiving work.  Returns 0 or -errno (-EINVAL, -ENOMEM). */
int pfd_dispatch_new(pfd_dispatch_t **out, int listen_fd, unsigned max_inflight);

/* Starts the thread.  Returns 0, -EBUSY (started already) or -errno (pthread_create). */
int pfd_dispatch_start(pfd_dispatch_t *d);

/* Adds a worker: `sock` is the dispatcher's end of its socketpair, owned by the dispatcher
 * from now on.  Returns the worker's slot (>= 0), or -EMFILE (too many workers), -ENOMEM. */
int pfd_dispatch_add(pfd_dispatch_t *d, int sock);

/* Sets how a worker is chosen: PFD_DISPATCH_ROUND_ROBIN (the default) or
 * PFD_DISPATCH_LEAST_CONN.  Returns 0 or -EINVAL. */
int pfd_dispatch_balance(pfd_dispatch_t *d, int mode);

/* Where the worker in `slot` reports how many connections it has open (a counter it
 * updates in memory shared with the dispatcher, e.g. a cluster's worker board; NULL: none).
 * Least-connections ranks a worker by that count plus its hand-offs not yet acknowledged.
 * The memory must stay mapped until the worker is removed or the dispatcher freed.
 * Returns 0 or -ENOENT. */
int pfd_dispatch_load(pfd_dispatch_t *d, int slot, const unsigned long long *open);

/* Stops handing connections to a worker; those it has not acknowledged go to others, and
 * its socket is closed.  Returns 0 or -ENOENT (no such live worker). */
int pfd_dispatch_remove(pfd_dispatch_t *d, int slot);

/* Counters of a worker slot: out[0] connections handed, out[1] acknowledged, out[2] in
 * flight, out[3] 1 while the worker is live.  And for slot -1: out[0] accepted, out[1]
 * waiting for a worker, out[2] re-dispatched after a worker died, out[3] accept errors.
 * Returns 0 or -ENOENT. */
int pfd_dispatch_stats(pfd_dispatch_t *d, int slot, unsigned long long out[4]);

/* Stops the thread and frees everything: connections not acknowledged are closed, as are
 * the workers' sockets (not the listening socket). */
void pfd_dispatch_free(pfd_dispatch_t *d);

/* The worker's side: receives the next connection on `sock` (waiting unless `flags` lacks
 * PFD_FD_BLOCK) and its sequence number.  Returns the connection's descriptor
 * (close-on-exec), -EAGAIN, -EPIPE (the dispatcher is gone), -EBADMSG (not a hand-off) or
 * -errno. */
int pfd_dispatch_take(int sock, unsigned long long *seq, int flags);

/* The worker's side: acknowledges the `n` hand-offs `seqs` (one send for up to 64).
 * Returns 0 or -errno (-EPIPE). */
int pfd_dispatch_ack(int sock, const unsigned long long *seqs, unsigned n);
