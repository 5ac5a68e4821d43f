/* test_frame.c - the binary frame header: round trip under every split, and refusals. */
#include <errno.h>
#include <string.h>

#include "runner.h"

TEST_IMPL(frame_round_trip_any_split) {
  unsigned char buf[PFD_FRAME_HEADER_SIZE + 5];
  pfd_frame_t in = {PFD_FRAME_RAW, 0, 3, 5}, out;
  size_t cut;
  pfd_frame_encode(&in, buf);
  memcpy(buf + PFD_FRAME_HEADER_SIZE, "hello", 5);
  CHECK(buf[0] == 'P' && buf[1] == 'F' && buf[2] == PFD_FRAME_VERSION);
  /* Every prefix but the whole frame asks for more; the whole gives its size. */
  for (cut = 0; cut < sizeof(buf); cut++) {
    CHECK_EQ(pfd_frame_scan(buf, cut, 1 << 20, &out), 0);
  }
  memset(&out, 0, sizeof(out));
  CHECK_EQ(pfd_frame_scan(buf, sizeof(buf), 1 << 20, &out), sizeof(buf));
  CHECK(out.kind == in.kind && out.flags == 0 && out.nfds == 3 && out.length == 5);
  return 0;
}

TEST_IMPL(frame_rejects_bad_headers) {
  unsigned char buf[PFD_FRAME_HEADER_SIZE];
  pfd_frame_t f = {PFD_FRAME_PICKLE, 0, 0, 100}, out;
  pfd_frame_encode(&f, buf);
  buf[0] = 'X';
  CHECK_EQ(pfd_frame_scan(buf, 1, 1000, &out), -EBADMSG); /* one byte is enough */
  pfd_frame_encode(&f, buf);
  buf[2] = 9;
  CHECK_EQ(pfd_frame_scan(buf, 3, 1000, &out), -EPROTO);
  pfd_frame_encode(&f, buf);
  buf[3] = 0;
  CHECK_EQ(pfd_frame_scan(buf, sizeof(buf), 1000, &out), -EINVAL);
  buf[3] = PFD_FRAME_RING + 1; /* past the last kind */
  CHECK_EQ(pfd_frame_scan(buf, sizeof(buf), 1000, &out), -EINVAL);
  buf[3] = PFD_FRAME_RING;
  CHECK_EQ(pfd_frame_scan(buf, sizeof(buf), 1000, &out), 0); /* a kind it knows: wants more */
  pfd_frame_encode(&f, buf);
  buf[4] = 2; /* an undefined flag */
  CHECK_EQ(pfd_frame_scan(buf, sizeof(buf), 1000, &out), -EINVAL);
  f.nfds = PFD_FRAME_MAX_FDS + 1;
  pfd_frame_encode(&f, buf);
  CHECK_EQ(pfd_frame_scan(buf, sizeof(buf), 1000, &out), -EINVAL);
  /* An oversized length is refused from the header alone, before any payload. */
  f.nfds = 0;
  f.length = 1001;
  pfd_frame_encode(&f, buf);
  CHECK_EQ(pfd_frame_scan(buf, sizeof(buf), 1000, &out), -EMSGSIZE);
  f.length = ~0ULL;
  pfd_frame_encode(&f, buf);
  CHECK_EQ(pfd_frame_scan(buf, sizeof(buf), ~0ULL, &out), -EMSGSIZE);
  return 0;
}

TEST_IMPL(frame_split_finds_every_whole_frame) {
  /* Three frames back to back, then half of a fourth: every cut gives the whole ones. */
  unsigned char buf[4 * PFD_FRAME_HEADER_SIZE + 3 + 0 + 7 + 4];
  pfd_frame_t f1 = {PFD_FRAME_RAW, 0, 0, 3}, f2 = {PFD_FRAME_PICKLE, 1, 2, 0},
              f3 = {PFD_FRAME_JSON, 0, 0, 7}, f4 = {PFD_FRAME_RAW, 0, 0, 9};
  unsigned long long out[8];
  size_t n, cut, at = 0, ends[3];
  pfd_frame_encode(&f1, buf + at);
  at += PFD_FRAME_HEADER_SIZE + 3;
  ends[0] = at;
  pfd_frame_encode(&f2, buf + at);
  at += PFD_FRAME_HEADER_SIZE;
  ends[1] = at;
  pfd_frame_encode(&f3, buf + at);
  at += PFD_FRAME_HEADER_SIZE + 7;
  ends[2] = at;
  pfd_frame_encode(&f4, buf + at); /* its 9 payload bytes never come */
  at += PFD_FRAME_HEADER_SIZE + 4;
  CHECK(at == sizeof(buf));
  for (cut = 0; cut <= sizeof(buf); cut++) {
    size_t want = cut >= ends[2] ? 3 : cut >= ends[1] ? 2 : cut >= ends[0] ? 1 : 0;
    long long used = pfd_frame_split(buf, cut, 1000, out, 4, &n);
    CHECK_EQ(n, want);
    CHECK_EQ(used, want ? ends[want - 1] : 0);
  }
  CHECK_EQ(pfd_frame_split(buf, sizeof(buf), 1000, out, 4, &n), ends[2]);
  CHECK(out[0] == PFD_FRAME_RAW && out[1] == 3);
  CHECK(out[2] == (PFD_FRAME_PICKLE | 1ULL << 8 | 2ULL << 24) && out[3] == 0);
  CHECK(out[4] == PFD_FRAME_JSON && out[5] == 7);
  /* No more than asked for. */
  CHECK_EQ(pfd_frame_split(buf, sizeof(buf), 1000, out, 2, &n), ends[1]);
  CHECK_EQ(n, 2);
  return 0;
}

TEST_IMPL(frame_split_stops_at_a_bad_header) {
  unsigned char buf[3 * PFD_FRAME_HEADER_SIZE];
  pfd_frame_t ok = {PFD_FRAME_RAW, 0, 0, 0}, big = {PFD_FRAME_RAW, 0, 0, 5000};
  unsigned long long out[6];
  size_t n;
  pfd_frame_encode(&ok, buf);
  pfd_frame_encode(&big, buf + PFD_FRAME_HEADER_SIZE);
  CHECK_EQ(pfd_frame_split(buf, 2 * PFD_FRAME_HEADER_SIZE, 1000, out, 3, &n), -EMSGSIZE);
  CHECK_EQ(n, 1);
  CHECK(out[2] == PFD_FRAME_RAW && out[3] == 5000); /* what the refused header said */
  buf[PFD_FRAME_HEADER_SIZE] = 'X';
  CHECK_EQ(pfd_frame_split(buf, PFD_FRAME_HEADER_SIZE + 1, 1000, out, 3, &n), -EBADMSG);
  CHECK(n == 1 && out[2] == 0 && out[3] == 0); /* (nothing of it read: zeros) */
  return 0;
}

TEST_IMPL(frame_pack_writes_frames_that_split_back) {
  const unsigned char payloads[] = "abcdefgh";
  unsigned long long lengths[3] = {3, 0, 5}, out[6];
  unsigned char buf[3 * PFD_FRAME_HEADER_SIZE + 8];
  size_t n;
  pfd_frame_pack(buf, PFD_FRAME_JSON, payloads, lengths, 3);
  CHECK_EQ(pfd_frame_split(buf, sizeof(buf), 100, out, 3, &n), sizeof(buf));
  CHECK_EQ(n, 3);
  CHECK(out[0] == PFD_FRAME_JSON && out[1] == 3 && out[3] == 0 && out[5] == 5);
  CHECK(memcmp(buf + PFD_FRAME_HEADER_SIZE, "abc", 3) == 0);
  CHECK(memcmp(buf + 3 * PFD_FRAME_HEADER_SIZE + 3, "defgh", 5) == 0);
  return 0;
}
