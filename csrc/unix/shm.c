/*
 * shm.c - anonymous shared memory, created here and passed to the peer as a descriptor.
 *
 * Linux: memfd_create with MFD_CLOEXEC | MFD_ALLOW_SEALING, sized with ftruncate, then
 * sealed against growing, shrinking and further sealing, so a peer that receives the
 * descriptor can map the whole size without fearing SIGBUS from a truncate.  macOS: a
 * shm_open object under a random name, unlinked at once (only the descriptor names it),
 * mode 0600.  Either way nothing is left in /dev/shm, whatever happens to the process.
 *
 * What it does not do: lay out a ring in the memory (ring.c), or pass the descriptor
 * (fdpass.c).
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef __APPLE__
#include <stdlib.h>
#include <time.h>
#endif

#include "internal.h"
#include "pyforkd.h"

/* Closes `fd` after a failed step: the step's -errno. */
static int pfd__close_keep_errno(int fd, int err) {
  pfd__close_quietly(fd);
  return -err;
}

#ifdef __linux__
int pfd_shm_create(const char *name, size_t size) {
  int fd;
  if (size == 0 || (off_t)size < 0) return -EINVAL;
  fd = memfd_create(name != NULL ? name : "pyforkd", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -errno;
  if (ftruncate(fd, (off_t)size) != 0) return pfd__close_keep_errno(fd, errno);
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return pfd__close_keep_errno(fd, errno);
  }
  return fd;
}
#else
int pfd_shm_create(const char *name, size_t size) {
  char path[64];
  int fd = -1, attempt, r;
  (void)name;
  if (size == 0 || (off_t)size < 0) return -EINVAL;
  for (attempt = 0; attempt < 100 && fd < 0; attempt++) {
    (void)snprintf(path, sizeof(path), "/pfd.%ld.%08lx", (long)getpid(),
                   (unsigned long)arc4random());
    fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0 && errno != EEXIST) return -errno;
  }
  if (fd < 0) return -EEXIST;
  (void)shm_unlink(path); /* from here on only the descriptor names it */
  if ((r = pfd__set_cloexec(fd)) < 0) return pfd__close_keep_errno(fd, -r);
  if (ftruncate(fd, (off_t)size) != 0) return pfd__close_keep_errno(fd, errno);
  return fd;
}
#endif

#ifdef __linux__
/* Memory that came from a peer is mapped whole: were it shrunk under the mapping, a read
 * past the new end would raise SIGBUS.  Only a memfd sealed against shrinking is taken. */
static int pfd__shm_check_sealed(int fd) {
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) return errno == EINVAL ? -EPERM : -errno; /* (EINVAL: not a memfd) */
  return (seals & F_SEAL_SHRINK) != 0 ? 0 : -EPERM;
}
#else
/* macOS has no seals.  A shm_open object takes one ftruncate only, so its size cannot
 * change after; a regular file passed off as one still could (not told apart here). */
static int pfd__shm_check_sealed(int fd) {
  (void)fd;
  return 0;
}
#endif

long long pfd_shm_size(int fd) {
  struct stat st;
  int r;
  if (fstat(fd, &st) != 0) return -errno;
  if (!S_ISREG(st.st_mode)) return -EINVAL; /* memfd and shm objects are regular files */
  r = pfd__shm_check_sealed(fd);
  if (r < 0) return r;
  return (long long)st.st_size;
}

int pfd_shm_map(int fd, size_t size, void **out) {
  void *addr;
  if (size == 0) return -EINVAL;
  addr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED) return -errno;
  *out = addr;
  return 0;
}

int pfd_shm_unmap(void *addr, size_t size) {
  if (munmap(addr, size) != 0) return -errno;
  return 0;
}
