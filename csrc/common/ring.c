/*
 * ring.c - a single-producer single-consumer byte ring in shared memory.
 *
 * The invariant.  Two free-running 64-bit byte counters, `tail` (written only by the
 * producer) and `head` (written only by the consumer), with head <= tail <= head +
 * capacity.  The bytes in [head, tail) (positions masked by capacity - 1) hold whole,
 * published records, oldest first; the rest is the producer's to write.  Neither counter
 * ever wraps in practice (2^64 bytes), so `tail - head` is always the occupancy.
 *
 * Records.  Each starts at a multiple of 8 with an 8-byte header, u32 length + u32 flags,
 * and takes align8(8 + length) bytes.  A record never straddles the end of the space: when
 * the next one does not fit before the end, the producer first writes a padding record
 * (flag PAD) over the rest, and the record starts at position 0.  So every payload is one
 * contiguous run of bytes, and a reader can hand out a view of it as it is.  The largest
 * record is half the capacity less its header, so that one always fits once the ring is
 * empty, wherever the end falls.  A reservation also leaves 8 bytes free after its record:
 * room for one empty record (which never needs padding), so that a producer can always say
 * "what follows goes another way" even into a full ring (pfd_ring_stage_empty).
 *
 * Who writes what.  The shared header is three 64-byte lines: line 0 is written once, by
 * pfd_ring_init (magic, version, capacity, the key that names its wake-ups on Windows);
 * line 1 belongs to the producer (tail, and the
 * words the wait layer uses to wake the consumer); line 2 to the consumer (head, and the
 * words that wake the producer).  Each side keeps its own copy of the other's counter and
 * reads the shared one only when its copy says "full" or "empty", so the two lines do not
 * bounce between caches on every record.
 *
 * Ordering.  Publishing is a release store of tail after the record bytes are written;
 * the consumer's acquire load of tail makes them visible (pair A).  Releasing is a release
 * store of head after the consumer is done reading; the producer's acquire load of head
 * orders its later writes after those reads (pair B).  A consumer about to sleep stores how
 * far it read, with release, before its sleeping word; a producer that finds no room
 * reads it with acquire (pair C) to tell "the consumer holds every record" from "it is
 * busy".  Nothing else is shared.
 *
 * Trust.  The other side may be buggy, dead half-way, or hostile: every length read from
 * the shared memory is checked against the capacity and against [head, tail) before it is
 * used, so a corrupted ring gives -EBADMSG, never a read or write outside it.
 *
 * Sleeping.  A side that finds nothing to do spins (up to 50 us), then sleeps on a 32-bit
 * sequence word that the other side bumps to wake it.  The handshake cannot lose a wake-up:
 * the sleeper announces itself (its `sleeping` word) and only then re-checks the counter it
 * waits for; the other side publishes its counter and only then looks for a sleeper, with a
 * full fence between the store and the load on both sides (a Dekker pair), so at least one
 * of them sees the other.  The sleeper also reads the sequence word before re-checking, so a
 * bump that lands in between makes its futex wait return at once.  Waking costs a system
 * call only when the other side is marked asleep.  A consumer going to sleep also wakes a
 * producer asleep for room, so that one waiting with STALL can see at once that the
 * consumer holds all the space and will not give it back until something new arrives.
 *
 * What it does not do: allocate or map memory (shm.c), the sleep itself (wait_linux.c,
 * wait_darwin.c), or know about messages (the Python channel).
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "atomic.h"
#include "pyforkd.h"
#include "wait.h"

#define PFD__RING_MAGIC 0x47525046u /* the bytes 'P' 'F' 'R' 'G' */
#define PFD__RING_VERSION 1u
#define PFD__RING_PAD 1u /* record flag: padding up to the end of the space */

/* Offsets in the shared header. */
#define PFD__OFF_MAGIC 0
#define PFD__OFF_VERSION 4
#define PFD__OFF_CAPACITY 8
#define PFD__OFF_WAKE_KEY 16  /* names the ring's wake-ups where they need a name (Windows) */
#define PFD__OFF_TAIL 64       /* line 1: the producer's */
#define PFD__OFF_DATA_SEQ 72   /*   bumped to wake a consumer waiting for data */
#define PFD__OFF_PROD_SLEEP 76 /*   1 while the producer sleeps for space */
#define PFD__OFF_HEAD 128      /* line 2: the consumer's */
#define PFD__OFF_SPACE_SEQ 136 /*   bumped to wake a producer waiting for space */
#define PFD__OFF_CONS_SLEEP 140 /*  1 while the consumer sleeps for data */
#define PFD__OFF_CONS_READ 144 /*   where the consumer had read up to when it last slept */
#define PFD__SPINS 200         /* polls between yields: about a microsecond */
#define PFD__SPIN_US 50        /* how long a waiter spins before it sleeps, at most */
#define PFD__SLOW_YIELD_US 30  /* a yield this long gave the CPU away: every CPU is busy */
#define PFD__SPIN_OFF 64       /* and the waits after it sleep at once, this many of them */
#define PFD__PEER_CHECK_MS 100 /* how often a sleeper looks at the peer's descriptor */

static pfd_atomic_u64_t *pfd__tail(const pfd_ring_t *ring) {
  return (pfd_atomic_u64_t *)(void *)(ring->shared + PFD__OFF_TAIL);
}

static pfd_atomic_u64_t *pfd__head(const pfd_ring_t *ring) {
  return (pfd_atomic_u64_t *)(void *)(ring->shared + PFD__OFF_HEAD);
}

static pfd_atomic_u64_t *pfd__cons_read(const pfd_ring_t *ring) {
  return (pfd_atomic_u64_t *)(void *)(ring->shared + PFD__OFF_CONS_READ);
}

static pfd_atomic_u32_t *pfd__word(const pfd_ring_t *ring, int offset) {
  return (pfd_atomic_u32_t *)(void *)(ring->shared + offset);
}

/* The name of the sequence word a `what` waiter sleeps on, the same in every process
 * (wait.h): the ring's key, written once by pfd_ring_init, plus the word's offset. */
static unsigned long long pfd__key(const pfd_ring_t *ring, int what) {
  unsigned long long key;
  memcpy(&key, ring->shared + PFD__OFF_WAKE_KEY, 8);
  return key + (what == PFD_RING_WAIT_DATA ? PFD__OFF_DATA_SEQ : PFD__OFF_SPACE_SEQ);
}

static unsigned long long pfd__align(unsigned long long n) {
  return (n + PFD_RING_ALIGN - 1) & ~(unsigned long long)(PFD_RING_ALIGN - 1);
}

static int pfd__capacity_ok(unsigned long long capacity) {
  return capacity >= PFD_RING_MIN_CAPACITY && (capacity & (capacity - 1)) == 0 &&
         capacity <= ((unsigned long long)SIZE_MAX - PFD_RING_HEADER_SIZE);
}

/* The record header at masked position `pos` (which leaves room for it: positions are
 * multiples of 8 and the capacity is too). */
static void pfd__get_record(const pfd_ring_t *ring, unsigned long long pos, uint32_t *length,
                            uint32_t *flags) {
  memcpy(length, ring->data + pos, 4);
  memcpy(flags, ring->data + pos + 4, 4);
}

static void pfd__put_record(pfd_ring_t *ring, unsigned long long pos, uint32_t length,
                            uint32_t flags) {
  memcpy(ring->data + pos, &length, 4);
  memcpy(ring->data + pos + 4, &flags, 4);
}

/* Bytes a record of `size` needs at the producer's tail now: padding to the end included,
 * and the 8 bytes every record leaves free after it for pfd_ring_stage_empty. */
static unsigned long long pfd__need(const pfd_ring_t *ring, size_t size) {
  unsigned long long want = pfd__align(PFD_RING_RECORD_HEADER + (unsigned long long)size);
  unsigned long long to_end = ring->capacity - (ring->tail & (ring->capacity - 1));
  return (want <= to_end ? want : to_end + want) + PFD_RING_RECORD_HEADER;
}

size_t pfd_ring_size(size_t capacity) {
  if (!pfd__capacity_ok(capacity)) return 0;
  return PFD_RING_HEADER_SIZE + capacity;
}

int pfd_ring_init(void *mem, size_t size, size_t capacity) {
  unsigned char *base = mem;
  uint32_t magic = PFD__RING_MAGIC, version = PFD__RING_VERSION;
  unsigned long long cap = capacity, key = pfd__wait_key_new();
  if (mem == NULL || ((uintptr_t)mem & 7) != 0) return -EINVAL;
  if (pfd_ring_size(capacity) == 0 || size < pfd_ring_size(capacity)) return -EINVAL;
  memset(base, 0, PFD_RING_HEADER_SIZE);
  memcpy(base + PFD__OFF_VERSION, &version, 4);
  memcpy(base + PFD__OFF_CAPACITY, &cap, 8);
  memcpy(base + PFD__OFF_WAKE_KEY, &key, 8);
  /* The magic goes last: a side that attaches while this runs sees "not a ring yet".
   * (The memory reaches the other process through a channel message sent after this
   * returns, which orders it; no atomic is needed here.) */
  memcpy(base + PFD__OFF_MAGIC, &magic, 4);
  return 0;
}

int pfd_ring_attach(pfd_ring_t *ring, void *mem, size_t size) {
  unsigned char *base = mem;
  uint32_t magic, version;
  unsigned long long cap;
  if (mem == NULL || ((uintptr_t)mem & 7) != 0 || size < PFD_RING_HEADER_SIZE) return -EINVAL;
  memcpy(&magic, base + PFD__OFF_MAGIC, 4);
  memcpy(&version, base + PFD__OFF_VERSION, 4);
  memcpy(&cap, base + PFD__OFF_CAPACITY, 8);
  if (magic != PFD__RING_MAGIC) return -EBADMSG;
  if (version != PFD__RING_VERSION) return -EPROTO;
  if (!pfd__capacity_ok(cap)) return -EBADMSG;
  if (size < PFD_RING_HEADER_SIZE + cap) return -EINVAL;
  memset(ring, 0, sizeof(*ring));
  ring->shared = base;
  ring->data = base + PFD_RING_HEADER_SIZE;
  ring->capacity = cap;
  /* Both sides start from the shared counters (acquire: pairs A and B, for a side that
   * attaches to a ring already in use). */
  ring->tail = ring->tail_seen = pfd_atomic_load_acquire_u64(pfd__tail(ring));
  ring->head = ring->read = ring->head_seen = pfd_atomic_load_acquire_u64(pfd__head(ring));
  ring->spin_us = PFD__SPIN_US;
  ring->spin_off = 0;
  return 0;
}

size_t pfd_ring_max_record(const pfd_ring_t *ring) {
  return (size_t)(ring->capacity / 2 - PFD_RING_RECORD_HEADER);
}

int pfd_ring_reserve(pfd_ring_t *ring, size_t size, unsigned char **out) {
  unsigned long long want, pos, to_end, need;
  if (ring->reserved != 0) return -EBUSY;
  if (size > pfd_ring_max_record(ring)) return -EMSGSIZE;
  want = pfd__align(PFD_RING_RECORD_HEADER + (unsigned long long)size);
  pos = ring->tail & (ring->capacity - 1);
  to_end = ring->capacity - pos;
  need = pfd__need(ring, size);
  if (ring->capacity - (ring->tail - ring->head_seen) < need) {
    /* Acquire, pair B: the consumer's reads of the space it released happened before. */
    ring->head_seen = pfd_atomic_load_acquire_u64(pfd__head(ring));
    if (ring->capacity - (ring->tail - ring->head_seen) < need) return -EAGAIN;
  }
  if (want > to_end) {
    pfd__put_record(ring, pos, (uint32_t)(to_end - PFD_RING_RECORD_HEADER), PFD__RING_PAD);
    ring->tail += to_end; /* staged with the record that follows */
    pos = 0;
  }
  ring->reserved = want;
  *out = ring->data + pos + PFD_RING_RECORD_HEADER;
  return 0;
}

int pfd_ring_stage(pfd_ring_t *ring, size_t size) {
  unsigned long long used = pfd__align(PFD_RING_RECORD_HEADER + (unsigned long long)size);
  if (ring->reserved == 0 || used > ring->reserved) return -EINVAL;
  pfd__put_record(ring, ring->tail & (ring->capacity - 1), (uint32_t)size, 0);
  ring->tail += used;
  ring->reserved = 0;
  return 0;
}

int pfd_ring_write(pfd_ring_t *ring, const void *head, size_t head_size, const void *body,
                   size_t body_size) {
  unsigned char *out;
  int r;
  if (body_size > pfd_ring_max_record(ring) || head_size > pfd_ring_max_record(ring) - body_size) {
    return -EMSGSIZE;
  }
  r = pfd_ring_reserve(ring, head_size + body_size, &out);
  if (r < 0) return r;
  if (head_size) memcpy(out, head, head_size);
  if (body_size) memcpy(out + head_size, body, body_size);
  r = pfd_ring_commit(ring, head_size + body_size);
  if (r == 0) pfd_ring_notify(ring, PFD_RING_WAIT_DATA);
  return r;
}

long long pfd_ring_write_many(pfd_ring_t *ring, const void *data,
                             const unsigned long long *lengths, size_t n) {
  const unsigned char *from = data;
  size_t i;
  for (i = 0; i < n; i++) {
    unsigned char *out;
    int r;
    if (lengths[i] > pfd_ring_max_record(ring)) {
      if (i == 0) return -EMSGSIZE;
      break; /* (the ones before go; the caller finds this one refused next) */
    }
    r = pfd_ring_reserve(ring, (size_t)lengths[i], &out);
    if (r == -EAGAIN) break;
    if (r < 0) {
      if (i == 0) return r;
      break;
    }
    if (lengths[i]) memcpy(out, from, (size_t)lengths[i]);
    (void)pfd_ring_stage(ring, (size_t)lengths[i]); /* (it was just reserved: cannot fail) */
    from += lengths[i];
  }
  if (i > 0) { /* one publish and one wake-up for the batch */
    pfd_ring_publish(ring);
    pfd_ring_notify(ring, PFD_RING_WAIT_DATA);
  }
  return (long long)i;
}

int pfd_ring_stage_empty(pfd_ring_t *ring) {
  /* Every reservation left 8 bytes free after its record (an empty record never needs
   * padding: positions and the capacity are multiples of 8), unless one of these took them. */
  if (ring->reserved != 0) return -EBUSY;
  if (ring->capacity - (ring->tail - ring->head_seen) < PFD_RING_RECORD_HEADER) {
    /* Acquire, pair B (as in reserve). */
    ring->head_seen = pfd_atomic_load_acquire_u64(pfd__head(ring));
    if (ring->capacity - (ring->tail - ring->head_seen) < PFD_RING_RECORD_HEADER) return -EAGAIN;
  }
  pfd__put_record(ring, ring->tail & (ring->capacity - 1), 0, 0);
  ring->tail += PFD_RING_RECORD_HEADER;
  return 0;
}

void pfd_ring_publish(pfd_ring_t *ring) {
  /* Release, pair A: the records' bytes are written before the tail that shows them. */
  pfd_atomic_store_release_u64(pfd__tail(ring), ring->tail);
}

int pfd_ring_commit(pfd_ring_t *ring, size_t size) {
  int r = pfd_ring_stage(ring, size);
  if (r == 0) pfd_ring_publish(ring);
  return r;
}

void pfd_ring_abort(pfd_ring_t *ring) {
  ring->reserved = 0; /* a padding record it wrote stays staged: it is valid on its own */
}

long long pfd_ring_peek(pfd_ring_t *ring, const unsigned char **out) {
  for (;;) {
    unsigned long long avail, pos, to_end, used;
    uint32_t length, flags;
    if (ring->read == ring->tail_seen) {
      /* Acquire, pair A: the bytes of every record up to this tail are visible. */
      ring->tail_seen = pfd_atomic_load_acquire_u64(pfd__tail(ring));
      if (ring->read == ring->tail_seen) return -EAGAIN;
    }
    avail = ring->tail_seen - ring->read;
    if (avail > ring->capacity || ring->tail_seen - ring->head > ring->capacity ||
        avail % PFD_RING_ALIGN != 0) {
      return -EBADMSG;
    }
    pos = ring->read & (ring->capacity - 1);
    to_end = ring->capacity - pos;
    pfd__get_record(ring, pos, &length, &flags);
    if (flags & PFD__RING_PAD) {
      if (flags != PFD__RING_PAD || length != to_end - PFD_RING_RECORD_HEADER || to_end > avail) {
        return -EBADMSG;
      }
      ring->read += to_end;
      continue;
    }
    used = pfd__align(PFD_RING_RECORD_HEADER + (unsigned long long)length);
    if (flags != 0 || length > pfd_ring_max_record(ring) || used > to_end || used > avail) {
      return -EBADMSG;
    }
    *out = ring->data + pos + PFD_RING_RECORD_HEADER;
    ring->read += used;
    ring->peeked += 1;
    return (long long)length;
  }
}

long long pfd_ring_peek_many(pfd_ring_t *ring, unsigned long long *offsets,
                             unsigned long long *lengths, unsigned long long max) {
  unsigned long long n = 0;
  while (n < max) {
    const unsigned char *at;
    long long r = pfd_ring_peek(ring, &at);
    if (r == -EAGAIN) break;
    if (r < 0) return r;
    offsets[n] = (unsigned long long)(at - ring->data);
    lengths[n] = (unsigned long long)r;
    n++;
  }
  return (long long)n;
}

long long pfd_ring_read(pfd_ring_t *ring, void *out, size_t size) {
  const unsigned char *record;
  unsigned long long read = ring->read;
  long long length;
  int r;
  if (ring->peeked != 0) return -EBUSY;
  length = pfd_ring_peek(ring, &record);
  if (length < 0) return length;
  if ((unsigned long long)length > size) { /* (the caller peeks it instead) */
    ring->read = read;
    ring->peeked = 0;
    return -ENOSPC;
  }
  memcpy(out, record, (size_t)length);
  r = pfd_ring_release(ring, 1);
  if (r < 0) return r;
  pfd_ring_notify(ring, PFD_RING_WAIT_SPACE);
  return length;
}

long long pfd_ring_read_many(pfd_ring_t *ring, void *out, size_t size,
                            unsigned long long *lengths, size_t max) {
  unsigned char *to = out;
  size_t n = 0, used = 0;
  int r;
  if (ring->peeked != 0) return -EBUSY;
  while (n < max) {
    const unsigned char *record;
    unsigned long long read = ring->read, peeked = ring->peeked;
    long long length = pfd_ring_peek(ring, &record);
    if (length == -EAGAIN) break;
    if (length < 0) {
      if (n == 0) return length;
      ring->read = read; /* (the ones before go; the caller finds this one bad next) */
      ring->peeked = peeked;
      break;
    }
    if ((unsigned long long)length > size - used) { /* left for the next call, or a peek */
      ring->read = read;
      ring->peeked = peeked;
      if (n == 0) return -ENOSPC;
      break;
    }
    memcpy(to + used, record, (size_t)length);
    used += (size_t)length;
    lengths[n++] = (unsigned long long)length;
    if (length == 0) break; /* the producer went elsewhere: what follows comes after that */
  }
  if (n == 0) return -EAGAIN;
  r = pfd_ring_release(ring, n);
  if (r < 0) return r;
  pfd_ring_notify(ring, PFD_RING_WAIT_SPACE);
  return (long long)n;
}

int pfd_ring_release(pfd_ring_t *ring, unsigned long long count) {
  if (count > ring->peeked) return -EINVAL;
  while (count > 0) {
    unsigned long long pos = ring->head & (ring->capacity - 1);
    uint32_t length, flags;
    /* Peek checked these records, but the shared bytes could have changed since: check
     * again that each step stays within what was peeked. */
    if (ring->head >= ring->read) return -EBADMSG;
    pfd__get_record(ring, pos, &length, &flags);
    if (flags & PFD__RING_PAD) {
      ring->head += ring->capacity - pos;
      continue;
    }
    ring->head += pfd__align(PFD_RING_RECORD_HEADER + (unsigned long long)length);
    if (ring->head > ring->read) return -EBADMSG;
    ring->peeked -= 1;
    count -= 1;
  }
  /* Padding right after the last released record is released with it. */
  while (ring->head < ring->read) {
    unsigned long long pos = ring->head & (ring->capacity - 1);
    uint32_t length, flags;
    pfd__get_record(ring, pos, &length, &flags);
    if (!(flags & PFD__RING_PAD)) break;
    ring->head += ring->capacity - pos;
  }
  /* Release, pair B: our reads of the released records are done before the producer may
   * write over them. */
  pfd_atomic_store_release_u64(pfd__head(ring), ring->head);
  return 0;
}

/* ---- sleeping and waking ------------------------------------------------------------------ */

/* True when the consumer sleeps for data having taken every published record while the
 * producer finds no room: the consumer holds all the space, and only the producer can end
 * the wait (by going another way).  A consumer that wakes changes `cons_read` or its
 * sleeping word first, so a stale "stalled" is never seen for long. */
static int pfd__stalled(pfd_ring_t *ring) {
  unsigned long long published = pfd_atomic_load_acquire_u64(pfd__tail(ring));
  if (pfd_atomic_load_u32(pfd__word(ring, PFD__OFF_CONS_SLEEP)) == 0) return 0;
  /* Acquire, pair C (with the consumer's store before it sleeps). */
  return pfd_atomic_load_acquire_u64(pfd__cons_read(ring)) == published;
}

static int pfd__ready(pfd_ring_t *ring, int what, size_t size) {
  if (what == PFD_RING_WAIT_DATA) {
    if (ring->read != ring->tail_seen) return 1;
    /* Acquire, pair A (as in peek). */
    return pfd_atomic_load_acquire_u64(pfd__tail(ring)) != ring->read;
  }
  /* Acquire, pair B (as in reserve). */
  ring->head_seen = pfd_atomic_load_acquire_u64(pfd__head(ring));
  return ring->capacity - (ring->tail - ring->head_seen) >= pfd__need(ring, size);
}

int pfd_ring_wait(pfd_ring_t *ring, int what, size_t size, int timeout_ms, int peer_fd) {
  pfd_atomic_u32_t *seq, *sleeping;
  long long start, waited_us, budget;
  int i, stall = what & PFD_RING_WAIT_STALL;
  what &= ~PFD_RING_WAIT_STALL;
  if (what != PFD_RING_WAIT_DATA && what != PFD_RING_WAIT_SPACE) return -EINVAL;
  if (stall && what != PFD_RING_WAIT_SPACE) return -EINVAL;
  if (what == PFD_RING_WAIT_SPACE && size > pfd_ring_max_record(ring)) return -EMSGSIZE;
  /* Spin: briefly on the cache line, then yielding the CPU between looks, for up to this
   * side's spin_us (never past the timeout): an answer that comes within that costs no
   * system call on either side.  Adaptive: a spin that paid off doubles the next one (up
   * to PFD__SPIN_US); a sleep that the answer ended soon (it came within twice the longest
   * spin) sets it to the longest, and a longer sleep halves it.  When every CPU is busy a
   * yield hands the CPU away for a whole time slice: a yield that took that long stops
   * the spinning for the next PFD__SPIN_OFF waits, which sleep at once and are woken by
   * the futex (the scheduler runs a woken task soon). */
  start = pfd__monotonic_us();
  budget = ring->spin_off ? 0 : (long long)ring->spin_us;
  if (ring->spin_off) ring->spin_off--;
  for (;;) {
    long long before;
    for (i = 0; i < PFD__SPINS; i++) {
      if (pfd__ready(ring, what, size)) {
        if (timeout_ms != 0) { /* (a poll with no wait says nothing of the spin) */
          unsigned long long more = ring->spin_us * 2 + 1;
          ring->spin_us = more > PFD__SPIN_US ? PFD__SPIN_US : more;
        }
        return 1;
      }
      pfd_cpu_relax();
    }
    if (timeout_ms == 0) break;
    before = pfd__monotonic_us();
    waited_us = before - start;
    if (waited_us >= budget || (timeout_ms > 0 && waited_us >= timeout_ms * 1000LL)) break;
    pfd__yield();
    if (pfd__monotonic_us() - before >= PFD__SLOW_YIELD_US) {
      ring->spin_off = PFD__SPIN_OFF;
      break;
    }
  }
  seq = pfd__word(ring, what == PFD_RING_WAIT_DATA ? PFD__OFF_DATA_SEQ : PFD__OFF_SPACE_SEQ);
  sleeping = pfd__word(ring, what == PFD_RING_WAIT_DATA ? PFD__OFF_CONS_SLEEP : PFD__OFF_PROD_SLEEP);
  for (;;) {
    unsigned expected = pfd_atomic_load_u32(seq);
    int slice = PFD__PEER_CHECK_MS, r, ready;
    long long waited;
    /* A consumer about to sleep says how far it read (before its sleeping word, so a
     * producer that sees the word sees this too; release, pair C). */
    if (what == PFD_RING_WAIT_DATA) pfd_atomic_store_release_u64(pfd__cons_read(ring), ring->read);
    pfd_atomic_store_u32(sleeping, 1u);
    pfd_atomic_fence(); /* Dekker, with the fence in pfd_ring_notify */
    ready = pfd__ready(ring, what, size);
    if (!ready && what == PFD_RING_WAIT_DATA) {
      /* A producer asleep for room may be waiting on us for good: let it look (STALL). */
      pfd_ring_notify(ring, PFD_RING_WAIT_SPACE);
    }
    if (!ready && stall && pfd__stalled(ring)) {
      pfd_atomic_store_u32(sleeping, 0u);
      return -EDEADLK;
    }
    /* Before each sleep: a peer that is gone will never wake us. */
    if (!ready && peer_fd >= 0 && pfd_fd_wait_hangup(peer_fd, 0) == 1) {
      pfd_atomic_store_u32(sleeping, 0u);
      return -EPIPE;
    }
    if (!ready) {
      waited = (pfd__monotonic_us() - start) / 1000;
      if (timeout_ms >= 0 && waited >= timeout_ms) {
        pfd_atomic_store_u32(sleeping, 0u);
        return 0;
      }
      if (timeout_ms >= 0 && timeout_ms - waited < slice) slice = (int)(timeout_ms - waited);
      r = pfd__wait_on_word(seq, expected, slice, pfd__key(ring, what));
      pfd_atomic_store_u32(sleeping, 0u);
      if (r == -EINTR) return -EINTR;
      if (r < 0 && r != -ETIMEDOUT) return r;
      ready = pfd__ready(ring, what, size);
    } else {
      pfd_atomic_store_u32(sleeping, 0u);
    }
    if (ready) {
      if (timeout_ms != 0) {
        waited_us = pfd__monotonic_us() - start;
        ring->spin_us = waited_us < 2 * PFD__SPIN_US ? PFD__SPIN_US : ring->spin_us / 2;
      }
      return 1;
    }
  }
}

void pfd_ring_notify(pfd_ring_t *ring, int what) {
  pfd_atomic_u32_t *seq, *sleeping;
  /* DATA: the producer, after publishing, wakes a consumer; SPACE: the consumer, after
   * releasing, wakes a producer. */
  seq = pfd__word(ring, what == PFD_RING_WAIT_DATA ? PFD__OFF_DATA_SEQ : PFD__OFF_SPACE_SEQ);
  sleeping = pfd__word(ring, what == PFD_RING_WAIT_DATA ? PFD__OFF_CONS_SLEEP : PFD__OFF_PROD_SLEEP);
  pfd_atomic_fence(); /* Dekker, with the fence in pfd_ring_wait */
  if (pfd_atomic_load_u32(sleeping) != 0) {
    (void)pfd_atomic_add_u32(seq, 1u);
    (void)pfd__wake_word(seq, pfd__key(ring, what));
  }
}
