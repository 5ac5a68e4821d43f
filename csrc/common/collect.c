/*
 * collect.c - the exec output collector's buffers (collect.h): growth and max_buffer,
 * the same on every platform.  Reading, writing and waiting are unix/process.c's and
 * win/process.c's.
 */
#include <errno.h>
#include <stdlib.h>

#include "collect.h"

int pfd__collect_room(pfd_collect_t *c, int i, char **at, size_t *room) {
  pfd_buffer_t *b = &c->out[i];
  if (b->capacity - b->size < PFD__READ_CHUNK) {
    size_t cap = b->capacity ? b->capacity * 2 : 4 * PFD__READ_CHUNK;
    char *data;
    while (cap - b->size < PFD__READ_CHUNK) cap *= 2;
    data = realloc(b->data, cap);
    if (data == NULL) return -ENOMEM;
    b->data = data;
    b->capacity = cap;
  }
  *at = b->data + b->size;
  *room = b->capacity - b->size;
  return 0;
}

int pfd__collect_took(pfd_collect_t *c, int i, size_t n) {
  pfd_buffer_t *b = &c->out[i];
  b->size += n;
  if (c->max_buffer != 0 && b->size > c->max_buffer) {
    /* The read that went over stays whole (at most one chunk more): the caller cuts it,
     * in bytes or, once decoded, in characters. */
    c->overflow = i + 1;
    return -ENOBUFS;
  }
  return 0;
}

void pfd__collect_free(pfd_collect_t *c) {
  int i;
  for (i = 0; i < 2; i++) {
    free(c->out[i].data);
    c->out[i].data = NULL;
    c->out[i].size = c->out[i].capacity = 0;
  }
}
