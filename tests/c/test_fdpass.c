/* test_fdpass.c - descriptors over a socketpair: round trip, truncation, a vanished peer. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
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

/* ---- the receive state machine (frame.c) over a socketpair ---------------------------- */

/* A stream of four frames; the second carries two descriptors on its first byte, described
 * as a list of two Fds, and no message after the description. */
enum { RX_STREAM_SIZE = 4 * PFD_FRAME_HEADER_SIZE + 21 };
static const unsigned long long rx_described_meta =
    PFD_FRAME_PICKLE | (unsigned long long)(PFD_FRAME_FLAG_HANDLES | PFD_RX_FLAG_MANY |
                                            PFD_RX_FLAG_ALL_FD) << 8 | 2ULL << 24;

static size_t rx_stream(unsigned char *out, size_t ends[4]) {
  static const char *payloads[4] = {"abc", "\003\000\000\000\001dd", "0123456789", "z"};
  static const size_t lengths[4] = {3, 7, 10, 1};
  pfd_frame_t f = {PFD_FRAME_RAW, 0, 0, 0};
  size_t at = 0, i;
  for (i = 0; i < 4; i++) {
    f.kind = i == 1 ? PFD_FRAME_PICKLE : PFD_FRAME_RAW;
    f.nfds = i == 1 ? 2 : 0;
    f.flags = i == 1 ? PFD_FRAME_FLAG_HANDLES : 0;
    f.length = lengths[i];
    pfd_frame_encode(&f, out + at);
    at += PFD_FRAME_HEADER_SIZE;
    memcpy(out + at, payloads[i], (size_t)f.length);
    at += (size_t)f.length;
    ends[i] = at;
  }
  return at;
}

TEST_IMPL(rx_hands_out_frames_under_any_split) {
  unsigned char stream[RX_STREAM_SIZE];
  size_t ends[4], total = rx_stream(stream, ends), cut1, cut2;
  pfd_rx_frame_t *out = calloc(1, sizeof(*out));
  int before = pfd_test_count_fds();
  CHECK(out != NULL);
  /* Every two cuts: three writes, each read at once; the descriptors go with the write
   * that holds the second frame's first byte. */
  for (cut1 = 0; cut1 <= total; cut1++) {
    for (cut2 = cut1; cut2 <= total; cut2++) {
      size_t cuts[4] = {0, cut1, cut2, total}, k;
      int sv[2], fds[2], got = 0, i;
      pfd_rx_t *rx = pfd_rx_new(100);
      CHECK(rx != NULL && pfd_fd_pair(sv) == 0);
      fds[0] = fds[1] = sv[0];
      for (k = 0; k < 3; k++) {
        size_t lo = cuts[k], hi = cuts[k + 1];
        int with = lo <= ends[0] && ends[0] < hi;
        long long r;
        if (lo == hi) continue;
        CHECK_EQ(pfd_fd_send(sv[0], stream + lo, hi - lo, NULL, 0, fds, with ? 2 : 0, 0),
                 (long)(hi - lo));
        while ((r = pfd_rx_next(rx, sv[1], 0, out)) > 0) {
          size_t size;
          unsigned char *buf = pfd_rx_buffer(rx, &size);
          CHECK(out->start + out->length <= size);
          if (got == 1) {
            CHECK_EQ(out->meta, rx_described_meta);
            CHECK_EQ(out->length, 0); /* (the description is parsed, and skipped) */
            CHECK(out->kinds[0] == 'd' && out->kinds[1] == 'd');
            for (i = 0; i < 2; i++) CHECK_EQ(pfd_fd_close(out->fds[i]), 0);
          } else {
            CHECK_EQ(out->meta, PFD_FRAME_RAW);
            CHECK(memcmp(buf + out->start, stream + ends[got] - out->length, out->length) == 0);
          }
          got++;
        }
        CHECK_EQ(r, -EAGAIN);
      }
      CHECK_EQ(got, 4);
      close(sv[0]);
      CHECK_EQ(pfd_rx_next(rx, sv[1], -1, out), 0); /* the end, and it stays so */
      CHECK_EQ(pfd_rx_next(rx, sv[1], 0, out), 0);
      pfd_rx_free(rx);
      close(sv[1]);
      CHECK_EQ(pfd_test_count_fds(), before);
    }
  }
  free(out);
  return 0;
}

/* Sends `size` bytes of `stream` with `nfds` descriptors; returns what the reader says. */
static long long rx_feed(const unsigned char *stream, size_t size, int nfds, int *why) {
  int sv[2], fds[3];
  long long r;
  pfd_rx_frame_t *out = calloc(1, sizeof(*out));
  pfd_rx_t *rx = pfd_rx_new(100);
  if (out == NULL || rx == NULL || pfd_fd_pair(sv) != 0) return -ENOMEM;
  fds[0] = fds[1] = fds[2] = sv[0];
  if (pfd_fd_send(sv[0], stream, size, NULL, 0, fds, nfds, 0) != (long)size) return -EIO;
  close(sv[0]);
  while ((r = pfd_rx_next(rx, sv[1], -1, out)) > 0) {
    int i, n = (int)(out->meta >> 24);
    for (i = 0; i < n; i++) (void)pfd_fd_close(out->fds[i]);
  }
  *why = out->why;
  if (r < 0) CHECK_EQ(pfd_rx_next(rx, sv[1], 0, out), -EPIPE); /* broken for good */
  pfd_rx_free(rx);
  close(sv[1]);
  free(out);
  return r;
}

TEST_IMPL(rx_refuses_what_no_frame_claims) {
  unsigned char stream[RX_STREAM_SIZE];
  size_t ends[4], total = rx_stream(stream, ends);
  int before = pfd_test_count_fds(), why = 0;
  /* The whole stream in one write with its two descriptors: fine. */
  CHECK_EQ(rx_feed(stream, total, 2, &why), 0);
  /* Three descriptors where the frame declares two. */
  CHECK_EQ(rx_feed(stream, total, 3, &why), -EPROTO);
  CHECK_EQ(why, PFD_RX_FDS_COUNT);
  /* Descriptors with a frame that declares none (the first alone). */
  CHECK_EQ(rx_feed(stream, ends[0], 1, &why), -EPROTO);
  CHECK_EQ(why, PFD_RX_FDS_UNCLAIMED);
  /* A frame that declares some, with none. */
  CHECK_EQ(rx_feed(stream + ends[0], ends[1] - ends[0], 0, &why), -EPROTO);
  CHECK_EQ(why, PFD_RX_FDS_COUNT);
  /* The end in the middle of a frame. */
  CHECK_EQ(rx_feed(stream, ends[0] - 1, 0, &why), -EPROTO);
  CHECK_EQ(why, PFD_RX_END_MIDDLE);
  /* A bad header: refused from its first byte. */
  stream[0] = 'X';
  CHECK_EQ(rx_feed(stream, 1, 0, &why), -EBADMSG);
  CHECK_EQ(pfd_test_count_fds(), before); /* every descriptor refused was closed */
  return 0;
}

/* One frame of `kind` with `nfds` descriptors and the payload `desc` (a handle description,
 * then maybe a message): what the reader says. */
static long long rx_describe(const char *desc, size_t size, unsigned int flags, int nfds,
                             pfd_rx_frame_t *out, unsigned char *copy) {
  unsigned char frame[PFD_FRAME_HEADER_SIZE + 64];
  pfd_frame_t f = {PFD_FRAME_RAW, 0, 0, 0};
  int sv[2], fds[4], k;
  long long r;
  if (nfds > 4) return -EINVAL;
  f.flags = flags;
  f.nfds = (unsigned int)nfds;
  f.length = size;
  pfd_frame_encode(&f, frame);
  memcpy(frame + PFD_FRAME_HEADER_SIZE, desc, size);
  if (pfd_fd_pair(sv) != 0) return -ENOMEM;
  for (k = 0; k < 4; k++) fds[k] = sv[0];
  if (pfd_fd_send(sv[1], frame, PFD_FRAME_HEADER_SIZE + size, NULL, 0, fds, nfds, 0) !=
      (long)(PFD_FRAME_HEADER_SIZE + size)) {
    return -EIO;
  }
  {
    pfd_rx_t *rx = pfd_rx_new(64);
    if (rx == NULL) return -ENOMEM;
    r = pfd_rx_next(rx, sv[0], 1000, out);
    if (r > 0) {
      size_t cap;
      int i;
      memcpy(copy, pfd_rx_buffer(rx, &cap), PFD_FRAME_HEADER_SIZE + size);
      for (i = 0; i < nfds; i++) (void)pfd_fd_close(out->fds[i]);
    }
    pfd_rx_free(rx);
  }
  close(sv[0]);
  close(sv[1]);
  return r;
}

TEST_IMPL(rx_parses_handle_descriptions_and_refuses_bad_ones) {
  static const struct {
    const char *desc;
    size_t size;
    unsigned int flags;
    int nfds, why, got;
  } bad[] = {
      {"", 0, 0, 1, PFD_RX_DESC_NONE, 0},
      {"\x02\x00\x00", 3, 1, 1, PFD_RX_DESC_SHORT, 0},
      {"\x00\x00\x00\x00", 4, 1, 1, PFD_RX_DESC_SHORT, 0},
      {"\011\000\000\000\000d", 6, 1, 1, PFD_RX_DESC_SHORT, 0},
      {"\002\000\000\000\002d", 6, 1, 1, PFD_RX_DESC_FLAGS, 2},
      {"\002\000\000\000\000q", 6, 1, 1, PFD_RX_DESC_KIND, 'q'},
      {"\004\000\000\000\000f\001r", 8, 1, 1, PFD_RX_DESC_FILE, 0},
      {"\004\000\000\000\000f\005r", 8, 1, 1, PFD_RX_DESC_FILE, 0},
      {"\005\000\000\000\000f\001\377\000", 9, 1, 1, PFD_RX_DESC_FILE, 0},
      {"\002\000\000\000\001d", 6, 1, 2, PFD_RX_DESC_FEWER, 0},
      {"\003\000\000\000\001dd", 7, 1, 1, PFD_RX_DESC_MORE, 0},
      {"\003\000\000\000\000ds", 7, 1, 2, PFD_RX_DESC_LIST, 0},
      {"\x01\x00\x00\x00\x00", 5, 1, 0, PFD_RX_DESC_LIST, 0},
  };
  static const char good[] = "\016\000\000\000\001sf\002r+\005utf-8gdmsg";
  pfd_rx_frame_t *out = calloc(1, sizeof(*out));
  unsigned char copy[PFD_FRAME_HEADER_SIZE + 64];
  int before = pfd_test_count_fds();
  size_t i;
  CHECK(out != NULL);
  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    memset(out, 0, sizeof(*out));
    CHECK_EQ(rx_describe(bad[i].desc, bad[i].size, bad[i].flags, bad[i].nfds, out, copy),
             -EPROTO);
    CHECK_EQ(out->why, bad[i].why);
    if (bad[i].got) CHECK_EQ(out->got, bad[i].got);
    CHECK_EQ(pfd_test_count_fds(), before); /* the frame's descriptors were closed */
  }
  /* A list of a socket, a file "r+" in UTF-8, a ring and an Fd, then the message. */
  CHECK(rx_describe(good, sizeof(good) - 1, 1, 4, out, copy) > 0);
  CHECK_EQ(out->meta, PFD_FRAME_RAW | (unsigned long long)(PFD_FRAME_FLAG_HANDLES |
                                                          PFD_RX_FLAG_MANY) << 8 | 4ULL << 24);
  CHECK(memcmp(out->kinds, "sfgd", 4) == 0);
  CHECK(memcmp(copy + out->texts[1], "\x02r+\x05utf-8", 9) == 0);
  CHECK_EQ(out->length, 3);
  CHECK(memcmp(copy + out->start, "msg", 3) == 0);
  CHECK_EQ(pfd_test_count_fds(), before);
  free(out);
  return 0;
}

/* Frees what a test used; 0 when no descriptor is left open, -1 otherwise. */
static int rx_teardown(pfd_rx_t *rx, int sv[2], pfd_rx_frame_t *out, int before) {
  pfd_rx_free(rx);
  close(sv[0]);
  close(sv[1]);
  free(out);
  return pfd_test_count_fds() == before ? 0 : -1;
}

TEST_IMPL(rx_refuses_descriptors_in_the_middle_of_a_frame) {
  unsigned char stream[RX_STREAM_SIZE];
  size_t ends[4];
  int sv[2], fds[1], before = pfd_test_count_fds();
  pfd_rx_frame_t *out = calloc(1, sizeof(*out));
  pfd_rx_t *rx = pfd_rx_new(100);
  (void)rx_stream(stream, ends);
  CHECK(out != NULL && rx != NULL && pfd_fd_pair(sv) == 0);
  fds[0] = sv[0];
  CHECK_EQ(pfd_fd_send(sv[0], stream, 5, NULL, 0, NULL, 0, 0), 5);
  CHECK_EQ(pfd_rx_next(rx, sv[1], 0, out), -EAGAIN);
  CHECK_EQ(pfd_fd_send(sv[0], stream + 5, 5, NULL, 0, fds, 1, 0), 5);
  CHECK_EQ(pfd_rx_next(rx, sv[1], 0, out), -EPROTO);
  CHECK_EQ(out->why, PFD_RX_FDS_MIDDLE);
  CHECK_EQ(rx_teardown(rx, sv, out, before), 0);
  return 0;
}

TEST_IMPL(rx_grows_for_a_large_frame_and_gives_the_room_back) {
  size_t big = (size_t)40 << 20, sent = 0, i;
  unsigned char *frame = malloc(big + PFD_FRAME_HEADER_SIZE);
  pfd_frame_t f = {PFD_FRAME_RAW, 0, 0, 0};
  pfd_rx_frame_t *out = calloc(1, sizeof(*out));
  pfd_rx_t *rx = pfd_rx_new(big);
  int sv[2];
  long long r, gen;
  size_t size;
  unsigned char *buf;
  CHECK(frame != NULL && out != NULL && rx != NULL && pfd_fd_pair(sv) == 0);
  f.length = big;
  pfd_frame_encode(&f, frame);
  for (i = 0; i < big; i++) frame[PFD_FRAME_HEADER_SIZE + i] = (unsigned char)(i * 7);
  /* The writer and the reader take turns, each as far as the socket lets it. */
  do {
    long n = pfd_fd_send(sv[0], frame + sent, big + PFD_FRAME_HEADER_SIZE - sent, NULL, 0,
                         NULL, 0, 0);
    if (n > 0) sent += (size_t)n;
    r = pfd_rx_next(rx, sv[1], 0, out);
  } while (r == -EAGAIN);
  CHECK(r > 0);
  CHECK_EQ(out->length, big);
  buf = pfd_rx_buffer(rx, &size);
  CHECK(size == big + PFD_FRAME_HEADER_SIZE); /* grown to the frame, and no further */
  CHECK(memcmp(buf + out->start, frame + PFD_FRAME_HEADER_SIZE, big) == 0);
  gen = r;
  /* A small frame after it: the large room is given back. */
  f.length = 1;
  pfd_frame_encode(&f, frame);
  CHECK_EQ(pfd_fd_send(sv[0], frame, PFD_FRAME_HEADER_SIZE + 1, NULL, 0, NULL, 0, 0),
           PFD_FRAME_HEADER_SIZE + 1);
  r = pfd_rx_next(rx, sv[1], 1000, out);
  CHECK(r > 0 && r != gen);
  (void)pfd_rx_buffer(rx, &size);
  CHECK(size < ((size_t)1 << 20));
  pfd_rx_free(rx);
  close(sv[0]);
  close(sv[1]);
  free(out);
  free(frame);
  return 0;
}

TEST_IMPL(rx_batch_tells_plain_frames_and_stops_at_descriptors) {
  unsigned char stream[RX_STREAM_SIZE];
  size_t ends[4], total = rx_stream(stream, ends);
  unsigned long long info[3 * 4];
  int sv[2], fds[2], before = pfd_test_count_fds();
  pfd_rx_frame_t *out = calloc(1, sizeof(*out));
  pfd_rx_t *rx = pfd_rx_new(100);
  CHECK(out != NULL && rx != NULL && pfd_fd_pair(sv) == 0);
  fds[0] = fds[1] = sv[0];
  /* frame 0 alone, then frames 1 (two descriptors), 2 and 3 in one write */
  CHECK_EQ(pfd_fd_send(sv[0], stream, ends[0], NULL, 0, NULL, 0, 0), (long)ends[0]);
  CHECK_EQ(pfd_rx_batch(rx, info, 4), 0); /* nothing read yet: it reads nothing itself */
  CHECK(pfd_rx_next(rx, sv[1], 1000, out) > 0);
  CHECK_EQ(pfd_fd_send(sv[0], stream + ends[0], total - ends[0], NULL, 0, fds, 2, 0),
           (long)(total - ends[0]));
  CHECK(pfd_rx_next(rx, sv[1], 1000, out) > 0); /* the frame with descriptors */
  CHECK_EQ(out->meta, rx_described_meta);
  CHECK_EQ(pfd_fd_close(out->fds[0]), 0);
  CHECK_EQ(pfd_fd_close(out->fds[1]), 0);
  CHECK_EQ(pfd_rx_batch(rx, info, 1), 1); /* no more than asked */
  CHECK_EQ(info[0], PFD_FRAME_RAW);
  CHECK_EQ(info[2], 10);
  CHECK_EQ(pfd_rx_batch(rx, info, 4), 1);
  CHECK_EQ(info[2], 1);
  CHECK_EQ(pfd_rx_batch(rx, info, 4), 0);
  CHECK_EQ(rx_teardown(rx, sv, out, before), 0);
  return 0;
}
