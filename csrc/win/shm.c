/*
 * shm.c - anonymous shared memory on Windows: a pagefile-backed section.
 *
 * The same contract as csrc/unix/shm.c (cdef/shm.h): the "descriptor" is the section's
 * HANDLE, which travels to another process by inheritance or DuplicateHandle; no name is
 * ever created, so nothing outlives the last handle.  `name` only labels it on Unix.
 */
#include <errno.h>
#include <stdint.h>

#include "internal.h"

int pfd_shm_create(const char *name, size_t size) {
  HANDLE h;
  unsigned long long n = size;
  (void)name;
  if (size == 0) return -EINVAL;
  h = CreateFileMappingW(INVALID_HANDLE_VALUE, NULL, PAGE_READWRITE, (DWORD)(n >> 32),
                         (DWORD)(n & 0xFFFFFFFFu), NULL);
  if (h == NULL) return pfd__win_last_errno();
  return PFD__FD(h);
}

long long pfd_shm_size(int fd) {
  /* A section does not tell its size: a view of all of it does (rounded up to pages, as
   * every size pyforkd asks for already is). */
  MEMORY_BASIC_INFORMATION info;
  void *view = MapViewOfFile(PFD__HANDLE(fd), FILE_MAP_READ, 0, 0, 0);
  long long size;
  if (view == NULL) {
    DWORD e = GetLastError();
    return e == ERROR_INVALID_HANDLE ? -EINVAL : pfd__win_errno(e);
  }
  if (VirtualQuery(view, &info, sizeof info) == 0) {
    size = pfd__win_last_errno();
  } else {
    size = (long long)info.RegionSize;
  }
  if (!UnmapViewOfFile(view) && size >= 0) size = pfd__win_last_errno();
  return size;
}

int pfd_shm_map(int fd, size_t size, void **out) {
  void *view = MapViewOfFile(PFD__HANDLE(fd), FILE_MAP_ALL_ACCESS, 0, 0, size);
  if (view == NULL) return pfd__win_last_errno();
  *out = view;
  return 0;
}

int pfd_shm_unmap(void *addr, size_t size) {
  (void)size;
  return UnmapViewOfFile(addr) ? 0 : pfd__win_last_errno();
}
