/*
 * fdpass.c - bytes and handles over a channel pipe, on Windows (cdef/fdpass.h).
 *
 * Unix passes descriptors beside the bytes (SCM_RIGHTS); Windows has no such thing.  A
 * channel here is a duplex overlapped named pipe (spawn.c makes one for a PIPE slot above
 * 2), and every send is one frame in libuv's IPC format, so that a Node process at the
 * other end reads it as its own (the same layout as libuv's src/win/pipe.c):
 *
 *   u32 flags       1 data follows, 2 a socket follows, 4 it is a TCP connection
 *                   (pyforkd adds 0x100: a handle follows)
 *   u32 reserved    ignored
 *   u32 data length 0 when there is none
 *   u32 reserved    must be 0
 *   [632 bytes: WSAPROTOCOL_INFOW + u32 delayed error]   with flag 2
 *   [u64: the handle's value in the receiver]             with flag 0x100
 *   data
 *
 * A socket is described for the receiver (WSADuplicateSocketW) and the receiver makes its
 * own from the description; any other handle is copied straight into the receiver
 * (DuplicateHandle) and its value sent.  A frame carries one of them at most, as libuv's
 * do: a send of n handles writes n - 1 frames with a handle and no data, then the frame
 * with the data and the last handle, all in one write.  The receiver queues what comes
 * without data and hands the queue out with the next data byte, as recvmsg hands out
 * SCM_RIGHTS.  The receiving side keeps, per pipe, how much of the current frame is
 * still to come and the handles queued (a small table).
 *
 * Sends write the whole frame, waiting for the reader when the pipe's buffer is full
 * (Windows offers no "would block" for a pipe write); receives and waits never block
 * without PFD_FD_BLOCK or a timeout.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <winsock2.h>

#include "internal.h"

#include <tlhelp32.h>

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

/* NtQueryInformationFile's answer for FilePipeLocalInformation (ntifs.h, not in the SDK's
 * user-mode headers): NamedPipeState 4 (FILE_PIPE_CLOSING_STATE) once the other end is
 * closed, even while unread data is left in the pipe. */
typedef struct {
  ULONG type, configuration, max_instances, instances, inbound_quota, read_available,
      outbound_quota, write_available, state, end;
} pfd__pipe_local_info_t;
typedef struct {
  LONG_PTR status;
  ULONG_PTR information;
} pfd__io_status_t;
typedef LONG(WINAPI *pfd__query_file_t)(HANDLE, pfd__io_status_t *, void *, ULONG, int);
enum { PFD__FILE_PIPE_LOCAL_INFORMATION = 24, PFD__FILE_PIPE_CLOSING_STATE = 4 };

/* 1 when the other end of the pipe is closed, unread data or not; 0 while it is open. */
static int pfd__win_peer_closed(HANDLE h) {
  static pfd__query_file_t query;
  pfd__pipe_local_info_t info;
  pfd__io_status_t status;
  int r = pfd__win_pipe_closed(h);
  if (r != 0) return r;
  if (query == NULL) {
    HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
    FARPROC found = ntdll != NULL ? GetProcAddress(ntdll, "NtQueryInformationFile") : NULL;
    if (found == NULL) return 0; /* (always there) */
    query = (pfd__query_file_t)(void (*)(void))found;
  }
  memset(&info, 0, sizeof info);
  if (query(h, &status, &info, sizeof info, PFD__FILE_PIPE_LOCAL_INFORMATION) < 0) return 0;
  return info.state == PFD__FILE_PIPE_CLOSING_STATE;
}

int pfd_fd_wait_hangup(int sock, int timeout_ms) {
  /* Windows offers no wait for "the peer closed" that reads nothing: look every 10 ms.
   * (Only the ring calls this, with a timeout of 0, between its own timed sleeps.)  The
   * pipe may still hold the peer's last messages: as POLLRDHUP, that is a hang-up too. */
  ULONGLONG deadline = GetTickCount64() + (ULONGLONG)(timeout_ms < 0 ? 0 : timeout_ms);
  for (;;) {
    int r = pfd__win_peer_closed(PFD__HANDLE(sock));
    if (r != 0) return r;
    if (timeout_ms >= 0 && GetTickCount64() >= deadline) return 0;
    Sleep(10);
  }
}

/* ---- frames ----------------------------------------------------------------------------- */

enum {
  PFD__IPC_HAS_DATA = 0x01,
  PFD__IPC_HAS_SOCKET = 0x02,
  PFD__IPC_IS_TCP_CONNECTION = 0x04,
  PFD__IPC_HAS_HANDLE = 0x100, /* pyforkd's: never sent to a Node peer (it cannot send one) */
  PFD__IPC_VALID = 0x107,
  PFD__IPC_HEADER = 16,
  PFD__IPC_SOCKET_INFO = 632, /* sizeof(WSAPROTOCOL_INFOW) + a u32 error, as libuv */
  PFD__IPC_HANDLE_INFO = 8
};

/* What a pipe's receiver has of the frame it is in. */
typedef struct pfd__win_rx_s {
  HANDLE pipe;
  unsigned char head[PFD__IPC_HEADER + PFD__IPC_SOCKET_INFO]; /* header + transfer info */
  size_t head_got, head_need; /* head_need 0: between frames */
  unsigned long long data_left;
  int pending[PFD_FRAME_MAX_FDS]; /* received handles, for the next data byte */
  int npending;
  int overflow;               /* more came than fit in `pending` (all closed): truncated */
  DWORD peer;                 /* the process at the other end, once known */
  HANDLE shut;                /* manual-reset, set by pfd_fd_shutdown: waits end on it */
  volatile LONG is_shut;      /* the same, for the checks of every send and receive */
} pfd__win_rx_t;

static SRWLOCK pfd__win_rx_lock = SRWLOCK_INIT;
static pfd__win_rx_t **pfd__win_rx; /* each entry allocated alone: its address stays */
static size_t pfd__win_rx_count, pfd__win_rx_cap;

/* The pipe's receive state (made on first use); NULL when out of memory.  A receive runs
 * under the caller's lock per channel, so the entry itself needs no lock. */
static pfd__win_rx_t *pfd__win_rx_for(HANDLE pipe) {
  pfd__win_rx_t *found = NULL;
  size_t i;
  AcquireSRWLockExclusive(&pfd__win_rx_lock);
  for (i = 0; i < pfd__win_rx_count && found == NULL; i++) {
    if (pfd__win_rx[i]->pipe == pipe) found = pfd__win_rx[i];
  }
  if (found == NULL && pfd__win_rx_count == pfd__win_rx_cap) {
    size_t cap = pfd__win_rx_cap ? pfd__win_rx_cap * 2 : 16;
    pfd__win_rx_t **grown = realloc(pfd__win_rx, cap * sizeof *grown);
    if (grown != NULL) {
      pfd__win_rx = grown;
      pfd__win_rx_cap = cap;
    }
  }
  if (found == NULL && pfd__win_rx_count < pfd__win_rx_cap &&
      (found = calloc(1, sizeof *found)) != NULL) {
    found->pipe = pipe;
    found->shut = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (found->shut == NULL) {
      free(found);
      found = NULL;
    } else {
      pfd__win_rx[pfd__win_rx_count++] = found;
    }
  }
  ReleaseSRWLockExclusive(&pfd__win_rx_lock);
  return found;
}

/* Closes a socket or any other handle. */
static int pfd__win_close_any(int fd) {
  if (closesocket((SOCKET)(intptr_t)fd) == 0) return 0;
  if (WSAGetLastError() != WSAENOTSOCK && WSAGetLastError() != WSANOTINITIALISED) {
    return pfd__win_errno((DWORD)WSAGetLastError());
  }
  return CloseHandle(PFD__HANDLE(fd)) ? 0 : pfd__win_last_errno();
}

/* Closes the handles queued for the next data byte. */
static void pfd__win_drop_pending(pfd__win_rx_t *rx) {
  int i;
  for (i = 0; i < rx->npending; i++) pfd__win_close_any(rx->pending[i]);
  rx->npending = 0;
  rx->overflow = 0;
}

void pfd__win_pipe_forget(int pipe) {
  size_t i;
  AcquireSRWLockExclusive(&pfd__win_rx_lock);
  for (i = 0; i < pfd__win_rx_count; i++) {
    pfd__win_rx_t *rx = pfd__win_rx[i];
    if (rx->pipe == PFD__HANDLE(pipe)) {
      pfd__win_drop_pending(rx);
      CloseHandle(rx->shut);
      free(rx);
      pfd__win_rx[i] = pfd__win_rx[--pfd__win_rx_count];
      break;
    }
  }
  ReleaseSRWLockExclusive(&pfd__win_rx_lock);
}

void pfd__win_pipe_peer(int pipe, DWORD pid) {
  pfd__win_rx_t *rx = pfd__win_rx_for(PFD__HANDLE(pipe));
  if (rx != NULL) rx->peer = pid;
}

/* This process's parent (Windows keeps no getppid: the process snapshot tells). */
static DWORD pfd__win_parent_pid(void) {
  PROCESSENTRY32W entry;
  DWORD me = GetCurrentProcessId(), parent = 0;
  HANDLE snap = CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0);
  if (snap == INVALID_HANDLE_VALUE) return 0;
  entry.dwSize = sizeof entry;
  if (Process32FirstW(snap, &entry)) {
    do {
      if (entry.th32ProcessID == me) parent = entry.th32ParentProcessID;
    } while (parent == 0 && Process32NextW(snap, &entry));
  }
  CloseHandle(snap);
  return parent;
}

/* The process at the other end of the pipe: the one spawn.c recorded for a pipe it made
 * for a child, else (a child's own channel) this process's parent, as libuv does.  Both
 * ends of a pipe spawn.c made were opened by the parent, so the pipe itself cannot tell. */
static int pfd__win_peer(HANDLE pipe, DWORD *pid) {
  pfd__win_rx_t *rx = pfd__win_rx_for(pipe);
  if (rx == NULL) return -ENOMEM;
  if (rx->peer == 0) rx->peer = pfd__win_parent_pid();
  if (rx->peer == 0) return -ESRCH;
  *pid = rx->peer;
  return 0;
}

static int pfd__win_is_socket(int handle) {
  int type = 0, len = sizeof type;
  return getsockopt((SOCKET)(intptr_t)handle, SOL_SOCKET, SO_TYPE, (char *)&type, &len) == 0;
}

static int pfd__win_is_listening(int handle) {
  BOOL listening = FALSE;
  int len = sizeof listening;
  return getsockopt((SOCKET)(intptr_t)handle, SOL_SOCKET, SO_ACCEPTCONN, (char *)&listening,
                    &len) == 0 &&
         listening;
}

/* Whether pfd_fd_shutdown was called on the pipe: a flag, read without a system call (a
 * wait that starts just before it is set still ends, on the event). */
static int pfd__win_is_shut(const pfd__win_rx_t *rx) {
  return rx != NULL && InterlockedCompareExchange((volatile LONG *)&rx->is_shut, 0, 0) != 0;
}

/* One whole overlapped (or plain) read or write of `size` bytes; blocks until done, or
 * until the pipe is shut down (`rx`'s event; then -EPIPE, the I/O cancelled and over). */
static int pfd__win_io(HANDLE h, void *buf, DWORD size, int writing, DWORD *done,
                       const pfd__win_rx_t *rx) {
  OVERLAPPED ov;
  BOOL ok;
  int err = 0;
  memset(&ov, 0, sizeof ov);
  ov.hEvent = CreateEventW(NULL, TRUE, FALSE, NULL);
  if (ov.hEvent == NULL) return pfd__win_last_errno();
  ok = writing ? WriteFile(h, buf, size, done, &ov) : ReadFile(h, buf, size, done, &ov);
  if (!ok && GetLastError() == ERROR_IO_PENDING) {
    HANDLE both[2];
    both[0] = ov.hEvent;
    both[1] = rx != NULL ? rx->shut : ov.hEvent;
    if (WaitForMultipleObjects(2, both, FALSE, INFINITE) == WAIT_OBJECT_0 + 1) {
      (void)CancelIoEx(h, &ov);
      (void)GetOverlappedResult(h, &ov, done, TRUE); /* over before `ov` goes */
      CloseHandle(ov.hEvent);
      return -EPIPE;
    }
    ok = GetOverlappedResult(h, &ov, done, TRUE);
  }
  if (!ok) err = pfd__win_last_errno();
  CloseHandle(ov.hEvent);
  return err;
}

static int pfd__win_write_all(HANDLE h, const unsigned char *p, size_t size,
                              const pfd__win_rx_t *rx) {
  while (size > 0) {
    DWORD chunk = size > 0x40000000u ? 0x40000000u : (DWORD)size, done = 0;
    int err = pfd__win_io(h, (void *)p, chunk, 1, &done, rx);
    if (err < 0) return err;
    p += done;
    size -= done;
  }
  return 0;
}

/* Closes handle `remote` in process `pid` (a copy made for a frame that is not sent). */
static void pfd__win_handle_recall(DWORD pid, long long remote) {
  HANDLE target = OpenProcess(PROCESS_DUP_HANDLE, FALSE, pid);
  if (target == NULL) return; /* gone: its handles went with it */
  (void)DuplicateHandle(target, (HANDLE)(intptr_t)remote, NULL, NULL, 0, FALSE,
                        DUPLICATE_CLOSE_SOURCE);
  CloseHandle(target);
}

/* Writes frame i's header and transfer information at `out` (libuv's layout): a socket is
 * described for `peer`, another handle copied into it.  Returns the bytes written, or
 * -errno; *remote gets a copied handle's value there (else -1). */
static long pfd__win_xfer(unsigned char *out, DWORD peer, int handle, uint32_t length,
                          long long *remote) {
  uint32_t fl = length > 0 ? PFD__IPC_HAS_DATA : 0, zero = 0;
  long extra;
  int err;
  *remote = -1;
  if (pfd__win_is_socket(handle)) {
    memset(out + PFD__IPC_HEADER, 0, PFD__IPC_SOCKET_INFO);
    err = pfd__win_socket_send(peer, (unsigned long long)(intptr_t)handle,
                               out + PFD__IPC_HEADER, PFD__IPC_SOCKET_INFO);
    /* libuv's two kinds: a connection (it reads the socket as one) or a server. */
    fl |= PFD__IPC_HAS_SOCKET | (pfd__win_is_listening(handle) ? 0 : PFD__IPC_IS_TCP_CONNECTION);
    extra = PFD__IPC_SOCKET_INFO;
  } else {
    long long value = 0;
    err = pfd__win_handle_send(peer, handle, 0, &value);
    if (err == 0) *remote = value;
    memcpy(out + PFD__IPC_HEADER, &value, 8);
    fl |= PFD__IPC_HAS_HANDLE;
    extra = PFD__IPC_HANDLE_INFO;
  }
  if (err < 0) return err;
  memcpy(out, &fl, 4);
  memcpy(out + 4, &zero, 4);
  memcpy(out + 8, &length, 4);
  memcpy(out + 12, &zero, 4);
  return PFD__IPC_HEADER + extra;
}

long pfd_fd_send(int sock, const void *head, size_t head_size, const void *body,
                 size_t body_size, const int *fds, int nfds, int flags) {
  HANDLE pipe = PFD__HANDLE(sock);
  unsigned char one[PFD__IPC_HEADER + PFD__IPC_SOCKET_INFO], *frames = one;
  long long *remote = NULL;
  uint32_t length;
  size_t used = 0;
  DWORD peer = 0;
  int err = 0, i, made = 0;
  pfd__win_rx_t *rx = pfd__win_rx_for(pipe);
  (void)flags; /* a pipe write always completes (see the top of this file) */
  if (nfds < 0 || nfds > PFD_FRAME_MAX_FDS || (nfds > 0 && fds == NULL)) return -EINVAL;
  if (pfd__win_is_shut(rx)) return -EPIPE;
  if (head_size + body_size > 0xFFFFFFFFu) return -EMSGSIZE;
  length = (uint32_t)(head_size + body_size);
  if (nfds > 0) {
    if ((err = pfd__win_peer(pipe, &peer)) < 0) return err;
    if (nfds > 1 && (frames = malloc((size_t)nfds * sizeof one)) == NULL) return -ENOMEM;
    if ((remote = malloc((size_t)nfds * sizeof *remote)) == NULL) err = -ENOMEM;
    /* Every handle is copied before anything is written: a failure sends nothing. */
    for (i = 0; i < nfds && err == 0; i++, made++) {
      long n = pfd__win_xfer(frames + used, peer, fds[i], i == nfds - 1 ? length : 0,
                             &remote[i]);
      if (n < 0) err = (int)n; else used += (size_t)n;
    }
  } else {
    uint32_t fl = length > 0 ? PFD__IPC_HAS_DATA : 0, zero = 0;
    memcpy(one, &fl, 4);
    memcpy(one + 4, &zero, 4);
    memcpy(one + 8, &length, 4);
    memcpy(one + 12, &zero, 4);
    used = PFD__IPC_HEADER;
  }
  /* The channel's send lock keeps the three writes of one message together. */
  if (err == 0 && ((err = pfd__win_write_all(pipe, frames, used, rx)) < 0 ||
                   (err = pfd__win_write_all(pipe, head, head_size, rx)) < 0 ||
                   (err = pfd__win_write_all(pipe, body, body_size, rx)) < 0)) {
    made = 0; /* written (or half): the copies are the peer's now */
  }
  if (err < 0 && remote != NULL) {
    for (i = 0; i < made; i++) {
      if (remote[i] != -1) pfd__win_handle_recall(peer, remote[i]);
    }
  }
  if (frames != one) free(frames);
  free(remote);
  return err < 0 ? err : (long)length;
}

/* Bytes readable now (0 none), or 0 with *eof when the peer has closed, or -errno. */
static long long pfd__win_available(HANDLE pipe, int *eof) {
  DWORD avail = 0;
  *eof = 0;
  if (PeekNamedPipe(pipe, NULL, 0, NULL, &avail, NULL)) return avail;
  if (pfd__win_pipe_closed(pipe) == 1) {
    *eof = 1;
    return 0;
  }
  return pfd__win_last_errno();
}

/* Reads up to `want` bytes: what is there, or (blocking) at least one; 0 at EOF (and once
 * the pipe is shut down here). */
static long long pfd__win_read_some(HANDLE pipe, void *buf, size_t want, int block,
                                    const pfd__win_rx_t *rx) {
  int eof, err;
  DWORD done = 0;
  long long avail;
  if (pfd__win_is_shut(rx)) return 0;
  avail = pfd__win_available(pipe, &eof);
  if (avail < 0) return avail;
  if (eof) return 0;
  if (avail == 0 && !block) return -EAGAIN;
  if (avail > 0 && (unsigned long long)avail < want) want = (size_t)avail;
  if (want > 0x40000000u) want = 0x40000000u;
  err = pfd__win_io(pipe, buf, (DWORD)want, 0, &done, rx);
  if (err == -EPIPE) return 0; /* the peer closed (or shut down here): the end of the stream */
  if (err < 0) return err;
  return done;
}

long pfd_fd_recv(int sock, void *buf, size_t size, int *fds, int max_fds, int *nfds,
                 int flags) {
  HANDLE pipe = PFD__HANDLE(sock);
  int block = (flags & PFD_FD_BLOCK) != 0;
  pfd__win_rx_t *rx;
  long long n;
  *nfds = 0;
  if (max_fds < 0 || max_fds > PFD_FRAME_MAX_FDS) return -EINVAL;
  if ((rx = pfd__win_rx_for(pipe)) == NULL) return -ENOMEM;
  for (;;) {
    uint32_t fl, reserved2, length;
    if (rx->data_left > 0) break;
    /* Between frames, or in a header: read the rest of it. */
    if (rx->head_need == 0) rx->head_need = PFD__IPC_HEADER;
    while (rx->head_got < rx->head_need) {
      n = pfd__win_read_some(pipe, rx->head + rx->head_got, rx->head_need - rx->head_got, block,
                             rx);
      if (n == 0) return rx->head_got == 0 ? 0 : -EPIPE; /* EOF; or inside a frame */
      if (n < 0) return (long)n;
      rx->head_got += (size_t)n;
    }
    memcpy(&fl, rx->head, 4);
    memcpy(&length, rx->head + 8, 4);
    memcpy(&reserved2, rx->head + 12, 4);
    if ((fl & ~(uint32_t)PFD__IPC_VALID) != 0 || reserved2 != 0 ||
        ((fl & PFD__IPC_HAS_DATA) != 0) != (length != 0) ||
        ((fl & PFD__IPC_HAS_SOCKET) && (fl & PFD__IPC_HAS_HANDLE))) {
      return -EBADMSG;
    }
    if (rx->head_need == PFD__IPC_HEADER && (fl & (PFD__IPC_HAS_SOCKET | PFD__IPC_HAS_HANDLE))) {
      rx->head_need += (fl & PFD__IPC_HAS_SOCKET) ? PFD__IPC_SOCKET_INFO : PFD__IPC_HANDLE_INFO;
      continue; /* the transfer information follows */
    }
    if (fl & (PFD__IPC_HAS_SOCKET | PFD__IPC_HAS_HANDLE)) {
      unsigned long long value;
      if (fl & PFD__IPC_HAS_SOCKET) {
        int err = pfd__win_socket_receive(rx->head + PFD__IPC_HEADER, PFD__IPC_SOCKET_INFO,
                                          &value);
        if (err < 0) return err;
      } else {
        long long v;
        memcpy(&v, rx->head + PFD__IPC_HEADER, 8);
        value = (unsigned long long)v;
      }
      if (rx->npending < PFD_FRAME_MAX_FDS) {
        rx->pending[rx->npending++] = (int)(intptr_t)value;
      } else {
        pfd__win_close_any((int)(intptr_t)value);
        rx->overflow = 1;
      }
    }
    rx->head_got = rx->head_need = 0;
    rx->data_left = length; /* a frame with no data: its handle waits for the next byte */
  }
  n = pfd__win_read_some(pipe, buf, size < rx->data_left ? size : (size_t)rx->data_left, block,
                         rx);
  if (n == 0) return -EPIPE; /* the peer closed inside a frame */
  if (n < 0) return (long)n;
  rx->data_left -= (unsigned long long)n;
  if (rx->npending > 0 || rx->overflow) {
    if (!rx->overflow && rx->npending <= max_fds) {
      memcpy(fds, rx->pending, (size_t)rx->npending * sizeof *fds);
      *nfds = rx->npending;
      rx->npending = 0;
    } else {
      pfd__win_drop_pending(rx);
      *nfds = PFD_FD_TRUNCATED;
    }
  }
  return (long)n;
}

/* Waits until the pipe has data or is closed, at most timeout_ms (< 0: no limit): a
 * zero-byte overlapped read completes then (libuv's "zero read").  1, 0 on timeout, or
 * -errno; -ENOSYS when the handle is not overlapped (the read completed at once). */
static int pfd__win_zero_read(HANDLE pipe, int timeout_ms, const pfd__win_rx_t *rx) {
  OVERLAPPED ov;
  HANDLE both[2];
  DWORD done = 0, r;
  char none[1];
  int result = 1;
  memset(&ov, 0, sizeof ov);
  ov.hEvent = CreateEventW(NULL, TRUE, FALSE, NULL);
  if (ov.hEvent == NULL) return pfd__win_last_errno();
  if (ReadFile(pipe, none, 0, &done, &ov)) {
    result = -ENOSYS;
  } else if (GetLastError() == ERROR_BROKEN_PIPE) {
    result = 1; /* closed: the next receive says so */
  } else if (GetLastError() != ERROR_IO_PENDING) {
    result = pfd__win_last_errno();
  } else {
    both[0] = ov.hEvent;
    both[1] = rx != NULL ? rx->shut : ov.hEvent;
    r = WaitForMultipleObjects(2, both, FALSE, timeout_ms < 0 ? INFINITE : (DWORD)timeout_ms);
    if (r == WAIT_OBJECT_0 + 1) { /* shut down here: ready (the receive says the end) */
      (void)CancelIoEx(pipe, &ov);
    } else if (r == WAIT_TIMEOUT) {
      result = 0;
      (void)CancelIoEx(pipe, &ov);
    } else if (r != WAIT_OBJECT_0) {
      result = pfd__win_last_errno();
      (void)CancelIoEx(pipe, &ov);
    }
    (void)GetOverlappedResult(pipe, &ov, &done, TRUE); /* the read is over before `ov` goes */
  }
  CloseHandle(ov.hEvent);
  return result;
}

int pfd_fd_wait(int sock, int events, int timeout_ms) {
  HANDLE pipe = PFD__HANDLE(sock);
  ULONGLONG deadline = GetTickCount64() + (ULONGLONG)(timeout_ms < 0 ? 0 : timeout_ms);
  if (events & PFD_POLL_OUT) return 1; /* a pipe write always completes */
  for (;;) {
    int eof, r;
    ULONGLONG now;
    pfd__win_rx_t *rx = pfd__win_rx_for(pipe);
    long long avail = pfd__win_available(pipe, &eof);
    if (avail < 0) return (int)avail;
    if (pfd__win_is_shut(rx)) return 1; /* the next receive sees the end */
    if (avail > 0 || eof) return 1;
    now = GetTickCount64();
    if (timeout_ms >= 0 && now >= deadline) return 0;
    r = pfd__win_zero_read(pipe, timeout_ms < 0 ? -1 : (int)(deadline - now), rx);
    if (r == -ENOSYS) {
      Sleep(1); /* a handle opened without FILE_FLAG_OVERLAPPED: look again */
    } else if (r <= 0) {
      return r;
    }
  }
}

int pfd__win_duplex_pipe(HANDLE *ours, HANDLE *theirs, int overlapped) {
  DWORD async = (overlapped & PFD__PIPE_OURS_OVERLAPPED) ? FILE_FLAG_OVERLAPPED : 0;
  DWORD their_async = (overlapped & PFD__PIPE_THEIRS_OVERLAPPED) ? FILE_FLAG_OVERLAPPED : 0;
  static volatile LONG counter;
  wchar_t name[96];
  _snwprintf(name, sizeof name / sizeof name[0], L"\\\\.\\pipe\\pyforkd-%lu-%ld-%llu",
             (unsigned long)GetCurrentProcessId(), (long)InterlockedIncrement(&counter),
             (unsigned long long)GetTickCount64());
  name[sizeof name / sizeof name[0] - 1] = L'\0';
  *ours = CreateNamedPipeW(name,
                           PIPE_ACCESS_DUPLEX | async | FILE_FLAG_FIRST_PIPE_INSTANCE,
                           PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT |
                               PIPE_REJECT_REMOTE_CLIENTS,
                           1, 65536, 65536, 0, NULL);
  if (*ours == INVALID_HANDLE_VALUE) return pfd__win_last_errno();
  *theirs = CreateFileW(name, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING,
                        their_async, NULL);
  if (*theirs == INVALID_HANDLE_VALUE) {
    int err = pfd__win_last_errno();
    CloseHandle(*ours);
    return err;
  }
  return 0;
}

int pfd_fd_pair(int out[2]) {
  HANDLE a, b;
  int err = pfd__win_duplex_pipe(&a, &b,
                                 PFD__PIPE_OURS_OVERLAPPED | PFD__PIPE_THEIRS_OVERLAPPED);
  if (err < 0) return err;
  /* Both ends in this process: a handle sent on either goes to this process (until
   * pfd_fd_peer says otherwise: one end was handed to another process). */
  {
    pfd__win_rx_t *ra = pfd__win_rx_for(a), *rb = pfd__win_rx_for(b);
    if (ra == NULL || rb == NULL) {
      pfd__win_pipe_forget(PFD__FD(a));
      pfd__win_pipe_forget(PFD__FD(b));
      CloseHandle(a);
      CloseHandle(b);
      return -ENOMEM;
    }
    ra->peer = rb->peer = GetCurrentProcessId();
  }
  out[0] = PFD__FD(a);
  out[1] = PFD__FD(b);
  return 0;
}

int pfd_fd_peer(int fd, int pid) {
  pfd__win_rx_t *rx;
  if (pid <= 0) return -EINVAL;
  if ((rx = pfd__win_rx_for(PFD__HANDLE(fd))) == NULL) return -ENOMEM;
  rx->peer = (DWORD)pid;
  return 0;
}

int pfd_fd_release(int fd) {
  pfd__win_pipe_forget(fd);
  return 0;
}

int pfd_socket_nosigpipe(int sock) {
  (void)sock;
  return 0; /* Windows has no SIGPIPE */
}

int pfd_fd_close(int fd) {
  pfd__win_pipe_forget(fd);
  return pfd__win_close_any(fd);
}

int pfd_fd_shutdown(int fd) {
  pfd__win_rx_t *rx = pfd__win_rx_for(PFD__HANDLE(fd));
  if (rx == NULL) return -ENOMEM;
  /* Waits of this process on the pipe end on the event; no new one starts after it. */
  InterlockedExchange(&rx->is_shut, 1);
  if (!SetEvent(rx->shut)) return pfd__win_last_errno();
  return 0;
}
