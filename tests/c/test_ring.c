/* test_ring.c - the SPSC ring: layout checks, wrap-around at every small record size,
 * full/empty edges, batches, corrupted shared memory, and two-thread and two-process
 * stress with sequence numbers and checksums (PFD_RING_SOAK=<seconds> runs longer). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runner.h"

#define CAP 4096

/* Memory for a ring, 8-byte aligned. */
static unsigned long long ring_mem[(PFD_RING_HEADER_SIZE + CAP) / 8];

static void fresh(pfd_ring_t *producer, pfd_ring_t *consumer) {
  CHECK_EQ(pfd_ring_init(ring_mem, sizeof(ring_mem), CAP), 0);
  CHECK_EQ(pfd_ring_attach(producer, ring_mem, sizeof(ring_mem)), 0);
  CHECK_EQ(pfd_ring_attach(consumer, ring_mem, sizeof(ring_mem)), 0);
}

static int send_bytes(pfd_ring_t *ring, const void *bytes, size_t size) {
  unsigned char *out;
  int r = pfd_ring_reserve(ring, size, &out);
  if (r < 0) return r;
  memcpy(out, bytes, size);
  return pfd_ring_commit(ring, size);
}

TEST_IMPL(ring_layout_checks) {
  pfd_ring_t ring;
  unsigned char *raw = (unsigned char *)ring_mem;
  CHECK_EQ(pfd_ring_size(4096), PFD_RING_HEADER_SIZE + 4096);
  CHECK_EQ(pfd_ring_size(1000), 0);  /* not a power of two */
  CHECK_EQ(pfd_ring_size(2048), 0);  /* below the minimum */
  CHECK_EQ(pfd_ring_init(ring_mem, sizeof(ring_mem), 3000), -EINVAL);
  CHECK_EQ(pfd_ring_init(ring_mem, sizeof(ring_mem) - 8, CAP), -EINVAL);  /* too small */
  CHECK_EQ(pfd_ring_init(raw + 4, sizeof(ring_mem) - 8, 2048), -EINVAL);  /* misaligned */
  memset(ring_mem, 0xab, sizeof(ring_mem));
  CHECK_EQ(pfd_ring_attach(&ring, ring_mem, sizeof(ring_mem)), -EBADMSG);  /* garbage */
  CHECK_EQ(pfd_ring_init(ring_mem, sizeof(ring_mem), CAP), 0);
  CHECK_EQ(pfd_ring_attach(&ring, ring_mem, PFD_RING_HEADER_SIZE + 100), -EINVAL);
  raw[4] = 9;  /* another layout version */
  CHECK_EQ(pfd_ring_attach(&ring, ring_mem, sizeof(ring_mem)), -EPROTO);
  CHECK_EQ(pfd_ring_init(ring_mem, sizeof(ring_mem), CAP), 0);
  raw[8] = 0x01;  /* a capacity that is not a power of two */
  CHECK_EQ(pfd_ring_attach(&ring, ring_mem, sizeof(ring_mem)), -EBADMSG);
  CHECK_EQ(pfd_ring_init(ring_mem, sizeof(ring_mem), CAP), 0);
  CHECK_EQ(pfd_ring_attach(&ring, ring_mem, sizeof(ring_mem)), 0);
  CHECK_EQ(pfd_ring_max_record(&ring), CAP / 2 - 8);
  return 0;
}

TEST_IMPL(ring_wraps_at_every_small_size) {
  pfd_ring_t p, c;
  size_t size;
  /* Every payload size from 1 to three times the alignment, far past many wraps, with the
   * consumer one to three records behind so that the wrap falls everywhere. */
  for (size = 1; size <= 3 * PFD_RING_ALIGN; size++) {
    unsigned sent = 0, got = 0;
    fresh(&p, &c);
    while (got < 3000) {
      unsigned char msg[3 * PFD_RING_ALIGN];
      const unsigned char *view;
      long long n;
      memset(msg, (int)(sent & 0xff), size);
      if (sent - got < 1 + got % 3 && send_bytes(&p, msg, size) == 0) {
        sent++;
        continue;
      }
      n = pfd_ring_peek(&c, &view);
      CHECK_EQ(n, (long long)size);
      CHECK(view >= c.data && view + size <= c.data + CAP);  /* one contiguous run */
      CHECK(view[0] == (unsigned char)(got & 0xff) && view[size - 1] == view[0]);
      CHECK_EQ(pfd_ring_release(&c, 1), 0);
      got++;
    }
  }
  return 0;
}

TEST_IMPL(ring_full_and_empty_edges) {
  pfd_ring_t p, c;
  unsigned char *out, *out2;
  const unsigned char *view;
  unsigned count = 0;
  unsigned char eight[8] = {0};
  fresh(&p, &c);
  CHECK_EQ(pfd_ring_peek(&c, &view), -EAGAIN);  /* empty */
  CHECK_EQ(pfd_ring_release(&c, 1), -EINVAL);   /* nothing peeked */
  while (send_bytes(&p, eight, 8) == 0) count++;
  /* 8-byte header + 8 bytes each, and 8 bytes kept free after the last */
  CHECK_EQ(count, CAP / 16 - 1);
  CHECK_EQ(pfd_ring_reserve(&p, 1, &out), -EAGAIN);
  CHECK_EQ(pfd_ring_stage_empty(&p), 0);  /* the kept bytes: an empty record still fits */
  pfd_ring_publish(&p);
  CHECK_EQ(pfd_ring_peek(&c, &view), 8);
  CHECK_EQ(pfd_ring_peek(&c, &view), 8);
  CHECK_EQ(pfd_ring_release(&c, 2), 0);
  /* 8 bytes to the end: padding, then the record at 0, then 16 bytes are left */
  CHECK_EQ(send_bytes(&p, eight, 8), 0);
  CHECK_EQ(pfd_ring_reserve(&p, 1, &out), -EAGAIN);
  CHECK_EQ(pfd_ring_stage_empty(&p), 0);
  pfd_ring_publish(&p);
  for (count = 0; count < CAP / 16 - 3; count++) CHECK_EQ(pfd_ring_peek(&c, &view), 8);
  CHECK_EQ(pfd_ring_peek(&c, &view), 0);  /* the empty records, in their places */
  CHECK_EQ(pfd_ring_peek(&c, &view), 8);
  CHECK_EQ(pfd_ring_peek(&c, &view), 0);
  CHECK_EQ(pfd_ring_peek(&c, &view), -EAGAIN);
  CHECK_EQ(pfd_ring_release(&c, c.peeked), 0);
  /* Sizes: the largest record fits in an empty ring wherever its end falls; one more
   * byte never fits. */
  CHECK_EQ(pfd_ring_reserve(&p, pfd_ring_max_record(&p) + 1, &out), -EMSGSIZE);
  CHECK_EQ(pfd_ring_reserve(&p, pfd_ring_max_record(&p), &out), 0);
  CHECK_EQ(pfd_ring_reserve(&p, 1, &out2), -EBUSY);  /* one reservation at a time */
  CHECK_EQ(pfd_ring_stage(&p, pfd_ring_max_record(&p) + 8), -EINVAL);  /* cannot grow */
  CHECK_EQ(pfd_ring_commit(&p, 3), 0);  /* it may shrink */
  CHECK_EQ(pfd_ring_peek(&c, &view), 3);
  CHECK_EQ(pfd_ring_release(&c, 1), 0);
  /* A batch: staged records stay invisible until published. */
  CHECK_EQ(pfd_ring_reserve(&p, 4, &out), 0);
  memcpy(out, "abcd", 4);
  CHECK_EQ(pfd_ring_stage(&p, 4), 0);
  CHECK_EQ(pfd_ring_reserve(&p, 2, &out), 0);
  memcpy(out, "ef", 2);
  CHECK_EQ(pfd_ring_stage(&p, 2), 0);
  CHECK_EQ(pfd_ring_peek(&c, &view), -EAGAIN);
  pfd_ring_publish(&p);
  CHECK_EQ(pfd_ring_peek(&c, &view), 4);
  CHECK(memcmp(view, "abcd", 4) == 0);
  CHECK_EQ(pfd_ring_peek(&c, &view), 2);
  CHECK(memcmp(view, "ef", 2) == 0);
  CHECK_EQ(pfd_ring_release(&c, 3), -EINVAL);
  CHECK_EQ(pfd_ring_release(&c, 2), 0);
  /* Many at once: offsets are into the record space, lengths as sent. */
  {
    unsigned long long offs[8], lens[8];
    unsigned k;
    for (k = 0; k < 5; k++) CHECK_EQ(send_bytes(&p, "12345", k + 1), 0);
    CHECK_EQ(pfd_ring_peek_many(&c, offs, lens, 3), 3);
    CHECK_EQ(pfd_ring_peek_many(&c, offs + 3, lens + 3, 8), 2);
    CHECK_EQ(pfd_ring_peek_many(&c, offs, lens, 8), 0);
    for (k = 0; k < 5; k++) {
      CHECK_EQ(lens[k], k + 1);
      CHECK(memcmp(c.data + offs[k], "12345", k + 1) == 0);
    }
    CHECK_EQ(pfd_ring_release(&c, 5), 0);
  }
  /* A record written whole from two pieces, published at once. */
  CHECK_EQ(pfd_ring_write(&p, "ab", 2, "cde", 3), 0);
  CHECK_EQ(pfd_ring_peek(&c, &view), 5);
  CHECK(memcmp(view, "abcde", 5) == 0);
  CHECK_EQ(pfd_ring_release(&c, 1), 0);
  CHECK_EQ(pfd_ring_write(&p, "ab", 2, view, pfd_ring_max_record(&p) - 1), -EMSGSIZE);
  CHECK_EQ(pfd_ring_write(&p, "", 0, view, pfd_ring_max_record(&p) + 1), -EMSGSIZE);
  /* An aborted reservation writes nothing. */
  CHECK_EQ(pfd_ring_reserve(&p, 100, &out), 0);
  pfd_ring_abort(&p);
  pfd_ring_publish(&p);
  CHECK_EQ(pfd_ring_peek(&c, &view), -EAGAIN);
  return 0;
}

TEST_IMPL(ring_refuses_corrupted_memory) {
  pfd_ring_t p, c;
  const unsigned char *view;
  unsigned char *raw = (unsigned char *)ring_mem;
  uint32_t bad;
  unsigned long long tail;
  fresh(&p, &c);
  CHECK_EQ(send_bytes(&p, "hello", 5), 0);
  bad = 100000;  /* a length far past the ring */
  memcpy(c.data, &bad, 4);
  CHECK_EQ(pfd_ring_peek(&c, &view), -EBADMSG);
  bad = 5;
  memcpy(c.data, &bad, 4);
  memcpy(c.data + 4, &bad, 4);  /* unknown flags */
  CHECK_EQ(pfd_ring_peek(&c, &view), -EBADMSG);
  memset(c.data + 4, 0, 4);
  bad = 64;  /* longer than what was published */
  memcpy(c.data, &bad, 4);
  CHECK_EQ(pfd_ring_peek(&c, &view), -EBADMSG);
  bad = 5;
  memcpy(c.data, &bad, 4);
  tail = 3 * CAP;  /* a tail more than a capacity ahead */
  memcpy(raw + 64, &tail, 8);
  c.tail_seen = c.read;  /* make the consumer look again */
  CHECK_EQ(pfd_ring_peek(&c, &view), -EBADMSG);
  tail = 13;  /* not a record boundary */
  memcpy(raw + 64, &tail, 8);
  CHECK_EQ(pfd_ring_peek(&c, &view), -EBADMSG);
  tail = 16;  /* the right tail again: the record reads (after -EBADMSG a user gives up; */
  memcpy(raw + 64, &tail, 8);
  c.tail_seen = c.read;  /* here the consumer is made to look again) */
  CHECK_EQ(pfd_ring_peek(&c, &view), 5);
  /* A padding record that does not reach the end of the space. */
  fresh(&p, &c);
  bad = 8;
  memcpy(c.data, &bad, 4);
  bad = 1;
  memcpy(c.data + 4, &bad, 4);
  tail = 16;
  memcpy(raw + 64, &tail, 8);
  CHECK_EQ(pfd_ring_peek(&c, &view), -EBADMSG);
  return 0;
}

/* ---- stress: a producer and a consumer at once ---------------------------------------- */

static double soak_seconds(double fallback) {
  const char *s = getenv("PFD_RING_SOAK");
  return s != NULL && atof(s) > 0 ? atof(s) : fallback;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Record i: u64 i, then (i * 7919) % 1500 bytes derived from i, then a u32 checksum. */
static size_t record_size(unsigned long long i) { return 12 + (size_t)((i * 7919) % 1500); }

static uint32_t fill(unsigned char *out, unsigned long long i) {
  size_t n = record_size(i), k;
  uint32_t sum = 2166136261u;
  memcpy(out, &i, 8);
  for (k = 8; k < n - 4; k++) {
    out[k] = (unsigned char)(i * 31 + k);
  }
  for (k = 0; k < n - 4; k++) sum = (sum ^ out[k]) * 16777619u;
  memcpy(out + n - 4, &sum, 4);
  return sum;
}

static int check(const unsigned char *in, long long n, unsigned long long i) {
  uint32_t sum = 2166136261u, got;
  unsigned long long seq;
  long long k;
  if (n != (long long)record_size(i)) return 0;
  memcpy(&seq, in, 8);
  if (seq != i) return 0;
  for (k = 0; k < n - 4; k++) sum = (sum ^ in[k]) * 16777619u;
  memcpy(&got, in + n - 4, 4);
  return got == sum;
}

struct stress {
  void *mem;
  size_t size;
  double until;
  unsigned long long produced;
  int sleep; /* wait and notify instead of spinning with sched_yield */
};

/* Spins or sleeps until `what` is there; a lost wake-up fails the test after 10 s. */
static void await_ring(pfd_ring_t *ring, int what, size_t size, int sleep) {
  if (!sleep) {
    sched_yield();
    return;
  }
  CHECK_EQ(pfd_ring_wait(ring, what, size, 10000, -1), 1);
}

static void *produce(void *arg) {
  struct stress *s = arg;
  pfd_ring_t p;
  unsigned long long i = 0;
  CHECK_EQ(pfd_ring_attach(&p, s->mem, s->size), 0);
  while (now() < s->until) {
    unsigned char *out;
    int r = pfd_ring_reserve(&p, record_size(i), &out);
    if (r == -EAGAIN) {
      pfd_ring_publish(&p); /* what is staged must go before we wait for room */
      if (s->sleep) pfd_ring_notify(&p, PFD_RING_WAIT_DATA);
      await_ring(&p, PFD_RING_WAIT_SPACE, record_size(i), s->sleep);
      continue;
    }
    CHECK_EQ(r, 0);
    fill(out, i);
    /* Every third record goes out in a batch with the next one. */
    if (i % 3 == 0) {
      CHECK_EQ(pfd_ring_stage(&p, record_size(i)), 0);
    } else {
      CHECK_EQ(pfd_ring_commit(&p, record_size(i)), 0);
      if (s->sleep) pfd_ring_notify(&p, PFD_RING_WAIT_DATA);
    }
    i++;
  }
  pfd_ring_publish(&p);
  /* The end: an empty record. */
  for (;;) {
    unsigned char *out;
    if (pfd_ring_reserve(&p, 0, &out) == 0) break;
    await_ring(&p, PFD_RING_WAIT_SPACE, 0, s->sleep);
  }
  CHECK_EQ(pfd_ring_commit(&p, 0), 0);
  if (s->sleep) pfd_ring_notify(&p, PFD_RING_WAIT_DATA);
  s->produced = i;
  return NULL;
}

/* Consumes until the empty record; returns how many records came before it. */
static unsigned long long consume(void *mem, size_t size, int sleep) {
  pfd_ring_t c;
  unsigned long long i = 0;
  CHECK_EQ(pfd_ring_attach(&c, mem, size), 0);
  for (;;) {
    const unsigned char *view;
    long long n = pfd_ring_peek(&c, &view);
    if (n == -EAGAIN) {
      if (c.peeked > 0) { /* give back what is held before sleeping: the producer may wait */
        CHECK_EQ(pfd_ring_release(&c, c.peeked), 0);
        if (sleep) pfd_ring_notify(&c, PFD_RING_WAIT_SPACE);
      }
      await_ring(&c, PFD_RING_WAIT_DATA, 0, sleep);
      continue;
    }
    CHECK(n >= 0);
    if (n == 0) break;
    CHECK(check(view, n, i));
    /* Release in twos, sometimes: batches on this side too. */
    if (i % 2 == 1 || c.peeked == 2) {
      CHECK_EQ(pfd_ring_release(&c, c.peeked), 0);
      if (sleep) pfd_ring_notify(&c, PFD_RING_WAIT_SPACE);
    }
    i++;
  }
  return i;
}

static int two_threads(int sleep) {
  static unsigned long long mem[(PFD_RING_HEADER_SIZE + 16384) / 8];
  struct stress s;
  pthread_t t;
  unsigned long long got;
  CHECK_EQ(pfd_ring_init(mem, sizeof(mem), 16384), 0);
  s.mem = mem;
  s.size = sizeof(mem);
  s.until = now() + soak_seconds(1.0);
  s.produced = 0;
  s.sleep = sleep;
  CHECK(pthread_create(&t, NULL, produce, &s) == 0);
  got = consume(mem, sizeof(mem), sleep);
  CHECK(pthread_join(t, NULL) == 0);
  CHECK_EQ(got, s.produced);
  CHECK(got > 1000);
  return 0;
}

TEST_IMPL(ring_two_threads_stress) { return two_threads(0); }

/* The same with both sides asleep whenever they wait: a lost wake-up would stall it. */
TEST_IMPL(ring_two_threads_sleeping) { return two_threads(1); }

TEST_IMPL(ring_two_processes_stress) {
  size_t size = pfd_ring_size(1 << 16);
  void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  struct stress s;
  pid_t pid;
  int status;
  unsigned long long got, *count;
  CHECK(mem != MAP_FAILED);
  count = mmap(NULL, 8, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  CHECK(count != MAP_FAILED);
  CHECK_EQ(pfd_ring_init(mem, size, 1 << 16), 0);
  s.mem = mem;
  s.size = size;
  s.until = now() + soak_seconds(1.0);
  s.sleep = 1; /* futexes across processes */
  pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    produce(&s);
    *count = s.produced;
    _exit(0);
  }
  got = consume(mem, size, 1);
  CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK_EQ(got, *count);
  CHECK(got > 1000);
  munmap(mem, size);
  munmap(count, 8);
  return 0;
}

static void *publish_later(void *arg) {
  pfd_ring_t *p = arg;
  struct timespec pause = {0, 100 * 1000000L};
  nanosleep(&pause, NULL);
  CHECK_EQ(send_bytes(p, "late", 4), 0);
  pfd_ring_notify(p, PFD_RING_WAIT_DATA);
  return NULL;
}

TEST_IMPL(ring_wait_times_out_wakes_and_sees_the_peer_go) {
  pfd_ring_t p, c;
  pthread_t t;
  int sv[2];
  double t0;
  fresh(&p, &c);
  t0 = now();
  CHECK_EQ(pfd_ring_wait(&c, PFD_RING_WAIT_DATA, 0, 50, -1), 0); /* nothing: times out */
  CHECK(now() - t0 >= 0.045);
  CHECK_EQ(pfd_ring_wait(&c, 99, 0, 0, -1), -EINVAL);
  CHECK_EQ(pfd_ring_wait(&p, PFD_RING_WAIT_SPACE, CAP, 0, -1), -EMSGSIZE);
  CHECK_EQ(pfd_ring_wait(&p, PFD_RING_WAIT_SPACE, 100, 0, -1), 1); /* empty: room */
  CHECK(pthread_create(&t, NULL, publish_later, &p) == 0);
  CHECK_EQ(pfd_ring_wait(&c, PFD_RING_WAIT_DATA, 0, 10000, -1), 1); /* woken, not timed out */
  CHECK(pthread_join(t, NULL) == 0);
  /* The peer's channel closes: a sleeper notices without waiting out its timeout. */
  CHECK(pfd_fd_pair(sv) == 0);
  fresh(&p, &c);
  close(sv[1]);
  CHECK_EQ(pfd_ring_wait(&c, PFD_RING_WAIT_DATA, 0, 10000, sv[0]), -EPIPE); /* not 0: timeout */
  close(sv[0]);
  return 0;
}

struct sleeper {
  pfd_ring_t *ring;
  int result;
};

static void *wait_for_data(void *arg) {
  struct sleeper *s = arg;
  s->result = pfd_ring_wait(s->ring, PFD_RING_WAIT_DATA, 0, 3000, -1);
  return NULL;
}

TEST_IMPL(ring_stall_is_told_apart_from_a_busy_consumer) {
  pfd_ring_t p, c;
  pthread_t t;
  struct sleeper s;
  const unsigned char *view;
  unsigned char eight[8] = {0};
  fresh(&p, &c);
  while (send_bytes(&p, eight, 8) == 0) {
  }
  CHECK_EQ(pfd_ring_wait(&p, PFD_RING_WAIT_DATA | PFD_RING_WAIT_STALL, 0, 0, -1), -EINVAL);
  /* The consumer holds records but is awake (it may release them): no stall, a timeout. */
  CHECK_EQ(pfd_ring_peek(&c, &view), 8);
  CHECK_EQ(pfd_ring_wait(&p, PFD_RING_WAIT_SPACE | PFD_RING_WAIT_STALL, 8, 30, -1), 0);
  /* It takes every record and sleeps for more while holding them: a stall, seen at once
   * by a producer already asleep for room (the consumer wakes it to look). */
  while (pfd_ring_peek(&c, &view) >= 0) {
  }
  s.ring = &c;
  s.result = 99;
  CHECK(pthread_create(&t, NULL, wait_for_data, &s) == 0);
  CHECK_EQ(pfd_ring_wait(&p, PFD_RING_WAIT_SPACE | PFD_RING_WAIT_STALL, 8, 3000, -1), -EDEADLK);
  /* Without STALL the producer just waits (here: times out). */
  CHECK_EQ(pfd_ring_wait(&p, PFD_RING_WAIT_SPACE, 8, 20, -1), 0);
  /* The way out: an empty record in the kept bytes wakes the consumer. */
  CHECK_EQ(pfd_ring_stage_empty(&p), 0);
  pfd_ring_publish(&p);
  pfd_ring_notify(&p, PFD_RING_WAIT_DATA);
  CHECK(pthread_join(t, NULL) == 0);
  CHECK_EQ(s.result, 1);
  CHECK_EQ(pfd_ring_peek(&c, &view), 0);
  /* Once it has released, there is room again and no stall. */
  CHECK_EQ(pfd_ring_release(&c, c.peeked), 0);
  CHECK_EQ(pfd_ring_wait(&p, PFD_RING_WAIT_SPACE | PFD_RING_WAIT_STALL, 8, 0, -1), 1);
  return 0;
}

TEST_IMPL(ring_read_copies_releases_and_leaves_what_does_not_fit) {
  pfd_ring_t p, c;
  const unsigned char *view;
  unsigned char small[4], big[64];
  unsigned i;
  fresh(&p, &c);
  CHECK_EQ(pfd_ring_read(&c, small, sizeof(small)), -EAGAIN);
  CHECK_EQ(pfd_ring_write(&p, "ab", 2, "c", 1), 0);
  CHECK_EQ(pfd_ring_write(&p, "0123", 4, "456789", 6), 0);
  CHECK_EQ(pfd_ring_read(&c, small, sizeof(small)), 3);
  CHECK(memcmp(small, "abc", 3) == 0);
  CHECK_EQ(c.peeked, 0); /* released already */
  /* Too long for the room: nothing taken, and a peek finds it. */
  CHECK_EQ(pfd_ring_read(&c, small, sizeof(small)), -ENOSPC);
  CHECK_EQ(pfd_ring_peek(&c, &view), 10);
  CHECK(memcmp(view, "0123456789", 10) == 0);
  /* A peeked record goes first. */
  CHECK_EQ(pfd_ring_read(&c, big, sizeof(big)), -EBUSY);
  CHECK_EQ(pfd_ring_release(&c, 1), 0);
  /* Round the ring many times: every byte comes back, and the space with it. */
  for (i = 0; i < 10 * CAP / 16; i++) {
    unsigned char v = (unsigned char)i;
    CHECK_EQ(pfd_ring_write(&p, &v, 1, NULL, 0), 0);
    CHECK_EQ(pfd_ring_read(&c, big, sizeof(big)), 1);
    CHECK(big[0] == v);
  }
  return 0;
}

TEST_IMPL(ring_write_many_publishes_what_fits_in_order) {
  pfd_ring_t p, c;
  unsigned char data[3 * 16], got[64];
  unsigned long long lengths[3] = {16, 16, 16};
  unsigned long long big[1] = {CAP};
  unsigned i, total = 0;
  long long n;
  fresh(&p, &c);
  for (i = 0; i < sizeof(data); i++) data[i] = (unsigned char)i;
  CHECK_EQ(pfd_ring_write_many(&p, data, big, 1), -EMSGSIZE);
  CHECK_EQ(pfd_ring_write_many(&p, data, lengths, 0), 0);
  /* Batches until the ring is full: each record 8 + 16 bytes, room kept after the last. */
  while ((n = pfd_ring_write_many(&p, data, lengths, 3)) > 0) total += (unsigned)n;
  CHECK_EQ(n, 0);
  CHECK_EQ(total, (CAP - 8) / 24);
  for (i = 0; i < total; i++) {
    CHECK_EQ(pfd_ring_read(&c, got, sizeof(got)), 16);
    CHECK(memcmp(got, data + 16 * (i % 3), 16) == 0); /* in order, a batch's records apart */
  }
  CHECK_EQ(pfd_ring_read(&c, got, sizeof(got)), -EAGAIN);
  CHECK_EQ(pfd_ring_write_many(&p, data, lengths, 3), 3); /* the room came back */
  return 0;
}

TEST_IMPL(ring_read_many_copies_a_batch_and_stops_after_an_empty_record) {
  pfd_ring_t p, c;
  unsigned char out[64];
  unsigned long long lengths[8];
  fresh(&p, &c);
  CHECK_EQ(pfd_ring_read_many(&c, out, sizeof(out), lengths, 8), -EAGAIN);
  CHECK_EQ(pfd_ring_write(&p, "ab", 2, "", 0), 0);
  CHECK_EQ(pfd_ring_write(&p, "cde", 3, "", 0), 0);
  CHECK_EQ(pfd_ring_stage_empty(&p), 0);
  pfd_ring_publish(&p);
  CHECK_EQ(pfd_ring_write(&p, "fg", 2, "", 0), 0);
  CHECK_EQ(pfd_ring_read_many(&c, out, sizeof(out), lengths, 1), 1); /* no more than asked */
  CHECK(lengths[0] == 2 && memcmp(out, "ab", 2) == 0);
  CHECK_EQ(pfd_ring_read_many(&c, out, sizeof(out), lengths, 8), 2); /* up to the empty one */
  CHECK(lengths[0] == 3 && lengths[1] == 0 && memcmp(out, "cde", 3) == 0);
  CHECK_EQ(pfd_ring_read_many(&c, out, 1, lengths, 8), -ENOSPC); /* too long: left there */
  CHECK_EQ(pfd_ring_read_many(&c, out, sizeof(out), lengths, 8), 1);
  CHECK(lengths[0] == 2 && memcmp(out, "fg", 2) == 0);
  CHECK_EQ(c.peeked, 0);
  return 0;
}
