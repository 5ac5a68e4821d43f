/* The single-producer single-consumer byte ring over shared memory (csrc/common/ring.c):
 * variable-length records, each one contiguous, set up in memory the caller owns. */

enum {
  PFD_RING_MIN_CAPACITY = 4096,   /* bytes of record space, a power of two */
  PFD_RING_HEADER_SIZE = 192,     /* three 64-byte lines before the record space */
  PFD_RING_RECORD_HEADER = 8,     /* a record's u32 length + u32 flags */
  PFD_RING_ALIGN = 8              /* records start at multiples of this */
};

/* One side's private view of a ring; never placed in the shared memory itself.  The
 * producer uses tail/head_seen/reserved, the consumer head/read/tail_seen/peeked. */
typedef struct pfd_ring_s {
  unsigned char *shared;          /* the shared header */
  unsigned char *data;            /* the record space: capacity bytes after the header */
  unsigned long long capacity;
  unsigned long long tail;        /* producer: where the next record goes (staged) */
  unsigned long long head_seen;   /* producer: the consumer's head when last read */
  unsigned long long reserved;    /* producer: bytes held by the open reservation, or 0 */
  unsigned long long head;        /* consumer: the oldest record not released */
  unsigned long long read;        /* consumer: the next record to peek */
  unsigned long long tail_seen;   /* consumer: the producer's tail when last read */
  unsigned long long peeked;      /* consumer: records peeked and not released */
  unsigned long long spin_us;     /* this side's spin before it sleeps (pfd_ring_wait) */
  unsigned long long spin_off;    /* waits left that sleep at once (the CPUs were busy) */
} pfd_ring_t;

/* Bytes of memory a ring of `capacity` needs (header included), or 0 when `capacity` is
 * not a power of two of at least PFD_RING_MIN_CAPACITY. */
size_t pfd_ring_size(size_t capacity);

/* Lays out an empty ring of `capacity` in `mem` (`size` bytes, 8-byte aligned, at least
 * pfd_ring_size(capacity)).  Returns 0, or -EINVAL. */
int pfd_ring_init(void *mem, size_t size, size_t capacity);

/* Fills `ring` to use the ring laid out in `mem` (either side, from any process mapping the
 * same memory).  Returns 0, -EBADMSG (not a ring, or a corrupted header), -EPROTO (another
 * layout version) or -EINVAL (`size` smaller than the ring). */
int pfd_ring_attach(pfd_ring_t *ring, void *mem, size_t size);

/* The largest record payload the ring takes: half its capacity less a record header, so
 * that a record (and the 8 bytes a reservation keeps free after it) always fits once the
 * ring drains, wherever the wrap falls. */
size_t pfd_ring_max_record(const pfd_ring_t *ring);

/* Producer.  Opens a reservation of `size` payload bytes and points *out at them, writable
 * until stage/commit.  Never waits.  Returns 0, -EAGAIN (not enough room now), -EMSGSIZE
 * (larger than pfd_ring_max_record), or -EBUSY (a reservation is open already). */
int pfd_ring_reserve(pfd_ring_t *ring, size_t size, unsigned char **out);

/* Producer.  Closes the reservation as a record of `size` bytes (at most what was reserved)
 * without showing it to the consumer yet: several staged records go out with one publish.
 * Returns 0 or -EINVAL (no reservation, or `size` larger than it). */
int pfd_ring_stage(pfd_ring_t *ring, size_t size);

/* Producer.  The whole send of a small record: `head` then `body` copied into a new record,
 * published, and the consumer woken if it sleeps.  Never waits.  Returns 0, -EAGAIN (no
 * room now), -EMSGSIZE or -EBUSY, as pfd_ring_reserve. */
int pfd_ring_write(pfd_ring_t *ring, const void *head, size_t head_size, const void *body,
                   size_t body_size);

/* Producer.  A batch of records: record i is the next lengths[i] bytes of `data` (they lie
 * back to back).  Writes as many as fit now, in order, then publishes them and wakes the
 * consumer once.  Never waits.  Returns how many were written (0: not even the first fits
 * now), or for the first record -EMSGSIZE or -EBUSY as pfd_ring_reserve. */
long long pfd_ring_write_many(pfd_ring_t *ring, const void *data,
                              const unsigned long long *lengths, size_t n);

/* Producer.  Stages an empty record even when the ring is full: every reservation leaves
 * room for one after its record.  So it succeeds once after each reserved record; a second
 * one with no record between may find no room.  Returns 0, -EAGAIN (no room) or -EBUSY (a
 * reservation is open). */
int pfd_ring_stage_empty(pfd_ring_t *ring);

/* Producer.  Shows every staged record to the consumer. */
void pfd_ring_publish(pfd_ring_t *ring);

/* Producer.  pfd_ring_stage, then pfd_ring_publish. */
int pfd_ring_commit(pfd_ring_t *ring, size_t size);

/* Producer.  Drops the open reservation (nothing is written). */
void pfd_ring_abort(pfd_ring_t *ring);

/* Consumer.  Points *out at the next record not yet peeked and returns its length; the
 * bytes stay valid until that record is released.  Never waits.  Returns the length,
 * -EAGAIN (nothing new), or -EBADMSG (the shared memory does not hold a valid record:
 * nothing is read outside the ring). */
long long pfd_ring_peek(pfd_ring_t *ring, const unsigned char **out);

/* Consumer.  Peeks up to `max` records at once: their offsets in the record space and
 * their lengths go to `offsets` and `lengths`.  Returns how many (0 when there is none),
 * or -EBADMSG as pfd_ring_peek does (the records peeked before the bad one stay peeked). */
long long pfd_ring_peek_many(pfd_ring_t *ring, unsigned long long *offsets,
                             unsigned long long *lengths, unsigned long long max);

/* Consumer.  Gives the space of the `count` oldest peeked records back to the producer.
 * Returns 0, -EINVAL (fewer than `count` are peeked) or -EBADMSG. */
int pfd_ring_release(pfd_ring_t *ring, unsigned long long count);

/* Consumer.  The whole receive of a small record: the next one copied to `out` (`size`
 * bytes of room), released, and the producer woken if it waits for room.  Never waits.
 * Returns the record's length, -EAGAIN (nothing new), -ENOSPC (it is longer than `size`:
 * nothing is taken, peek it), -EBUSY (records are peeked and not released: they go first)
 * or -EBADMSG as pfd_ring_peek. */
long long pfd_ring_read(pfd_ring_t *ring, void *out, size_t size);
/* Consumer.  pfd_ring_read for a batch: up to `max` records copied back to back to `out`
 * (`size` bytes of room), their lengths to `lengths`, all released at once.  It stops
 * after an empty record (what follows it is not to be read before what the producer sent
 * elsewhere meanwhile) and before one that does not fit.  Returns how many, or for the
 * first record what pfd_ring_read returns. */
long long pfd_ring_read_many(pfd_ring_t *ring, void *out, size_t size,
                             unsigned long long *lengths, size_t max);
/* What pfd_ring_wait waits for, and what pfd_ring_notify announces. */
enum {
  PFD_RING_WAIT_DATA = 1,   /* the consumer: a record to peek */
  PFD_RING_WAIT_SPACE = 2,  /* the producer: room for a record of `size` bytes */
  PFD_RING_WAIT_STALL = 4   /* with SPACE: give up with -EDEADLK when the consumer sleeps
                               for data having taken every record (it holds the space) */
};

/* Waits, spinning briefly and then asleep (GIL released by cffi), until what `what` names
 * is there, `timeout_ms` passes (< 0: no limit), or `peer_fd` (a channel socket, or -1)
 * shows that the other side hung up (looked at before each sleep, and every 100 ms).  Returns 1
 * (ready), 0 (timed out), -EPIPE (the peer is gone), -EINTR (a signal: the caller runs its
 * handlers and may call again), -EMSGSIZE (SPACE for a record that can never fit),
 * -EDEADLK (SPACE|STALL: the consumer holds every record and sleeps) or -errno. */
int pfd_ring_wait(pfd_ring_t *ring, int what, size_t size, int timeout_ms, int peer_fd);

/* After pfd_ring_publish (DATA) or pfd_ring_release (SPACE): wakes the other side if it is
 * asleep waiting for that; costs no system call otherwise. */
void pfd_ring_notify(pfd_ring_t *ring, int what);
