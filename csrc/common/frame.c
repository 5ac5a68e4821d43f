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
 * order a kind byte - 'd' a raw descriptor (pyforkd.Fd), 's' a socket, 'g' a ring's shared
 * memory, 'f' a file, which is followed by its mode and its encoding as u8 length + ASCII
 * (an empty encoding: binary).  The message itself (pickle, JSON or raw bytes) follows the
 * description.  pfd_rx_next parses and checks it, so Python only builds the objects.
 *
 * The decoder is incremental by construction: pfd_frame_scan looks only at the bytes it
 * is given and says "need more" until a whole frame is there, so any split of the stream
 * gives the same frames; it judges the header the moment its 16 bytes are present, so a
 * bad magic, version, kind or an oversized length is refused before the payload is awaited
 * or any memory sized by it.  It allocates nothing and reads nothing past `size`.
 *
 * The receive state machine (pfd_rx_*) keeps a channel's receive buffer: it reads with
 * pfd_fd_recv (fdpass.c of each platform), hands out one whole frame per call, and binds
 * descriptors to frames by the kernel's rule: a sender attaches them to a frame's first
 * byte, and a read that brings them ends right after the bytes they came with.  So they
 * belong to the first frame that starts in that read and declares descriptors; any that no
 * such frame can claim are refused at once (a peer cannot park descriptors here).
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "pyforkd.h"
#include "wait.h"

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

/* ---- the receive state machine ------------------------------------------------------- */

enum {
  PFD__RX_FIRST = 1 << 16,      /* the buffer at first: a channel that mostly sends pays little */
  PFD__RX_SIZE = 1 << 18,       /* once a read fills it: what one read of a full socket brings */
  PFD__RX_BIG_FIRST = 1 << 20,  /* a larger frame's room starts here and doubles as bytes come */
  PFD__RX_KEEP = 16 << 20       /* a buffer up to this size is kept for the next large frame */
};

typedef struct {
  unsigned long long start, end; /* the stream bytes of the read they came with */
  int n;
  int fds[PFD_FRAME_MAX_FDS];
} pfd__rx_batch_t;

typedef struct {
  unsigned long long pos; /* the stream offset of the frame's first byte */
  int n;
  int fds[PFD_FRAME_MAX_FDS];
} pfd__rx_owned_t;

struct pfd_rx_s {
  unsigned char *buf;
  size_t cap;
  size_t rpos;   /* the next frame to hand out */
  size_t walked; /* frames before this are whole and judged; the one here is not whole */
  size_t wpos;   /* the end of the bytes received */
  unsigned long long base; /* the stream offset of buf[0] */
  unsigned long long max_length;
  long long gen;  /* changes whenever buf moves */
  int judged;     /* the header at `walked` was judged and its descriptors bound */
  int grow;       /* the last read filled the buffer: the peer sends a lot */
  int state;      /* 0 open, 1 the stream ended, -1 broken */
  pfd__rx_batch_t waiting;  /* came with the first byte of the frame at `walked` */
  pfd__rx_batch_t incoming; /* the last read's */
  /* Bound to frames not handed out yet, oldest first.  Reads happen only once every whole
   * frame is out, and each brings one batch at most: so two at most. */
  pfd__rx_owned_t owned[2];
  int nowned;
};

pfd_rx_t *pfd_rx_new(unsigned long long max_length) {
  pfd_rx_t *rx = calloc(1, sizeof(*rx));
  if (rx == NULL) return NULL;
  rx->max_length = max_length;
  rx->gen = 1;
  return rx;
}

static void pfd__rx_close(int *fds, int *n) {
  int i;
  for (i = 0; i < *n; i++) (void)pfd_fd_close(fds[i]); /* ours alone: nothing to report */
  *n = 0;
}

static void pfd__rx_close_all(pfd_rx_t *rx) {
  int i;
  pfd__rx_close(rx->waiting.fds, &rx->waiting.n);
  pfd__rx_close(rx->incoming.fds, &rx->incoming.n);
  for (i = 0; i < rx->nowned; i++) pfd__rx_close(rx->owned[i].fds, &rx->owned[i].n);
  rx->nowned = 0;
}

void pfd_rx_free(pfd_rx_t *rx) {
  if (rx == NULL) return;
  pfd__rx_close_all(rx);
  free(rx->buf);
  free(rx);
}

static long long pfd__rx_fail(pfd_rx_t *rx, pfd_rx_frame_t *out, int why, long long err) {
  pfd__rx_close_all(rx);
  rx->state = -1;
  out->why = why;
  return err;
}

static unsigned long long pfd__rx_meta(const pfd_frame_t *f) {
  return f->kind | (unsigned long long)f->flags << 8 | (unsigned long long)f->nfds << 24;
}

/* The batch holding stream offset `pos`, if one does. */
static pfd__rx_batch_t *pfd__rx_batch_at(pfd_rx_t *rx, unsigned long long pos) {
  if (rx->waiting.n && rx->waiting.start <= pos && pos < rx->waiting.end) return &rx->waiting;
  if (rx->incoming.n && rx->incoming.start <= pos && pos < rx->incoming.end) {
    return &rx->incoming;
  }
  return NULL;
}

/* Judges every header the last read completed and binds descriptors to their frames. */
static long long pfd__rx_walk(pfd_rx_t *rx, pfd_rx_frame_t *out) {
  size_t pos = rx->walked;
  unsigned long long here;
  pfd__rx_batch_t *left[2];
  int i;
  for (;;) {
    pfd_frame_t f = {0, 0, 0, 0};
    long long r = pfd_frame_scan(rx->buf + pos, rx->wpos - pos, rx->max_length, &f);
    if (r < 0) {
      out->meta = pfd__rx_meta(&f);
      out->length = f.length;
      return pfd__rx_fail(rx, out, 0, r);
    }
    if (rx->wpos - pos < PFD_FRAME_HEADER_SIZE) break;
    if (!rx->judged && f.nfds > 0) {
      pfd__rx_batch_t *b = pfd__rx_batch_at(rx, rx->base + pos);
      pfd__rx_owned_t *o;
      if (b == NULL || b->n != (int)f.nfds || rx->nowned == 2) {
        out->meta = pfd__rx_meta(&f);
        out->got = b == NULL ? 0 : b->n;
        return pfd__rx_fail(rx, out, PFD_RX_FDS_COUNT, -EPROTO);
      }
      o = &rx->owned[rx->nowned++];
      o->pos = rx->base + pos;
      o->n = b->n;
      memcpy(o->fds, b->fds, sizeof(int) * (size_t)b->n);
      b->n = 0;
    }
    rx->judged = 1;
    if (r == 0) break; /* the frame at pos is not whole yet */
    pos += (size_t)r;
    rx->judged = 0;
  }
  rx->walked = pos;
  /* What is left may wait only for the frame at `walked`, whose first byte it came with,
   * and only while that frame's header is not judged yet. */
  here = rx->base + pos;
  left[0] = &rx->waiting;
  left[1] = &rx->incoming;
  for (i = 0; i < 2; i++) {
    pfd__rx_batch_t *b = left[i];
    if (b->n == 0) continue;
    if (b->start > here) return pfd__rx_fail(rx, out, PFD_RX_FDS_MIDDLE, -EPROTO);
    if (b->end <= here || rx->judged) return pfd__rx_fail(rx, out, PFD_RX_FDS_UNCLAIMED, -EPROTO);
    if (b != &rx->waiting) {
      rx->waiting = *b; /* (the waiting one, if any, cannot also hold that byte) */
      b->n = 0;
    }
  }
  return 0;
}

/* Moves `buf` to a new allocation of `size` bytes (the bytes received stay). */
static int pfd__rx_resize(pfd_rx_t *rx, size_t size) {
  unsigned char *buf = realloc(rx->buf, size);
  if (buf == NULL) return -ENOMEM;
  rx->buf = buf;
  rx->cap = size;
  rx->gen++;
  return 0;
}

/* Makes room after the bytes received: the frame at `walked` moves to the start. */
static int pfd__rx_room(pfd_rx_t *rx) {
  if (rx->rpos > 0) {
    memmove(rx->buf, rx->buf + rx->rpos, rx->wpos - rx->rpos);
    rx->base += rx->rpos;
    rx->walked -= rx->rpos;
    rx->wpos -= rx->rpos;
    rx->rpos = 0;
  }
  if (rx->buf == NULL) return pfd__rx_resize(rx, PFD__RX_FIRST);
  if (rx->wpos == 0 && rx->cap > PFD__RX_KEEP) { /* the large frame is out: give it back */
    free(rx->buf);
    rx->buf = NULL;
    return pfd__rx_resize(rx, PFD__RX_SIZE);
  }
  if (rx->grow && rx->cap < PFD__RX_SIZE) {
    rx->grow = 0;
    return pfd__rx_resize(rx, PFD__RX_SIZE);
  }
  if (rx->wpos == rx->cap) {
    /* The frame at the start fills the buffer (its header is there: it was judged).  Its
     * room grows as its bytes come: a header alone must not make this process allocate. */
    pfd_frame_t f = {0, 0, 0, 0};
    unsigned long long total, want = 2 * (unsigned long long)rx->cap;
    (void)pfd_frame_scan(rx->buf, rx->wpos, rx->max_length, &f);
    total = PFD_FRAME_HEADER_SIZE + f.length;
    if (want < PFD__RX_BIG_FIRST) want = PFD__RX_BIG_FIRST;
    if (want > total) want = total;
    if ((size_t)want != want) return -ENOMEM;
    return pfd__rx_resize(rx, (size_t)want);
  }
  return 0;
}

/* One read into the buffer, then judges what it brought.  Returns 1, 0 at the end of the
 * stream, or an error as pfd_rx_next does. */
static long long pfd__rx_read(pfd_rx_t *rx, int sock, int block, pfd_rx_frame_t *out) {
  size_t room;
  long n;
  int nfds = 0, r = pfd__rx_room(rx);
  if (r < 0) return r;
  room = rx->cap - rx->wpos;
  n = pfd_fd_recv(sock, rx->buf + rx->wpos, room, rx->incoming.fds, PFD_FRAME_MAX_FDS, &nfds,
                  block ? PFD_FD_BLOCK : 0);
  if (n == -ECONNRESET) n = 0; /* the peer went with bytes unread: the end all the same */
  if (n < 0) return n;
  if (nfds == PFD_FD_TRUNCATED) return pfd__rx_fail(rx, out, PFD_RX_FDS_TOO_MANY, -EPROTO);
  rx->incoming.n = nfds;
  rx->incoming.start = rx->base + rx->wpos;
  rx->incoming.end = rx->incoming.start + (unsigned long long)n;
  if (n == 0) {
    if (rx->wpos > rx->rpos || rx->nowned || rx->waiting.n || nfds) {
      return pfd__rx_fail(rx, out, PFD_RX_END_MIDDLE, -EPROTO);
    }
    rx->state = 1;
    return 0;
  }
  rx->grow = (size_t)n == room;
  rx->wpos += (size_t)n;
  r = (int)pfd__rx_walk(rx, out);
  return r < 0 ? r : 1;
}

/* Parses the handle description at the front of out's payload (layout at the top), for
 * `nfds` descriptors: fills kinds and texts, adds the PFD_RX_FLAG_* bits to meta and moves
 * start/length past it.  Returns 0, or the PFD_RX_DESC_* that says what is wrong. */
static int pfd__rx_describe(const unsigned char *buf, unsigned int nfds, pfd_rx_frame_t *out) {
  const unsigned char *d = buf + out->start + 4;
  unsigned long long size, pos = 1;
  unsigned int n = 0, all_fd = 1;
  int t;
  if (out->length < 4) return PFD_RX_DESC_SHORT;
  size = pfd__get_le(buf + out->start, 4);
  if (size == 0 || size > out->length - 4) return PFD_RX_DESC_SHORT;
  if (d[0] & ~1u) {
    out->got = d[0];
    return PFD_RX_DESC_FLAGS;
  }
  while (pos < size) {
    unsigned char kind = d[pos++];
    if (kind != 'd' && kind != 's' && kind != 'g' && kind != 'f') {
      out->got = kind;
      return PFD_RX_DESC_KIND;
    }
    if (n == nfds) return PFD_RX_DESC_MORE;
    out->kinds[n] = kind;
    out->texts[n] = 0;
    if (kind == 'f') {
      out->texts[n] = out->start + 4 + (size_t)pos;
      for (t = 0; t < 2; t++) { /* its mode, then its encoding */
        unsigned long long len, i;
        if (pos >= size) return PFD_RX_DESC_FILE;
        len = d[pos++];
        if (len > size - pos) return PFD_RX_DESC_FILE;
        for (i = 0; i < len; i++) {
          if (d[pos + i] & 0x80) return PFD_RX_DESC_FILE;
        }
        pos += len;
      }
    }
    all_fd &= kind == 'd';
    n++;
  }
  if (n < nfds) return PFD_RX_DESC_FEWER;
  if (!(d[0] & 1) && nfds != 1) return PFD_RX_DESC_LIST;
  if (d[0] & 1) out->meta |= (unsigned long long)PFD_RX_FLAG_MANY << 8;
  if (all_fd && n > 0) out->meta |= (unsigned long long)PFD_RX_FLAG_ALL_FD << 8;
  out->start += 4 + (size_t)size;
  out->length -= 4 + size;
  return 0;
}

/* Hands out the frame at `rpos` (whole and judged). */
static long long pfd__rx_take(pfd_rx_t *rx, pfd_rx_frame_t *out) {
  pfd_frame_t f = {0, 0, 0, 0};
  long long total = pfd_frame_scan(rx->buf + rx->rpos, rx->walked - rx->rpos, rx->max_length, &f);
  int why = 0;
  out->meta = pfd__rx_meta(&f);
  out->length = f.length;
  out->start = rx->rpos + PFD_FRAME_HEADER_SIZE;
  if (f.nfds > 0) {
    /* (the oldest bound batch is this frame's: they were bound in stream order) */
    memcpy(out->fds, rx->owned[0].fds, sizeof(int) * f.nfds);
    rx->owned[0].n = 0;
    if (--rx->nowned) rx->owned[0] = rx->owned[1];
  }
  rx->rpos += (size_t)total;
  if (f.flags & PFD_FRAME_FLAG_HANDLES) {
    why = pfd__rx_describe(rx->buf, f.nfds, out);
  } else if (f.nfds > 0) {
    why = PFD_RX_DESC_NONE;
  }
  if (why) {
    int n = (int)f.nfds;
    pfd__rx_close(out->fds, &n); /* (handed out with the frame: nobody else closes them) */
    return pfd__rx_fail(rx, out, why, -EPROTO);
  }
  return rx->gen;
}

long long pfd_rx_next(pfd_rx_t *rx, int sock, int timeout_ms, pfd_rx_frame_t *out) {
  long long deadline = timeout_ms > 0 ? pfd__monotonic_us() + 1000LL * timeout_ms : 0;
  if (rx == NULL) return -EBADF; /* (closed: the channel freed it) */
  for (;;) {
    long long r;
    if (rx->state < 0) return -EPIPE;
    if (rx->rpos < rx->walked) return pfd__rx_take(rx, out);
    if (rx->state > 0) return 0;
    if (sock < 0) return -EAGAIN;
    r = pfd__rx_read(rx, sock, timeout_ms < 0, out);
    if (r == -EAGAIN && timeout_ms != 0) {
      long long left = -1;
      int w;
      if (timeout_ms > 0) {
        left = (deadline - pfd__monotonic_us() + 999) / 1000;
        if (left <= 0) return -EAGAIN;
      }
      w = pfd_fd_wait(sock, PFD_POLL_IN, (int)left);
      if (w < 0) return w;
      continue;
    }
    if (r < 0) return r;
  }
}

long long pfd_rx_batch(pfd_rx_t *rx, unsigned long long *out, size_t max) {
  size_t n = 0;
  if (rx == NULL || rx->state < 0) return 0;
  /* (recv_many's loop: every frame one read brought, for one call from Python) */
  while (n < max && rx->rpos < rx->walked) {
    pfd_frame_t f = {0, 0, 0, 0};
    long long total = pfd_frame_scan(rx->buf + rx->rpos, rx->walked - rx->rpos, rx->max_length, &f);
    if (f.nfds > 0 || (f.flags & PFD_FRAME_FLAG_HANDLES)) break;
    out[3 * n] = pfd__rx_meta(&f);
    out[3 * n + 1] = rx->rpos + PFD_FRAME_HEADER_SIZE;
    out[3 * n + 2] = f.length;
    rx->rpos += (size_t)total;
    n++;
  }
  return (long long)n;
}

int pfd_rx_ready(const pfd_rx_t *rx) { return rx->state >= 0 && rx->rpos < rx->walked; }

unsigned char *pfd_rx_buffer(const pfd_rx_t *rx, size_t *size) {
  *size = rx->cap;
  return rx->buf;
}
