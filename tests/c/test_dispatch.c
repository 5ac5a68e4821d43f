/* test_dispatch.c - the cluster's dispatcher: round-robin hand-off over worker sockets,
 * acknowledgements, a worker that dies holding connections (they go to another, alive),
 * the per-worker in-flight bound, removal, and nothing leaked. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runner.h"

static int listener(int *port) {
  struct sockaddr_in a;
  socklen_t len = sizeof(a);
  int fd = socket(AF_INET, SOCK_STREAM, 0); /* (no SOCK_CLOEXEC on macOS) */
  CHECK(fd >= 0);
  CHECK(fcntl(fd, F_SETFD, FD_CLOEXEC) == 0);
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
  int fd = socket(AF_INET, SOCK_STREAM, 0); /* (no SOCK_CLOEXEC on macOS) */
  CHECK(fd >= 0);
  CHECK(fcntl(fd, F_SETFD, FD_CLOEXEC) == 0);
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((unsigned short)port);
  CHECK(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
  CHECK(write(fd, &msg, 1) == 1);
  return fd;
}

/* Waits (bounded) until a dispatcher counter reaches `want`. */
static void await_stat(pfd_dispatch_t *d, int slot, int index, unsigned long long want) {
  struct timespec pause = {0, 5000000};
  unsigned long long out[4];
  int i;
  for (i = 0; i < 2000; i++) {
    CHECK_EQ(pfd_dispatch_stats(d, slot, out), 0);
    if (out[index] == want) return;
    nanosleep(&pause, NULL);
  }
  CHECK_EQ(out[index], want);
}

TEST_IMPL(dispatch_survives_a_worker_dying_with_connections) {
  int base = pfd_test_count_fds(), port, lfd, w0[2], w1[2], clients[6], seen[6] = {0};
  int i, fd, taken0 = 0;
  unsigned long long seq, out[4];
  pfd_dispatch_t *d;
  lfd = listener(&port);
  CHECK_EQ(pfd_dispatch_new(&d, lfd, 8), 0);
  CHECK(pfd_fd_pair(w0) == 0);
  CHECK(pfd_fd_pair(w1) == 0);
  CHECK_EQ(pfd_dispatch_add(d, w0[0]), 0);
  CHECK_EQ(pfd_dispatch_add(d, w1[0]), 1);
  CHECK_EQ(pfd_dispatch_start(d), 0);
  CHECK_EQ(pfd_dispatch_start(d), -EBUSY);
  for (i = 0; i < 6; i++) clients[i] = client(port, i);
  await_stat(d, -1, 0, 6); /* all accepted */
  await_stat(d, 1, 0, 3);  /* round-robin: three each */
  await_stat(d, 0, 0, 3);
  /* Worker 1 takes one connection and dies without acknowledging any. */
  fd = pfd_dispatch_take(w1[1], &seq, PFD_FD_BLOCK);
  CHECK(fd >= 0);
  close(fd);
  close(w1[1]);
  /* Worker 0 gets all six in the end, each connection alive. */
  while (taken0 < 6) {
    char id;
    fd = pfd_dispatch_take(w0[1], &seq, PFD_FD_BLOCK);
    CHECK(fd >= 0);
    CHECK(read(fd, &id, 1) == 1);
    CHECK(id >= '0' && id < '6' && !seen[id - '0']);
    seen[id - '0'] = 1;
    CHECK(write(fd, "ok", 2) == 2);
    CHECK_EQ(pfd_dispatch_ack(w0[1], &seq, 1), 0);
    close(fd);
    taken0++;
  }
  for (i = 0; i < 6; i++) {
    char buf[2];
    CHECK(read(clients[i], buf, 2) == 2 && memcmp(buf, "ok", 2) == 0);
    close(clients[i]);
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
  pfd_dispatch_free(d);
  close(w0[1]);
  close(lfd);
  CHECK_EQ(pfd_test_count_fds(), base);
  return 0;
}

TEST_IMPL(dispatch_takes_acknowledgements_in_one_batch) {
  /* 70 hand-offs taken, then acknowledged in one call (more than one send's worth). */
  enum { N = 70 };
  int base = pfd_test_count_fds(), port, lfd, w[2], clients[N], conns[N], i;
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
    CHECK(read(conns[i], &id, 1) == 1 && id == (char)('0' + i % 10)); /* each alive */
    close(conns[i]);
    close(clients[i]);
  }
  CHECK_EQ(pfd_dispatch_stats(d, 0, out), 0);
  CHECK_EQ(out[3], 1); /* and the worker is in good standing */
  pfd_dispatch_free(d);
  close(w[1]);
  close(lfd);
  CHECK_EQ(pfd_test_count_fds(), base);
  return 0;
}

TEST_IMPL(dispatch_bounds_a_workers_connections_in_flight) {
  int base = pfd_test_count_fds(), port, lfd, w[2], c1, c2, fd;
  unsigned long long seq, seq2;
  pfd_dispatch_t *d;
  lfd = listener(&port);
  CHECK_EQ(pfd_dispatch_new(&d, lfd, 1), 0);
  CHECK(pfd_fd_pair(w) == 0);
  CHECK_EQ(pfd_dispatch_add(d, w[0]), 0);
  CHECK_EQ(pfd_dispatch_start(d), 0);
  {
    /* A process forked now (a new worker) holds none of the dispatcher's descriptors. */
    int pid = fork(), status;
    CHECK(pid >= 0);
    if (pid == 0) _exit(fcntl(w[0], F_GETFD) == -1 && errno == EBADF ? 0 : 1);
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  c1 = client(port, 1);
  c2 = client(port, 2);
  await_stat(d, -1, 0, 2);
  await_stat(d, -1, 1, 1); /* the second waits: the worker has one in flight */
  fd = pfd_dispatch_take(w[1], &seq, PFD_FD_BLOCK);
  CHECK(fd >= 0);
  CHECK_EQ(pfd_dispatch_take(w[1], &seq2, 0), -EAGAIN); /* nothing more handed yet */
  CHECK_EQ(pfd_dispatch_ack(w[1], &seq, 1), 0);
  close(fd);
  fd = pfd_dispatch_take(w[1], &seq2, PFD_FD_BLOCK); /* now it comes */
  CHECK(fd >= 0 && seq2 == seq + 1);
  close(fd);
  /* Freed with a connection unacknowledged: the dispatcher closes its copy. */
  pfd_dispatch_free(d);
  CHECK_EQ(pfd_dispatch_take(w[1], &seq, PFD_FD_BLOCK), -EPIPE);
  close(w[1]);
  close(c1);
  close(c2);
  close(lfd);
  CHECK_EQ(pfd_test_count_fds(), base);
  return 0;
}

TEST_IMPL(dispatch_least_connections_prefers_the_least_loaded) {
  int base = pfd_test_count_fds(), port, lfd, w0[2], w1[2], clients[4], i;
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
  for (i = 0; i < 4; i++) close(clients[i]);
  close(w0[1]);
  close(w1[1]);
  close(lfd);
  CHECK_EQ(pfd_test_count_fds(), base);
  return 0;
}

/* A worker removed while it acknowledges: what it acknowledged first stays its own (never
 * given to a second worker), what it acknowledges after fails and goes to another. */
TEST_IMPL(dispatch_remove_honours_acks_already_sent) {
  int base = pfd_test_count_fds(), port, lfd, w0[2], w1[2], c1, c2, fd1, fd2, fd;
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
  close(fd2);
  fd = pfd_dispatch_take(w1[1], &seq, PFD_FD_BLOCK); /* only the second one moves */
  CHECK(fd >= 0);
  CHECK_EQ(pfd_dispatch_ack(w1[1], &seq, 1), 0);
  {
    char id;
    CHECK(read(fd, &id, 1) == 1 && id == '2');
  }
  CHECK_EQ(pfd_dispatch_take(w1[1], &seq, 0), -EAGAIN);
  CHECK_EQ(pfd_dispatch_stats(d, -1, out), 0);
  CHECK_EQ(out[2], 1); /* one re-dispatched */
  CHECK_EQ(pfd_dispatch_stats(d, 0, out), 0);
  CHECK_EQ(out[1], 1); /* worker 0's first acknowledgement counted */
  pfd_dispatch_free(d);
  close(fd);
  close(fd1);
  close(c1);
  close(c2);
  close(w0[1]);
  close(w1[1]);
  close(lfd);
  CHECK_EQ(pfd_test_count_fds(), base);
  return 0;
}
