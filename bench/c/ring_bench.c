/*
 * ring_bench.c - the ring's C core between two processes, against its limits.
 *
 *   ring_bench [--seconds S]
 *
 * Prints a table: single-process memcpy bandwidth (the limit for moving bytes); one-way
 * ring throughput with 64 KiB and 64 B records, where the producer copies each record in
 * and the consumer copies it out (what a real reader does); and round-trip latency of a
 * 64 B record over two rings, both sides sleeping in pfd_ring_wait when idle, against a
 * bare futex ping-pong (the limit for a sleeping round trip).  Medians of 5 runs each.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pyforkd.h"

#define RUNS 5
#define CAP (1u << 22) /* 4 MiB of record space */

static double seconds = 0.5;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v) {
  qsort(v, RUNS, sizeof(double), cmp);
  return v[RUNS / 2];
}

static void *shared(size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  return p;
}

/* Bytes per second of memcpy of `block`-byte blocks within one process. */
static double memcpy_rate(size_t block) {
  size_t n = 64u << 20;
  unsigned char *src = malloc(n), *dst = malloc(block);
  double t0, bytes = 0;
  size_t off = 0;
  memset(src, 1, n);
  memset(dst, 0, block);
  t0 = now();
  while (now() - t0 < seconds) {
    int i;
    for (i = 0; i < 64; i++) {
      memcpy(dst, src + off, block);
      off = (off + block) % (n - block);
      bytes += (double)block;
    }
  }
  bytes /= now() - t0;
  if (dst[0] != 1) exit(1);
  free(src);
  free(dst);
  return bytes;
}

/* One-way: a forked producer sends records of `size` until the deadline, then an empty
 * one; returns records per second seen by the consumer. */
static double ring_rate(size_t size) {
  size_t mem_size = pfd_ring_size(CAP);
  void *mem = shared(mem_size);
  unsigned char *src = malloc(size + 1), *dst = malloc(size + 1);
  pfd_ring_t c;
  double t0, count = 0;
  pid_t pid;
  pfd_ring_init(mem, mem_size, CAP);
  memset(src, 7, size + 1);
  t0 = now();
  pid = fork();
  if (pid == 0) {
    pfd_ring_t p;
    unsigned char *out;
    double until = t0 + seconds;
    int batch = 0;
    pfd_ring_attach(&p, mem, mem_size);
    while (now() < until) {
      int i;
      for (i = 0; i < 64; i++) {
        while (pfd_ring_reserve(&p, size, &out) == -EAGAIN) {
          pfd_ring_publish(&p);
          pfd_ring_notify(&p, PFD_RING_WAIT_DATA);
          pfd_ring_wait(&p, PFD_RING_WAIT_SPACE, size, 1000, -1);
        }
        memcpy(out, src, size);
        pfd_ring_stage(&p, size);
        if (++batch == 16) { /* small records go out sixteen at a time */
          batch = 0;
          pfd_ring_publish(&p);
          pfd_ring_notify(&p, PFD_RING_WAIT_DATA);
        }
      }
    }
    while (pfd_ring_reserve(&p, 0, &out) == -EAGAIN) {
      pfd_ring_publish(&p);
      pfd_ring_wait(&p, PFD_RING_WAIT_SPACE, 0, 1000, -1);
    }
    pfd_ring_commit(&p, 0);
    pfd_ring_notify(&p, PFD_RING_WAIT_DATA);
    _exit(0);
  }
  pfd_ring_attach(&c, mem, mem_size);
  for (;;) {
    const unsigned char *view;
    long long n = pfd_ring_peek(&c, &view);
    if (n == -EAGAIN) {
      if (c.peeked) {
        pfd_ring_release(&c, c.peeked);
        pfd_ring_notify(&c, PFD_RING_WAIT_SPACE);
      }
      pfd_ring_wait(&c, PFD_RING_WAIT_DATA, 0, 1000, -1);
      continue;
    }
    if (n == 0) break;
    memcpy(dst, view, (size_t)n);
    count += 1;
    if (c.peeked == 16) {
      pfd_ring_release(&c, c.peeked);
      pfd_ring_notify(&c, PFD_RING_WAIT_SPACE);
    }
  }
  count /= now() - t0;
  waitpid(pid, NULL, 0);
  munmap(mem, mem_size);
  free(src);
  free(dst);
  return count;
}

/* Round trips per second of a 64 B record over two rings (there and back). */
static double ring_round_trip_us(void) {
  size_t mem_size = pfd_ring_size(1u << 16);
  void *there = shared(mem_size), *back = shared(mem_size);
  unsigned char msg[64] = {0};
  pfd_ring_t out, in;
  long trips = 0;
  double t0;
  pid_t pid;
  pfd_ring_init(there, mem_size, 1u << 16);
  pfd_ring_init(back, mem_size, 1u << 16);
  pid = fork();
  if (pid == 0) { /* echo until an empty record */
    pfd_ring_t r, w;
    pfd_ring_attach(&r, there, mem_size);
    pfd_ring_attach(&w, back, mem_size);
    for (;;) {
      const unsigned char *view;
      unsigned char *dst;
      long long n;
      while ((n = pfd_ring_peek(&r, &view)) == -EAGAIN) {
        pfd_ring_wait(&r, PFD_RING_WAIT_DATA, 0, 1000, -1);
      }
      pfd_ring_reserve(&w, (size_t)n, &dst);
      memcpy(dst, view, (size_t)n);
      pfd_ring_release(&r, 1);
      pfd_ring_commit(&w, (size_t)n);
      pfd_ring_notify(&w, PFD_RING_WAIT_DATA);
      if (n == 0) _exit(0);
    }
  }
  pfd_ring_attach(&out, there, mem_size);
  pfd_ring_attach(&in, back, mem_size);
  t0 = now();
  while (now() - t0 < seconds) {
    const unsigned char *view;
    unsigned char *dst;
    pfd_ring_reserve(&out, sizeof(msg), &dst);
    memcpy(dst, msg, sizeof(msg));
    pfd_ring_commit(&out, sizeof(msg));
    pfd_ring_notify(&out, PFD_RING_WAIT_DATA);
    while (pfd_ring_peek(&in, &view) == -EAGAIN) {
      pfd_ring_wait(&in, PFD_RING_WAIT_DATA, 0, 1000, -1);
    }
    pfd_ring_release(&in, 1);
    trips++;
  }
  t0 = (now() - t0) / (double)trips * 1e6;
  {
    unsigned char *dst;
    pfd_ring_reserve(&out, 0, &dst);
    pfd_ring_commit(&out, 0);
    pfd_ring_notify(&out, PFD_RING_WAIT_DATA);
  }
  waitpid(pid, NULL, 0);
  munmap(there, mem_size);
  munmap(back, mem_size);
  return t0;
}

/* The reference: two processes hand a turn back and forth through one futex word. */
static double futex_round_trip_us(void) {
  atomic_uint *word = shared(4096);
  long trips = 0;
  double t0;
  pid_t pid;
  atomic_store(word, 0);
  pid = fork();
  if (pid == 0) {
    for (;;) {
      unsigned v;
      while ((v = atomic_load(word)) % 2 == 0) {
        syscall(SYS_futex, word, FUTEX_WAIT, v, NULL, NULL, 0);
      }
      if (v == 0xffffffffu) _exit(0);
      atomic_fetch_add(word, 1); /* odd -> even: the parent's turn */
      syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
    }
  }
  t0 = now();
  while (now() - t0 < seconds) {
    unsigned v;
    atomic_fetch_add(word, 1); /* even -> odd: the child's turn */
    syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
    while ((v = atomic_load(word)) % 2 == 1) {
      syscall(SYS_futex, word, FUTEX_WAIT, v, NULL, NULL, 0);
    }
    trips++;
  }
  t0 = (now() - t0) / (double)trips * 1e6;
  atomic_store(word, 0xffffffffu);
  syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
  waitpid(pid, NULL, 0);
  munmap(word, 4096);
  return t0;
}

int main(int argc, char **argv) {
  double v[RUNS], mem_bw, big, small, rt, futex_rt;
  int i;
  if (argc == 3 && strcmp(argv[1], "--seconds") == 0) seconds = atof(argv[2]);
  for (i = 0; i < RUNS; i++) v[i] = memcpy_rate(64u << 10);
  mem_bw = median(v);
  for (i = 0; i < RUNS; i++) v[i] = ring_rate(64u << 10);
  big = median(v);
  for (i = 0; i < RUNS; i++) v[i] = ring_rate(64);
  small = median(v);
  for (i = 0; i < RUNS; i++) v[i] = ring_round_trip_us();
  rt = median(v);
  for (i = 0; i < RUNS; i++) v[i] = futex_round_trip_us();
  futex_rt = median(v);
  printf("| measure | value | reference | ratio |\n|---|---|---|---|\n");
  printf("| ring one-way, 64 KiB records (copied in and out) | %.2f GB/s | memcpy %.2f GB/s "
         "| %.2fx |\n", big * 65536 / 1e9, mem_bw / 1e9, big * 65536 / mem_bw);
  printf("| ring one-way, 64 B records | %.2f M/s | | |\n", small / 1e6);
  printf("| ring round trip, 64 B, sleeping sides | %.2f us | futex ping-pong %.2f us "
         "| %.2fx |\n", rt, futex_rt, rt / futex_rt);
  return 0;
}
