/*
 * frame.c - the pyforkd binary frame: encoding and validating its header.
 *
 * Layout (little-endian, 16 bytes, then `length` bytes of payload):
 *
 *   offset  size  field
 *   0       2     magic, the bytes 'P' 'F'
 *   2       1     version (1)
 *   3       1     kind: 1 pickle, 2 json, 3 raw, 4 control, 5 ring
 *   4       2     flags: 1 = the payload starts with a description of the attached
 *                 descriptors (below); any other bit is refused
 *   6       2     number of descriptors attached to the frame's first byte (<= 253)
 *   8       8     payload length
 *
 * The description of attached descriptors (flag 1): u32 length, then that many bytes:
 * u8 flags (bit 0: the sender passed a list, not one handle), then per descriptor in
 * order a kind byte - 'd' a raw descriptor (pyforkd.Fd), 's' a socket, 'f' a file, which is
 * followed by its mode and its encoding as u8 length + ASCII (an empty encoding: binary).
 * The message itself (pickle, JSON or raw bytes) follows the description.
 *
 * The decoder is incremental by construction: pfd_frame_scan looks only at the bytes it
 * is given and says "need more" until a whole frame is there, so any split of the stream
 * gives the same frames; it judges the header the moment its 16 bytes are present, so a
 * bad magic, version, kind or an oversized length is refused before the payload is awaited
 * or any memory sized by it.  It allocates nothing and reads nothing past `size`.
 *
 * What it does not do: move bytes or descriptors (fdpass.c), or keep any buffer (the
 * caller's channel does).
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "pyforkd.h"

static void pfd__put_le(unsigned char *out, unsigned long long value, int bytes) {
  int i;
  for (i = 0; i < bytes; i++) out[i] = (unsigned char)(value >> (8 * i));
}

static unsigned long long pfd__get_le(const unsigned char *in, int bytes) {
  unsigned long long value = 0;
  int i;
  for (i = bytes - 1; i >= 0; i--) value = (value << 8) | in[i];
  return value;
}

void pfd_frame_encode(const pfd_frame_t *frame, unsigned char *out) {
  pfd__put_le(out, PFD_FRAME_MAGIC, 2);
  out[2] = PFD_FRAME_VERSION;
  out[3] = (unsigned char)frame->kind;
  pfd__put_le(out + 4, frame->flags, 2);
  pfd__put_le(out + 6, frame->nfds, 2);
  pfd__put_le(out + 8, frame->length, 8);
}

long long pfd_frame_scan(const unsigned char *buf, size_t size, unsigned long long max_length,
                         pfd_frame_t *frame) {
  unsigned long long total;
  /* Judge what is there already: two bytes of a wrong magic are enough to refuse. */
  if (size >= 1 && buf[0] != (PFD_FRAME_MAGIC & 0xff)) return -EBADMSG;
  if (size >= 2 && buf[1] != (PFD_FRAME_MAGIC >> 8)) return -EBADMSG;
  if (size >= 3 && buf[2] != PFD_FRAME_VERSION) return -EPROTO;
  if (size < PFD_FRAME_HEADER_SIZE) return 0;
  frame->kind = buf[3];
  frame->flags = (unsigned int)pfd__get_le(buf + 4, 2);
  frame->nfds = (unsigned int)pfd__get_le(buf + 6, 2);
  frame->length = pfd__get_le(buf + 8, 8);
  if (frame->kind < PFD_FRAME_PICKLE || frame->kind > PFD_FRAME_RING) return -EINVAL;
  if ((frame->flags & ~(unsigned int)PFD_FRAME_FLAGS_KNOWN) != 0) return -EINVAL;
  if (frame->nfds > PFD_FRAME_MAX_FDS) return -EINVAL;
  if (frame->length > max_length || frame->length > (unsigned long long)0x7fffffffffffffffLL -
                                                         PFD_FRAME_HEADER_SIZE) {
    return -EMSGSIZE;
  }
  total = PFD_FRAME_HEADER_SIZE + frame->length;
  return size >= total ? (long long)total : 0;
}

void pfd_frame_pack(unsigned char *out, unsigned int kind, const unsigned char *payloads,
                    const unsigned long long *lengths, size_t n) {
  size_t i;
  pfd_frame_t f = {0, 0, 0, 0};
  f.kind = kind;
  for (i = 0; i < n; i++) {
    f.length = lengths[i];
    pfd_frame_encode(&f, out);
    out += PFD_FRAME_HEADER_SIZE;
    if (lengths[i]) memcpy(out, payloads, (size_t)lengths[i]);
    out += lengths[i];
    payloads += lengths[i];
  }
}

long long pfd_frame_split(const unsigned char *buf, size_t size, unsigned long long max_length,
                          unsigned long long *out, size_t max_frames, size_t *count) {
  size_t used = 0, n = 0;
  /* One call for every frame one read brought: the caller's loop is in Python. */
  while (n < max_frames && used < size) {
    pfd_frame_t f = {0, 0, 0, 0};
    long long r = pfd_frame_scan(buf + used, size - used, max_length, &f);
    if (r <= 0) {
      if (r < 0) {
        out[2 * n] = f.kind | (unsigned long long)f.flags << 8 | (unsigned long long)f.nfds << 24;
        out[2 * n + 1] = f.length;
        *count = n;
        return r;
      }
      break;
    }
    out[2 * n] = f.kind | (unsigned long long)f.flags << 8 | (unsigned long long)f.nfds << 24;
    out[2 * n + 1] = f.length;
    n++;
    used += (size_t)r;
  }
  *count = n;
  return (long long)used;
}

long pfd_frame_send(int sock, unsigned int kind, unsigned int frame_flags, const char *payload,
                    size_t size, const int *fds, int nfds, int flags) {
  unsigned char header[PFD_FRAME_HEADER_SIZE];
  pfd_frame_t frame;

  if (nfds < 0) return -EINVAL;
  frame.kind = kind;
  frame.flags = frame_flags;
  frame.nfds = (unsigned int)nfds;
  frame.length = size;
  pfd_frame_encode(&frame, header);
  /* (fdpass.c of each platform: one sendmsg with SCM_RIGHTS, or one pipe frame) */
  return pfd_fd_send(sock, header, sizeof(header), payload, size, fds, nfds, flags);
}
