/* The pyforkd binary frame (csrc/common/frame.c): a 16-byte little-endian header, then the
 * payload.  Descriptors travel beside the bytes (fdpass.c), attached to the frame's first
 * byte; the header says how many. */

enum {
  PFD_FRAME_HEADER_SIZE = 16,
  PFD_FRAME_MAGIC = 0x4650,    /* the bytes 'P' 'F' */
  PFD_FRAME_VERSION = 1,
  PFD_FRAME_MAX_FDS = 253      /* Linux's SCM_MAX_FD: the most one sendmsg can carry */
};

/* What the payload holds. */
enum {
  PFD_FRAME_PICKLE = 1,
  PFD_FRAME_JSON = 2,
  PFD_FRAME_RAW = 3,
  PFD_FRAME_CONTROL = 4,       /* the channel's own messages, never shown to the user */
  PFD_FRAME_RING = 5           /* a channel over rings: its set-up, or its records while they
                                  go over the socket (pyforkd/ring.py) */
};

enum {
  PFD_FRAME_FLAG_HANDLES = 1,  /* the payload starts with a description of the attached
                                  descriptors: u32 length, then that many bytes (frame.c) */
  PFD_FRAME_FLAGS_KNOWN = 1    /* any other bit is refused */
};

typedef struct pfd_frame_s {
  unsigned int kind;
  unsigned int flags;
  unsigned int nfds;
  unsigned long long length;   /* of the payload */
} pfd_frame_t;

/* Writes the 16-byte header for `frame` to `out`. */
void pfd_frame_encode(const pfd_frame_t *frame, unsigned char *out);

/* Looks at the bytes at `buf`: fills *frame from a valid header as soon as its 16 bytes are
 * there, before any payload has arrived, so a bad or oversized header is refused before
 * anything is allocated for it.  Returns the whole frame's size (header + payload) when it
 * is all in `buf`, 0 when more bytes are needed, or -EBADMSG (bad magic), -EPROTO (unknown
 * version), -EINVAL (unknown kind or flags, too many descriptors), -EMSGSIZE (payload
 * longer than max_length). */
long long pfd_frame_scan(const unsigned char *buf, size_t size, unsigned long long max_length,
                         pfd_frame_t *frame);

/* Writes `n` frames of `kind` back to back at `out` (room for n headers plus the payloads):
 * frame i's payload is the next lengths[i] bytes of `payloads`, which lie back to back. */
void pfd_frame_pack(unsigned char *out, unsigned int kind, const unsigned char *payloads,
                    const unsigned long long *lengths, size_t n);

/* The receive state machine of one channel (frame.c).  It owns a receive buffer: one
 * recvmsg may bring many frames, and each call hands out the next whole one, binding to it
 * the descriptors that came with its first byte.  Not thread-safe: one reader at a time. */
typedef struct pfd_rx_s pfd_rx_t;

/* Why a call returned -EPROTO: the stream broke a rule about descriptors, or ended. */
enum {
  PFD_RX_FDS_COUNT = 1,      /* a frame declares `nfds` descriptors but `got` came with it */
  PFD_RX_FDS_UNCLAIMED = 2,  /* descriptors came with a frame that declares none */
  PFD_RX_FDS_MIDDLE = 3,     /* descriptors came in the middle of a frame */
  PFD_RX_FDS_TOO_MANY = 4,   /* more than PFD_FRAME_MAX_FDS came at once (all closed) */
  PFD_RX_END_MIDDLE = 5,     /* the peer closed the stream in the middle of a frame */
  /* A frame's handle description is wrong (see frame.c): */
  PFD_RX_DESC_NONE = 6,      /* descriptors came and the frame does not describe them */
  PFD_RX_DESC_SHORT = 7,     /* the description runs past the frame, or is empty */
  PFD_RX_DESC_FLAGS = 8,     /* unknown description flags (`got` holds them) */
  PFD_RX_DESC_KIND = 9,      /* an unknown handle kind (`got` holds it) */
  PFD_RX_DESC_FILE = 10,     /* a file's mode or encoding is cut short or not ASCII */
  PFD_RX_DESC_FEWER = 11,    /* fewer handles are described than descriptors came */
  PFD_RX_DESC_MORE = 12,     /* more handles are described than descriptors came */
  PFD_RX_DESC_LIST = 13      /* several descriptors came, but not described as a list */
};

/* Bits pfd_rx_next adds to a described frame's flags (in `meta`), parsed from its
 * description: no frame on the wire carries them. */
enum {
  PFD_RX_FLAG_MANY = 0x4000,   /* the sender passed a list of handles */
  PFD_RX_FLAG_ALL_FD = 0x8000  /* every handle is a plain descriptor (kind 'd') */
};

typedef struct pfd_rx_frame_s {
  unsigned long long meta;   /* kind | flags << 8 | nfds << 24 (a bad header: as far as read) */
  unsigned long long length; /* the payload's length (a bad header: what it declares) */
  size_t start;              /* the payload is buffer[start:start + length] */
  int why;                   /* after -EPROTO: PFD_RX_* */
  int got;                   /* PFD_RX_FDS_COUNT: how many came; DESC_FLAGS, DESC_KIND: the byte */
  int fds[253];              /* the frame's nfds descriptors, now the caller's */
  /* A frame with handles (flag PFD_FRAME_FLAG_HANDLES): its description, parsed.  `start`
   * and `length` then give the message after it. */
  unsigned char kinds[253];  /* per descriptor: 'd', 's', 'g' or 'f' */
  size_t texts[253];         /* a file's: where its mode is in the buffer (u8 length + ASCII,
                                its encoding next, the same way) */
} pfd_rx_frame_t;

/* A new state machine for frames whose payload is at most max_length, or NULL (ENOMEM).
 * Its buffer is allocated at the first read. */
pfd_rx_t *pfd_rx_new(unsigned long long max_length);

/* The next whole frame.  When none is buffered it reads `sock` (pass -1 to read nothing):
 * timeout_ms < 0 waits for one, 0 reads what is there, > 0 waits at most that long.
 * Returns the buffer's generation (>= 1; it changes whenever the buffer moves, see
 * pfd_rx_buffer) with *out filled, the payload valid until the next call; 0 at the end of
 * the stream (every call after it too); -EAGAIN when no frame is whole in time; -EINTR when
 * a signal came; a bad header's pfd_frame_scan error (out->meta and out->length say what it
 * read); -EPROTO (out->why says what); or the system call's -errno.  A frame with
 * handles comes with its description parsed and checked (kinds, texts, the
 * PFD_RX_FLAG_* bits in meta) and start/length past it.  After an error every
 * descriptor it held is closed and every later call returns -EPIPE. */
long long pfd_rx_next(pfd_rx_t *rx, int sock, int timeout_ms, pfd_rx_frame_t *out);

/* The whole frames already buffered, up to `max`, that carry no descriptors: for frame i,
 * out[3i] = its meta, out[3i+1] = its payload's start and out[3i+2] = its length, as
 * pfd_rx_next gives them (valid until the next call).  It stops before a frame with
 * descriptors or a handle description (pfd_rx_next hands that one out).  Reads nothing.  Returns how many. */
long long pfd_rx_batch(pfd_rx_t *rx, unsigned long long *out, size_t max);

/* Whether a whole frame is buffered (pfd_rx_next would return it without reading). */
int pfd_rx_ready(const pfd_rx_t *rx);

/* The buffer (*size bytes) that frames' `start` refers to, as of the last pfd_rx_next. */
unsigned char *pfd_rx_buffer(const pfd_rx_t *rx, size_t *size);

/* Frees `rx` and closes every descriptor it still holds. */
void pfd_rx_free(pfd_rx_t *rx);
