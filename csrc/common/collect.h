/*
 * collect.h - the exec output collector's buffers, shared by unix/process.c and
 * win/process.c (internal to the C core; the loops that move the bytes are per platform).
 */
#ifndef PFD_COLLECT_H
#define PFD_COLLECT_H

#include "pyforkd.h"

/* How much room a read asks for at least. */
#define PFD__READ_CHUNK (64 * 1024)

/* Makes room for a read of at least PFD__READ_CHUNK bytes at the end of stream i's
 * buffer; *room gets where and how much.  Returns 0 or -ENOMEM. */
int pfd__collect_room(pfd_collect_t *c, int i, char **at, size_t *room);

/* Counts `n` bytes just read into stream i.  Returns 0, or -ENOBUFS when the stream went
 * over max_buffer (cut there, c->overflow set). */
int pfd__collect_took(pfd_collect_t *c, int i, size_t n);

/* Frees both streams' buffers (the descriptors are the platform's to close). */
void pfd__collect_free(pfd_collect_t *c);

#endif /* PFD_COLLECT_H */
