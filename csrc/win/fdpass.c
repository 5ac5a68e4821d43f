/*
 * fdpass.c - handles between processes, and the channel's byte pipe, on Windows.
 *
 * Unix passes descriptors beside the bytes (SCM_RIGHTS); Windows has no such thing.  A
 * handle is copied straight into the receiving process (DuplicateHandle, which needs the
 * receiver's process handle with PROCESS_DUP_HANDLE) and the receiver is told its value;
 * a socket is described for the receiver (WSADuplicateSocketW) and the receiver makes its
 * own from that description, as libuv does for Node.  A pyforkd channel on Windows is a
 * duplex overlapped named pipe (spawn.c makes one for a PIPE slot above 2); its peer
 * hang-up check is here too, for the ring.  Not written yet: the frames themselves over
 * the pipe (libuv's IPC framing) and the cdef/fdpass.h send/receive calls built on them
 * (README, "Platforms").
 */
#include <errno.h>
#include <string.h>
#include <winsock2.h>

#include "internal.h"

int pfd__win_handle_send(DWORD pid, int handle, int move, long long *remote) {
  HANDLE target = OpenProcess(PROCESS_DUP_HANDLE, FALSE, pid), copy = NULL;
  DWORD options = DUPLICATE_SAME_ACCESS | (move ? DUPLICATE_CLOSE_SOURCE : 0);
  int err = 0;
  if (target == NULL) {
    err = pfd__win_last_errno();
    if (move) CloseHandle(PFD__HANDLE(handle));
    return err;
  }
  if (!DuplicateHandle(GetCurrentProcess(), PFD__HANDLE(handle), target, &copy, 0, FALSE,
                       options)) {
    err = pfd__win_last_errno();
  } else {
    *remote = (long long)(intptr_t)copy;
  }
  CloseHandle(target);
  return err;
}

size_t pfd__win_socket_info_size(void) { return sizeof(WSAPROTOCOL_INFOW); }

int pfd__win_socket_send(DWORD pid, unsigned long long sock, void *info, size_t info_size) {
  if (info_size < sizeof(WSAPROTOCOL_INFOW)) return -EINVAL;
  if (WSADuplicateSocketW((SOCKET)sock, pid, (WSAPROTOCOL_INFOW *)info) != 0) {
    return pfd__win_errno((DWORD)WSAGetLastError());
  }
  return 0;
}

int pfd__win_socket_receive(const void *info, size_t info_size, unsigned long long *sock) {
  WSAPROTOCOL_INFOW copy;
  SOCKET s;
  if (info_size < sizeof copy) return -EINVAL;
  memcpy(&copy, info, sizeof copy);
  s = WSASocketW(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &copy, 0,
                 WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
  if (s == INVALID_SOCKET) return pfd__win_errno((DWORD)WSAGetLastError());
  *sock = (unsigned long long)s;
  return 0;
}

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
