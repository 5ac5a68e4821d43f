/* test_fdpass.c - descriptors over a socketpair: round trip, truncation, a vanished peer. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "runner.h"

TEST_IMPL(fdpass_round_trip) {
  int sv[2], pipes[3][2], got[8], nfds = 0, i;
  int sent[3];
  char buf[64];
  CHECK(pfd_fd_pair(sv) == 0);
  for (i = 0; i < 3; i++) {
    CHECK(pipe(pipes[i]) == 0);
    sent[i] = pipes[i][1];
  }
  CHECK_EQ(pfd_fd_send(sv[0], "he", 2, "llo", 3, sent, 3, 0), 5);
  CHECK_EQ(pfd_fd_wait(sv[1], PFD_POLL_IN, 1000), 1);
  CHECK_EQ(pfd_fd_recv(sv[1], buf, sizeof(buf), got, 8, &nfds, 0), 5);
  CHECK(memcmp(buf, "hello", 5) == 0);
  CHECK_EQ(nfds, 3);
  for (i = 0; i < 3; i++) {
    char c = 0;
    CHECK(fcntl(got[i], F_GETFD) & FD_CLOEXEC);
    CHECK(write(got[i], "x", 1) == 1); /* the received copy is the same pipe */
    CHECK(read(pipes[i][0], &c, 1) == 1 && c == 'x');
    CHECK_EQ(pfd_fd_close(got[i]), 0);
    CHECK_EQ(pfd_fd_close(got[i]), -EBADF); /* (nothing else opens one meanwhile) */
    close(pipes[i][0]);
    close(pipes[i][1]);
  }
  CHECK_EQ(pfd_fd_recv(sv[1], buf, sizeof(buf), got, 8, &nfds, 0), -EAGAIN);
  CHECK_EQ(pfd_fd_wait(sv[1], PFD_POLL_IN, 0), 0);
  CHECK_EQ(pfd_fd_send(sv[0], NULL, 0, NULL, 0, sent, 1, 0), -EINVAL); /* nothing to ride on */
  /* Shut down: a receive sees the end at once, a send fails. */
  CHECK_EQ(pfd_fd_shutdown(sv[1]), 0);
  CHECK_EQ(pfd_fd_recv(sv[1], buf, sizeof(buf), got, 8, &nfds, PFD_FD_BLOCK), 0);
  CHECK_EQ(pfd_fd_send(sv[1], "x", 1, NULL, 0, NULL, 0, 0), -EPIPE);
  close(sv[0]);
  close(sv[1]);
  return 0;
}

TEST_IMPL(fdpass_truncated_closes_all) {
  int sv[2], fds[10], got[2], nfds = 0, i, before;
  char buf[16];
  CHECK(pfd_fd_pair(sv) == 0);
  before = pfd_test_count_fds();
  for (i = 0; i < 10; i++) fds[i] = sv[0];
  CHECK_EQ(pfd_fd_send(sv[0], "x", 1, NULL, 0, fds, 10, 0), 1);
  CHECK_EQ(pfd_fd_recv(sv[1], buf, sizeof(buf), got, 2, &nfds, 0), 1);
  CHECK_EQ(nfds, PFD_FD_TRUNCATED);
  CHECK_EQ(pfd_test_count_fds(), before);
  close(sv[0]);
  close(sv[1]);
  return 0;
}

TEST_IMPL(fdpass_peer_gone_no_sigpipe) {
  int sv[2], nfds = 0;
  char buf[4];
  signal(SIGPIPE, SIG_DFL); /* a SIGPIPE would kill this test */
  CHECK(pfd_fd_pair(sv) == 0);
  CHECK_EQ(pfd_socket_nosigpipe(sv[0]), 0);
  close(sv[1]);
  CHECK_EQ(pfd_fd_send(sv[0], "x", 1, NULL, 0, NULL, 0, 0), -EPIPE);
  CHECK_EQ(pfd_fd_wait(sv[0], PFD_POLL_IN, 1000), 1); /* hang-up wakes a reader */
  CHECK_EQ(pfd_fd_recv(sv[0], buf, sizeof(buf), NULL, 0, &nfds, 0), 0);
  close(sv[0]);
  return 0;
}

TEST_IMPL(fdpass_frame_send_is_one_frame) {
  int sv[2], pipefd[2], got[2], nfds = 0;
  unsigned char buf[64];
  pfd_frame_t frame;
  CHECK(pfd_fd_pair(sv) == 0);
  CHECK(pipe(pipefd) == 0);
  CHECK_EQ(pfd_frame_send(sv[0], PFD_FRAME_RAW, 0, "abc", 3, &pipefd[1], 1, 0),
           PFD_FRAME_HEADER_SIZE + 3);
  CHECK_EQ(pfd_fd_recv(sv[1], buf, sizeof(buf), got, 2, &nfds, 0), PFD_FRAME_HEADER_SIZE + 3);
  CHECK_EQ(nfds, 1);
  CHECK_EQ(pfd_frame_scan(buf, PFD_FRAME_HEADER_SIZE + 3, 100, &frame), PFD_FRAME_HEADER_SIZE + 3);
  CHECK_EQ(frame.kind, PFD_FRAME_RAW);
  CHECK_EQ(frame.nfds, 1);
  CHECK_EQ(frame.length, 3);
  CHECK(memcmp(buf + PFD_FRAME_HEADER_SIZE, "abc", 3) == 0);
  /* An empty payload is a header alone; a negative count is refused before any I/O. */
  CHECK_EQ(pfd_frame_send(sv[0], PFD_FRAME_RAW, 0, NULL, 0, NULL, 0, 0), PFD_FRAME_HEADER_SIZE);
  CHECK_EQ(pfd_frame_send(sv[0], PFD_FRAME_RAW, 0, NULL, 0, NULL, -1, 0), -EINVAL);
  CHECK_EQ(pfd_fd_recv(sv[1], buf, sizeof(buf), got, 2, &nfds, 0), PFD_FRAME_HEADER_SIZE);
  close(got[0]);
  close(pipefd[0]);
  close(pipefd[1]);
  close(sv[0]);
  close(sv[1]);
  return 0;
}

TEST_IMPL(fdpass_pair_is_a_connected_channel) {
  /* pfd_fd_pair: two connected, close-on-exec stream sockets; naming a peer or releasing a
   * descriptor has nothing to do on Unix but checks its arguments. */
  int sv[2], type = 0;
  socklen_t len = sizeof(type);
  char buf[8];
  CHECK_EQ(pfd_fd_pair(sv), 0);
  CHECK(fcntl(sv[0], F_GETFD) & FD_CLOEXEC);
  CHECK(fcntl(sv[1], F_GETFD) & FD_CLOEXEC);
  CHECK(getsockopt(sv[0], SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM);
  CHECK(write(sv[0], "ab", 2) == 2 && read(sv[1], buf, 2) == 2 && memcmp(buf, "ab", 2) == 0);
  CHECK(write(sv[1], "cd", 2) == 2 && read(sv[0], buf, 2) == 2 && memcmp(buf, "cd", 2) == 0);
  CHECK_EQ(pfd_fd_peer(sv[0], getpid()), 0);
  CHECK_EQ(pfd_fd_peer(sv[0], 0), -EINVAL);
  CHECK_EQ(pfd_fd_release(sv[0]), 0);
  CHECK_EQ(pfd_fd_close(sv[0]), 0);
  CHECK(read(sv[1], buf, 1) == 0); /* the other end sees the end */
  CHECK_EQ(pfd_fd_close(sv[1]), 0);
  return 0;
}
