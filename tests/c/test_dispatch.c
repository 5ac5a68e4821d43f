/* test_dispatch.c - the cluster's dispatcher, on every platform: round-robin hand-off over
 * worker channels, acknowledgements, a worker that dies holding connections (they go to
 * another, alive), the per-worker in-flight bound, removal, worker processes served, and
 * nothing leaked. */
#ifdef _WIN32
#include <winsock2.h>
#include <io.h>
#else
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#endif
#include <errno.h>
#include <string.h>

#include "runner.h"

/* Sockets as the C core gives them: descriptors, or on Windows SOCKETs in an int. */
#ifdef _WIN32
static void close_socket(int fd) { CHECK_EQ(closesocket((SOCKET)fd), 0); }
static long sock_read(int fd, void *buf, int n) { return recv((SOCKET)fd, buf, n, MSG_WAITALL); }
static long sock_write(int fd, const void *buf, int n) { return send((SOCKET)fd, buf, n, 0); }
static void pause_5ms(void) { Sleep(5); }
#else
static void close_socket(int fd) { CHECK_EQ(close(fd), 0); }
static long sock_read(int fd, void *buf, int n) { return (long)read(fd, buf, (size_t)n); }
static long sock_write(int fd, const void *buf, int n) { return (long)write(fd, buf, (size_t)n); }
static void pause_5ms(void) {
  struct timespec pause = {0, 5000000};
  nanosleep(&pause, NULL);
}
#endif

static int listener(int *port) {
  struct sockaddr_in a;
#ifdef _WIN32
  int len = sizeof(a);
#else
  socklen_t len = sizeof(a);
#endif
  int fd = (int)socket(AF_INET, SOCK_STREAM, 0); /* (no SOCK_CLOEXEC on macOS) */
  CHECK(fd >= 0);
#ifndef _WIN32
  CHECK(fcntl(fd, F_SETFD, FD_CLOEXEC) == 0);
#endif
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
  CHECK(listen(fd, 64) == 0);
  CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
  *port = ntohs(a.sin_port);
  return fd;
}

static int client(int port, int id) {
  struct sockaddr_in a;
  char msg = (char)('0' + id);
  int fd = (int)socket(AF_INET, SOCK_STREAM, 0); /* (no SOCK_CLOEXEC on macOS) */
  CHECK(fd >= 0);
#ifndef _WIN32
  CHECK(fcntl(fd, F_SETFD, FD_CLOEXEC) == 0);
#endif
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((unsigned short)port);
  CHECK(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
  CHECK(sock_write(fd, &msg, 1) == 1);
  return fd;
}

/* The descriptors (Windows: handles) held before a test.  Windows makes some handles once
 * per process, on first use (Winsock's, the dispatcher thread's): one whole dispatcher
 * cycle runs first there, so that only what a test leaves behind is counted. */
static int baseline(void) {
#ifdef _WIN32
  int port, lfd = listener(&port), w[2], c, fd;
  unsigned long long seq;
  pfd_dispatch_t *d;
  CHECK_EQ(pfd_dispatch_new(&d, lfd, 1), 0);
  CHECK_EQ(pfd_fd_pair(w), 0);
  CHECK_EQ(pfd_dispatch_add(d, w[0]), 0);
  CHECK_EQ(pfd_dispatch_start(d), 0);
  c = client(port, 0);
  fd = pfd_dispatch_take(w[1], &seq, PFD_FD_BLOCK);
  CHECK(fd >= 0);
  CHECK_EQ(pfd_dispatch_ack(w[1], &seq, 1), 0);
  close_socket(fd);
  pfd_dispatch_free(d);
  CHECK_EQ(pfd_fd_close(w[1]), 0);
  close_socket(c);
  close_socket(lfd);
#endif
  return pfd_test_count_fds();
}

/* Windows: a connection handed to a worker is described for the worker's process
 * (WSADuplicateSocketW), which then holds a handle for it until it takes it or ends.  In
 * these tests the worker is this process: each hand-off never taken stays counted. */
#ifdef _WIN32
#define UNTAKEN(n) (n)
#else
#define UNTAKEN(n) 0
#endif

/* Waits (bounded) until a dispatcher counter reaches `want`. */
static void await_stat(pfd_dispatch_t *d, int slot, int index, unsigned long long want) {
  unsigned long long out[4];
  int i;
  for (i = 0; i < 2000; i++) {
    CHECK_EQ(pfd_dispatch_stats(d, slot, out), 0);
    if (out[index] == want) return;
    pause_5ms();
  }
  CHECK_EQ(out[index], want);
}

TEST_IMPL(dispatch_survives_a_worker_dying_with_connections) {
  int base = baseline(), port, lfd, w0[2], w1[2], clients[6], seen[6] = {0};
  int i, fd, taken0 = 0;
  unsigned long long seq, out[4];
  pfd_dispatch_t *d;
  lfd = listener(&port);
  CHECK_EQ(pfd_dispatch_new(&d, lfd, 8), 0);
  CHECK(pfd_fd_pair(w0) == 0);
  CHECK(pfd_fd_pair(w1) == 0);
  CHECK_EQ(pfd_dispatch_add(d, w0[0]), 0);
  CHECK_EQ(pfd_dispatch_add(d, w1[0]), 1);
#ifdef _WIN32
  CHECK_EQ(pfd_dispatch_add(d, (int)(intptr_t)GetCurrentProcess()), -EINVAL); /* not a pipe */
#endif
  CHECK_EQ(pfd_dispatch_start(d), 0);
  CHECK_EQ(pfd_dispatch_start(d), -EBUSY);
  for (i = 0; i < 6; i++) clients[i] = client(port, i);
  await_stat(d, -1, 0, 6); /* all accepted */
  await_stat(d, 1, 0, 3);  /* round-robin: three each */
  await_stat(d, 0, 0, 3);
  /* Worker 1 takes one connection and dies without acknowledging any. */
  fd = pfd_dispatch_take(w1[1], &seq, PFD_FD_BLOCK);
  CHECK(fd >= 0);
  close_socket(fd);
  CHECK_EQ(pfd_fd_close(w1[1]), 0);
  /* Worker 0 gets all six in the end, each connection alive. */
  while (taken0 < 6) {
    char id;
    fd = pfd_dispatch_take(w0[1], &seq, PFD_FD_BLOCK);
    CHECK(fd >= 0);
    CHECK(sock_read(fd, &id, 1) == 1);
    CHECK(id >= '0' && id < '6' && !seen[id - '0']);
    seen[id - '0'] = 1;
    CHECK(sock_write(fd, "ok", 2) == 2);
    CHECK_EQ(pfd_dispatch_ack(w0[1], &seq, 1), 0);
    close_socket(fd);
    taken0++;
  }
  for (i = 0; i < 6; i++) {
    char buf[2];
    CHECK(sock_read(clients[i], buf, 2) == 2 && memcmp(buf, "ok", 2) == 0);
    close_socket(clients[i]);
  }
  await_stat(d, 0, 1, 6); /* six acknowledged */
  CHECK_EQ(pfd_dispatch_stats(d, -1, out), 0);
  CHECK_EQ(out[2], 3); /* re-dispatched */
  CHECK_EQ(pfd_dispatch_stats(d, 1, out), 0);
  CHECK_EQ(out[3], 0); /* worker 1 is down */
  CHECK_EQ(pfd_dispatch_remove(d, 1), -ENOENT);
  CHECK_EQ(pfd_dispatch_remove(d, 0), 0);
  CHECK_EQ(pfd_dispatch_remove(d, 0), -ENOENT);
  CHECK_EQ(pfd_dispatch_stats(d, 7, out), -ENOENT);
  /* Removed: its channel is closed, so the worker learns there is nothing more. */
  CHECK_EQ(pfd_dispatch_take(w0[1], &seq, PFD_FD_BLOCK), -EPIPE);
  pfd_dispatch_free(d);
  CHECK_EQ(pfd_fd_close(w0[1]), 0);
  close_socket(lfd);
  CHECK_EQ(pfd_test_count_fds(), base + UNTAKEN(2)); /* worker 1's, handed as it died */
  return 0;
}

TEST_IMPL(dispatch_takes_acknowledgements_in_one_batch) {
  /* 70 hand-offs taken, then acknowledged in one call (more than one send's worth). */
  enum { N = 70 };
  int base = baseline(), port, lfd, w[2], clients[N], conns[N], i;
  unsigned long long seqs[N], out[4];
  pfd_dispatch_t *d;
  lfd = listener(&port);
  CHECK_EQ(pfd_dispatch_new(&d, lfd, N), 0);
  CHECK(pfd_fd_pair(w) == 0);
  CHECK_EQ(pfd_dispatch_add(d, w[0]), 0);
  CHECK_EQ(pfd_dispatch_start(d), 0);
  for (i = 0; i < N; i++) {
    clients[i] = client(port, i % 10);
    conns[i] = pfd_dispatch_take(w[1], &seqs[i], PFD_FD_BLOCK);
    CHECK(conns[i] >= 0);
  }
  await_stat(d, 0, 2, N); /* all in flight */
  CHECK_EQ(pfd_dispatch_ack(w[1], seqs, N), 0);
  await_stat(d, 0, 1, N); /* all acknowledged, */
  CHECK_EQ(pfd_dispatch_stats(d, 0, out), 0);
  CHECK_EQ(out[2], 0); /* none in flight, */
  CHECK_EQ(pfd_dispatch_ack(w[1], seqs, 0), 0); /* (nothing to say: nothing sent) */
  for (i = 0; i < N; i++) {
    char id;
    CHECK(sock_read(conns[i], &id, 1) == 1 && id == (char)('0' + i % 10)); /* each alive */
    close_socket(conns[i]);
    close_socket(clients[i]);
  }
  CHECK_EQ(pfd_dispatch_stats(d, 0, out), 0);
  CHECK_EQ(out[3], 1); /* and the worker is in good standing */
  pfd_dispatch_free(d);
  CHECK_EQ(pfd_fd_close(w[1]), 0);
  close_socket(lfd);
  CHECK_EQ(pfd_test_count_fds(), base);
  return 0;
}

TEST_IMPL(dispatch_bounds_a_workers_connections_in_flight) {
  int base = baseline(), port, lfd, w[2], c1, c2, fd;
  unsigned long long seq, seq2;
  pfd_dispatch_t *d;
  lfd = listener(&port);
  CHECK_EQ(pfd_dispatch_new(&d, lfd, 1), 0);
  CHECK(pfd_fd_pair(w) == 0);
  CHECK_EQ(pfd_dispatch_add(d, w[0]), 0);
  CHECK_EQ(pfd_dispatch_start(d), 0);
#ifndef _WIN32
  {
    /* A process forked now (a new worker) holds none of the dispatcher's descriptors. */
    int pid = fork(), status;
    CHECK(pid >= 0);
    if (pid == 0) _exit(fcntl(w[0], F_GETFD) == -1 && errno == EBADF ? 0 : 1);
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
#endif
  c1 = client(port, 1);
  c2 = client(port, 2);
  await_stat(d, -1, 0, 2);
  await_stat(d, -1, 1, 1); /* the second waits: the worker has one in flight */
  fd = pfd_dispatch_take(w[1], &seq, PFD_FD_BLOCK);
  CHECK(fd >= 0);
  CHECK_EQ(pfd_dispatch_take(w[1], &seq2, 0), -EAGAIN); /* nothing more handed yet */
  CHECK_EQ(pfd_dispatch_ack(w[1], &seq, 1), 0);
  close_socket(fd);
  fd = pfd_dispatch_take(w[1], &seq2, PFD_FD_BLOCK); /* now it comes */
  CHECK(fd >= 0 && seq2 == seq + 1);
  close_socket(fd);
  /* Freed with a connection unacknowledged: the dispatcher closes its copy. */
  pfd_dispatch_free(d);
  CHECK_EQ(pfd_dispatch_take(w[1], &seq, PFD_FD_BLOCK), -EPIPE);
  CHECK_EQ(pfd_fd_close(w[1]), 0);
  close_socket(c1);
  close_socket(c2);
  close_socket(lfd);
  CHECK_EQ(pfd_test_count_fds(), base);
  return 0;
}

TEST_IMPL(dispatch_least_connections_prefers_the_least_loaded) {
  int base = baseline(), port, lfd, w0[2], w1[2], clients[4], i;
  unsigned long long open[2] = {3, 0}, out[4];
  pfd_dispatch_t *d;
  lfd = listener(&port);
  CHECK_EQ(pfd_dispatch_new(&d, lfd, 8), 0);
  CHECK_EQ(pfd_dispatch_balance(d, 7), -EINVAL);
  CHECK_EQ(pfd_dispatch_balance(d, PFD_DISPATCH_LEAST_CONN), 0);
  CHECK(pfd_fd_pair(w0) == 0);
  CHECK(pfd_fd_pair(w1) == 0);
  CHECK_EQ(pfd_dispatch_add(d, w0[0]), 0);
  CHECK_EQ(pfd_dispatch_add(d, w1[0]), 1);
  CHECK_EQ(pfd_dispatch_load(d, 0, &open[0]), 0);
  CHECK_EQ(pfd_dispatch_load(d, 1, &open[1]), 0);
  CHECK_EQ(pfd_dispatch_load(d, 2, &open[1]), -ENOENT);
  CHECK_EQ(pfd_dispatch_start(d), 0);
  /* Worker 0 has 3 open, worker 1 none: the first three go to worker 1 (its load counts
   * the hand-offs not yet acknowledged), then the tie goes in turn. */
  for (i = 0; i < 3; i++) {
    clients[i] = client(port, i);
    await_stat(d, 1, 0, (unsigned long long)i + 1);
  }
  CHECK_EQ(pfd_dispatch_stats(d, 0, out), 0);
  CHECK_EQ(out[0], 0);
  clients[3] = client(port, 3);
  await_stat(d, -1, 0, 4);
  CHECK_EQ(pfd_dispatch_stats(d, 0, out), 0);
  CHECK_EQ(out[0], 1);
  pfd_dispatch_free(d); /* closes the hand-offs nobody took */
  for (i = 0; i < 4; i++) close_socket(clients[i]);
  CHECK_EQ(pfd_fd_close(w0[1]), 0);
  CHECK_EQ(pfd_fd_close(w1[1]), 0);
  close_socket(lfd);
  CHECK_EQ(pfd_test_count_fds(), base + UNTAKEN(4));
  return 0;
}

/* A worker removed while it acknowledges: what it acknowledged first stays its own (never
 * given to a second worker), what it acknowledges after fails and goes to another. */
TEST_IMPL(dispatch_remove_honours_acks_already_sent) {
  int base = baseline(), port, lfd, w0[2], w1[2], c1, c2, fd1, fd2, fd;
  unsigned long long seq1, seq2, seq, out[4];
  pfd_dispatch_t *d;
  lfd = listener(&port);
  CHECK_EQ(pfd_dispatch_new(&d, lfd, 8), 0);
  CHECK(pfd_fd_pair(w0) == 0);
  CHECK(pfd_fd_pair(w1) == 0);
  CHECK_EQ(pfd_dispatch_add(d, w0[0]), 0);
  CHECK_EQ(pfd_dispatch_start(d), 0);
  c1 = client(port, 1);
  c2 = client(port, 2);
  await_stat(d, 0, 0, 2); /* both handed to worker 0 */
  fd1 = pfd_dispatch_take(w0[1], &seq1, PFD_FD_BLOCK);
  fd2 = pfd_dispatch_take(w0[1], &seq2, PFD_FD_BLOCK);
  CHECK(fd1 >= 0 && fd2 >= 0);
  CHECK_EQ(pfd_dispatch_ack(w0[1], &seq1, 1), 0); /* sent; the dispatcher may not have read it */
  CHECK_EQ(pfd_dispatch_add(d, w1[0]), 1);
  CHECK_EQ(pfd_dispatch_remove(d, 0), 0);
  CHECK_EQ(pfd_dispatch_ack(w0[1], &seq2, 1), -EPIPE); /* too late: not ours any more */
  close_socket(fd2);
  fd = pfd_dispatch_take(w1[1], &seq, PFD_FD_BLOCK); /* only the second one moves */
  CHECK(fd >= 0);
  CHECK_EQ(pfd_dispatch_ack(w1[1], &seq, 1), 0);
  {
    char id;
    CHECK(sock_read(fd, &id, 1) == 1 && id == '2');
  }
  CHECK_EQ(pfd_dispatch_take(w1[1], &seq, 0), -EAGAIN);
  CHECK_EQ(pfd_dispatch_stats(d, -1, out), 0);
  CHECK_EQ(out[2], 1); /* one re-dispatched */
  CHECK_EQ(pfd_dispatch_stats(d, 0, out), 0);
  CHECK_EQ(out[1], 1); /* worker 0's first acknowledgement counted */
  pfd_dispatch_free(d);
  close_socket(fd);
  close_socket(fd1);
  close_socket(c1);
  close_socket(c2);
  CHECK_EQ(pfd_fd_close(w0[1]), 0);
  CHECK_EQ(pfd_fd_close(w1[1]), 0);
  close_socket(lfd);
  CHECK_EQ(pfd_test_count_fds(), base);
  return 0;
}


/* A worker process: slot 3 is its dispatcher channel.  Serves each connection it is handed
 * (reads the client's id byte, answers "ok" and the id) until the channel closes. */
CHILD_IMPL(dispatch_worker) {
  int channel = pfd_test_slot(3);
  (void)argc;
  (void)argv;
  for (;;) {
    unsigned long long seq;
    char answer[3] = {'o', 'k', 0};
    int conn = pfd_dispatch_take(channel, &seq, PFD_FD_BLOCK);
    if (conn == -EPIPE) return 0;
    if (conn < 0) return 4;
    if (sock_read(conn, &answer[2], 1) != 1) return 5;
    if (sock_write(conn, answer, 3) != 3) return 6;
    if (pfd_dispatch_ack(channel, &seq, 1) != 0) return 7;
    close_socket(conn);
  }
}

TEST_IMPL(dispatch_to_worker_processes) {
  /* Two worker processes on the channels spawn gave them: each connection is served by
   * one of them (the socket crosses into the worker), in turn; freeing the dispatcher
   * closes the channels and both workers end. */
  pfd_stdio_t stdio[2][4], none[3] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1},
                                      {PFD_STDIO_IGNORE, -1}};
  pfd_spawn_result_t r[2];
  int base, port, lfd, i, k, clients[8];
  unsigned long long out[4];
  pfd_dispatch_t *d;
  /* (Windows makes its job object for children at the first spawn: one spawn first.) */
  CHECK_EQ(pfd_test_spawn_child("dispatch_worker", NULL, none, 3, 0, &r[0]), 0);
  CHECK_EQ(pfd_test_reap(r[0].pid), 4); /* (no channel at slot 3: it says so and ends) */
  base = baseline();
  lfd = listener(&port);
  CHECK_EQ(pfd_dispatch_new(&d, lfd, 0), 0);
  for (k = 0; k < 2; k++) {
    pfd_stdio_t s[4] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1},
                        {PFD_STDIO_INHERIT_SAME, -1}, {PFD_STDIO_CHANNEL, -1}};
    memcpy(stdio[k], s, sizeof(s));
    CHECK_EQ(pfd_test_spawn_child("dispatch_worker", NULL, stdio[k], 4, 0, &r[k]), 0);
    CHECK_EQ(pfd_dispatch_add(d, stdio[k][3].fd), k); /* (the dispatcher's from now on) */
  }
  CHECK_EQ(pfd_dispatch_start(d), 0);
  for (i = 0; i < 8; i++) clients[i] = client(port, i);
  for (i = 0; i < 8; i++) {
    char buf[3];
    CHECK(sock_read(clients[i], buf, 3) == 3);
    CHECK(memcmp(buf, "ok", 2) == 0 && buf[2] == '0' + i);
    close_socket(clients[i]);
  }
  await_stat(d, 0, 1, 4); /* in turn: four each, all acknowledged */
  await_stat(d, 1, 1, 4);
  CHECK_EQ(pfd_dispatch_stats(d, -1, out), 0);
  CHECK_EQ(out[0], 8);
  CHECK_EQ(out[2], 0);
  pfd_dispatch_free(d);
  CHECK_EQ(pfd_test_reap(r[0].pid), 0);
  CHECK_EQ(pfd_test_reap(r[1].pid), 0);
  close_socket(lfd);
  CHECK_EQ(pfd_test_count_fds(), base);
  return 0;
}
