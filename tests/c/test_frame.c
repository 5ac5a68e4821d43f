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

TEST_IMPL(frame_pack_writes_frames_that_scan_back) {
  const unsigned char payloads[] = "abcdefgh";
  unsigned long long lengths[3] = {3, 0, 5};
  unsigned char buf[3 * PFD_FRAME_HEADER_SIZE + 8];
  size_t at = 0, i;
  pfd_frame_pack(buf, PFD_FRAME_JSON, payloads, lengths, 3);
  for (i = 0; i < 3; i++) {
    pfd_frame_t f;
    long long total = pfd_frame_scan(buf + at, sizeof(buf) - at, 100, &f);
    CHECK_EQ(total, PFD_FRAME_HEADER_SIZE + lengths[i]);
    CHECK(f.kind == PFD_FRAME_JSON && f.length == lengths[i] && f.nfds == 0);
    at += (size_t)total;
  }
  CHECK_EQ(at, sizeof(buf));
  CHECK(memcmp(buf + PFD_FRAME_HEADER_SIZE, "abc", 3) == 0);
  CHECK(memcmp(buf + 3 * PFD_FRAME_HEADER_SIZE + 3, "defgh", 5) == 0);
  return 0;
}
