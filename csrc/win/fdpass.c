/*
 * fdpass.c - the channel's byte pipe on Windows (cdef/fdpass.h).
 *
 * A pyforkd channel on Windows is a duplex overlapped named pipe (spawn.c makes one for a
 * PIPE slot above 2).  What is here so far: telling that the peer has closed its end,
 * which the ring uses before each sleep so that a dead peer cannot leave it waiting.
 * Sending and receiving frames with handles (DuplicateHandle / WSADuplicateSocketW into
 * the peer) are not written yet (README, "Platforms").
 */
#include <errno.h>

#include "internal.h"

/* 1 when the other end of the pipe is closed, 0 while it is open, or -errno. */
static int pfd__win_pipe_closed(HANDLE h) {
  DWORD avail = 0;
  if (PeekNamedPipe(h, NULL, 0, NULL, &avail, NULL)) return 0;
  switch (GetLastError()) {
    case ERROR_BROKEN_PIPE:
    case ERROR_PIPE_NOT_CONNECTED:
    case ERROR_NO_DATA:
      return 1;
    default:
      return pfd__win_last_errno();
  }
}

int pfd_fd_wait_hangup(int sock, int timeout_ms) {
  /* Windows offers no wait for "the peer closed" that reads nothing: look every 10 ms.
   * (Only the ring calls this, with a timeout of 0, between its own timed sleeps.) */
  ULONGLONG deadline = GetTickCount64() + (ULONGLONG)(timeout_ms < 0 ? 0 : timeout_ms);
  for (;;) {
    int r = pfd__win_pipe_closed(PFD__HANDLE(sock));
    if (r != 0) return r;
    if (timeout_ms >= 0 && GetTickCount64() >= deadline) return 0;
    Sleep(10);
  }
}
