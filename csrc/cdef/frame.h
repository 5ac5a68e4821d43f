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

/* Splits the bytes at `buf` into the whole frames at their start, up to `max_frames`: for
 * frame i, out[2i] = kind | flags << 8 | nfds << 24 and out[2i+1] = the payload's length
 * (the frames lie back to back from buf).  *count is how many were found.  Returns the
 * bytes they take (a partial frame after them is left), or what pfd_frame_scan returns for
 * a bad header: then out[2 * *count] and out[2 * *count + 1] describe that header as far as
 * it was read (zeros before its 16th byte). */
long long pfd_frame_split(const unsigned char *buf, size_t size, unsigned long long max_length,
                          unsigned long long *out, size_t max_frames, size_t *count);

/* Writes `n` frames of `kind` back to back at `out` (room for n headers plus the payloads):
 * frame i's payload is the next lengths[i] bytes of `payloads`, which lie back to back. */
void pfd_frame_pack(unsigned char *out, unsigned int kind, const unsigned char *payloads,
                    const unsigned long long *lengths, size_t n);
