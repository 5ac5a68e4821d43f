/*
 * dispatch.c - the cluster's connection dispatcher on Windows (cdef/dispatch.h).  Who gets
 * which connection, and where those of a worker that went down go, is common/handoff.c's
 * table, shared with unix/dispatch.c; this file is the thread, accepting and sleeping.
 *
 * A worker's channel is a duplex overlapped named pipe (the ones spawn.c makes), and each
 * hand-off a libuv IPC frame carrying the connection's WSADuplicateSocketW description for
 * the process at the other end of the pipe (fdpass.c).
 *
 * Sleeping.  The thread waits in WaitForMultipleObjects on two events: `wake` (set by the
 * API, and on behalf of the workers) and the listening socket's FD_ACCEPT event
 * (WSAEventSelect).  The workers have no place in that wait, which takes 64 handles at
 * most: each has a zero-byte overlapped read outstanding on its pipe (libuv's "zero
 * read", which completes when an acknowledgement arrives or the worker hangs up), whose
 * event the thread pool watches (RegisterWaitForSingleObject) to set `wake`.  The thread
 * then looks at which reads completed, reads the acknowledgements and starts a new read.
 *
 * A pipe write cannot answer "would block": it waits until the reader has made room.  So a
 * worker is given no more hand-offs at once than its pipe's buffer holds (each one not yet
 * acknowledged is at most one frame there, unread): a stuck worker never stalls the thread.
 *
 * Removal.  Unix shuts the worker's socket down and then reads the acknowledgements it
 * sent before, so every acknowledgement either arrives or fails in the worker.  A pipe
 * cannot be half-closed: here removal reads what is there and then closes the pipe (in
 * the thread, which remove() waits for), so the worker's next acknowledgement fails and
 * it drops that connection.  One written in the instant between the last read and the
 * close is lost with the pipe, and its connection goes to another worker as well (a
 * worker that has exited, the usual case, loses none).
 *
 * Windows has no fork, and spawn.c hands a child only the handles it lists, so nothing
 * here needs the Unix file's at-fork care.
 */
#include <errno.h>
#include <process.h>
#include <stdlib.h>
#include <string.h>
#include <winsock2.h>

#include "internal.h"
#include "../common/handoff.h"

/* The largest hand-off frame: libuv's 16-byte header, the 632-byte socket description and
 * the 8-byte sequence number (fdpass.c). */
#define PFD__WIN_HANDOFF_FRAME (16 + 632 + PFD__MSG)

/* What the thread keeps for a worker's zero read. */
typedef struct {
  OVERLAPPED ov;
  HANDLE ready;   /* ov's event: auto-reset, so the thread pool's wait takes it once */
  HANDLE wait;    /* the thread pool's wait on `ready`, or NULL */
  int reading;    /* a zero read is outstanding */
  int cut;        /* pfd_dispatch_remove waits for the thread to close this pipe */
  char none[1];
} pfd__win_reader_t;

struct pfd_dispatch_s {
  CRITICAL_SECTION lock;
  HANDLE thread;
  int started, stopping;
  SOCKET listen;
  HANDLE accept_event; /* FD_ACCEPT on the listening socket */
  HANDLE wake;         /* auto-reset */
  pfd__table_t t;
  pfd__win_reader_t **readers; /* one per slot of t.workers, each allocated alone: the
                                * kernel writes into a reader's OVERLAPPED until its read
                                * is over, so a reader never moves */
  int nreaders;
  CONDITION_VARIABLE closed; /* a pipe that remove() asked for was closed */
};

/* Runs in the thread pool when a worker's zero read completes: only wakes the thread
 * (no lock is taken here, so the thread may wait for this callback under its lock). */
static void CALLBACK pfd__win_ready(void *arg, BOOLEAN timed_out) {
  (void)timed_out;
  SetEvent((HANDLE)arg);
}

/* Reads the worker's acknowledgements that are there; a hang-up or garbage takes it
 * down. */
static void pfd__read_acks(pfd_dispatch_t *d, pfd__worker_t *w) {
  unsigned char buf[PFD__MSG * 64];
  for (;;) {
    int fds[1], nfds = 0;
    long n = pfd_fd_recv(w->sock, buf, sizeof buf, fds, 1, &nfds, 0);
    if (n == -EAGAIN) return;
    if (nfds > 0) (void)pfd_fd_close(fds[0]); /* a worker sends no handles: broken */
    if (n <= 0 || nfds != 0 || pfd__table_acks(&d->t, w, buf, (size_t)n) < 0) {
      pfd__table_worker_down(&d->t, w);
      return;
    }
  }
}

/* Reads what the worker sent and leaves a zero read outstanding (unless it went down). */
static void pfd__win_listen_to(pfd_dispatch_t *d, int slot) {
  pfd__worker_t *w = &d->t.workers[slot];
  pfd__win_reader_t *r = d->readers[slot];
  DWORD done;
  if (r->reading) {
    if (!HasOverlappedIoCompleted(&r->ov)) return;
    (void)GetOverlappedResult(PFD__HANDLE(w->sock), &r->ov, &done, FALSE);
    r->reading = 0;
  }
  while (w->live) {
    pfd__read_acks(d, w);
    if (!w->live) return;
    memset(&r->ov, 0, sizeof r->ov);
    r->ov.hEvent = r->ready;
    if (ReadFile(PFD__HANDLE(w->sock), r->none, 0, &done, &r->ov)) continue; /* data came */
    if (GetLastError() == ERROR_IO_PENDING) {
      r->reading = 1;
      return;
    }
    if (GetLastError() != ERROR_MORE_DATA) { /* broken: the next read says how */
      pfd__read_acks(d, w);
      if (w->live) pfd__table_worker_down(&d->t, w);
      return;
    }
  }
}

/* Closes a worker's pipe: the thread pool's wait goes (UnregisterWaitEx waits for a
 * running callback), then the zero read is cancelled and over, so that the handle and
 * the slot can be reused.  In that order: while the pool waits on the auto-reset event
 * it could take the completion's signal from GetOverlappedResult, which would then wait
 * for ever.  Only the thread that started the zero read calls this while one is
 * outstanding (wine completes a read in the thread that started it: another thread
 * waiting for it while the dispatcher thread waits for the lock would wait for ever), so
 * remove() has the thread cut a worker's pipe, and waits.
 * A worker still live (being removed) keeps what it acknowledged up to the close; the
 * rest of its connections go to the others. */
static void pfd__win_close_worker(pfd_dispatch_t *d, int slot) {
  pfd__worker_t *w = &d->t.workers[slot];
  pfd__win_reader_t *r = d->readers[slot];
  if (r->wait != NULL) (void)UnregisterWaitEx(r->wait, INVALID_HANDLE_VALUE);
  r->wait = NULL;
  if (r->reading) {
    DWORD done;
    (void)CancelIoEx(PFD__HANDLE(w->sock), &r->ov);
    (void)GetOverlappedResult(PFD__HANDLE(w->sock), &r->ov, &done, TRUE);
    r->reading = 0;
  }
  if (w->live) pfd__read_acks(d, w);
  if (r->ready != NULL) CloseHandle(r->ready);
  r->ready = NULL;
  (void)pfd_fd_close(w->sock);
  w->sock = -1;
  if (w->live) pfd__table_worker_down(&d->t, w);
  if (r->cut) {
    r->cut = 0;
    WakeAllConditionVariable(&d->closed);
  }
}

/* An accepted connection as a worker should get it: blocking, not inherited by children,
 * with no part in the listening socket's event selection (accept() copies both). */
static int pfd__win_accept(pfd_dispatch_t *d, SOCKET *conn) {
  u_long blocking = 0;
  SOCKET s = accept(d->listen, NULL, NULL);
  if (s == INVALID_SOCKET) return pfd__win_errno((DWORD)WSAGetLastError());
  if (WSAEventSelect(s, NULL, 0) != 0 || ioctlsocket(s, FIONBIO, &blocking) != 0) {
    int err = pfd__win_errno((DWORD)WSAGetLastError());
    (void)closesocket(s);
    return err;
  }
  (void)SetHandleInformation((HANDLE)s, HANDLE_FLAG_INHERIT, 0);
  *conn = s;
  return 0;
}

static void pfd__accept_batch(pfd_dispatch_t *d) {
  int i;
  for (i = 0; i < PFD__ACCEPT_BATCH && d->t.qlen < PFD__QUEUE_MAX; i++) {
    SOCKET conn = INVALID_SOCKET;
    int err = pfd__win_accept(d, &conn);
    if (err == -ECONNRESET || err == -ECONNABORTED || err == -EINTR) continue;
    if (err == -EAGAIN) return;
    if (err < 0) {
      d->t.accept_errors++;
      if (err == -EMFILE || err == -ENFILE || err == -ENOBUFS || err == -ENOMEM) {
        d->t.accept_paused = 1; /* until an acknowledgement frees a descriptor */
      }
      return;
    }
    d->t.accepted++;
    (void)pfd__table_push(&d->t, (int)(intptr_t)conn, 0); /* room: the loop condition */
    pfd__table_flush(&d->t);
  }
}

static unsigned __stdcall pfd__run(void *arg) {
  pfd_dispatch_t *d = arg;
  int i;
  EnterCriticalSection(&d->lock);
  for (;;) {
    HANDLE events[2];
    DWORD n = 0, r;
    int accepting, paused;
    if (d->stopping) break;
    for (i = 0; i < d->t.nslots; i++) {
      pfd__worker_t *w = &d->t.workers[i];
      if (w->sock >= 0 && w->live && !d->readers[i]->cut) pfd__win_listen_to(d, i);
      if (w->sock >= 0 && (!w->live || d->readers[i]->cut)) pfd__win_close_worker(d, i);
    }
    pfd__table_flush(&d->t);
    events[n++] = d->wake;
    accepting = d->t.qlen < PFD__QUEUE_MAX && !d->t.accept_paused;
    if (accepting) events[n++] = d->accept_event;
    paused = d->t.accept_paused;
    LeaveCriticalSection(&d->lock);
    /* Paused accepting (no descriptors): look again every 100 ms. */
    r = WaitForMultipleObjects(n, events, FALSE, paused ? 100 : INFINITE);
    EnterCriticalSection(&d->lock);
    if (r == WAIT_TIMEOUT) d->t.accept_paused = 0;
    if (r == WAIT_FAILED) { /* cannot happen with these handles; do not spin if it does */
      LeaveCriticalSection(&d->lock);
      Sleep(10);
      EnterCriticalSection(&d->lock);
    }
    if (accepting && r == WAIT_OBJECT_0 + 1) {
      WSANETWORKEVENTS seen;
      (void)WSAEnumNetworkEvents(d->listen, d->accept_event, &seen); /* resets the event */
      pfd__accept_batch(d);
    }
  }
  for (i = 0; i < d->t.nslots; i++) { /* the zero reads are this thread's to end */
    if (d->t.workers[i].sock >= 0) pfd__win_close_worker(d, i);
  }
  LeaveCriticalSection(&d->lock);
  return 0;
}

int pfd_dispatch_new(pfd_dispatch_t **out, int listen_fd, unsigned max_inflight) {
  pfd_dispatch_t *d;
  int err;
  *out = NULL;
  if (listen_fd < 0) return -EINVAL;
  d = calloc(1, sizeof(*d));
  if (d == NULL) return -ENOMEM;
  d->listen = (SOCKET)(intptr_t)listen_fd;
  d->t.max_inflight = max_inflight ? max_inflight : PFD_DISPATCH_DEFAULT_INFLIGHT;
  d->accept_event = WSACreateEvent();
  d->wake = CreateEventW(NULL, FALSE, FALSE, NULL);
  if (d->accept_event == WSA_INVALID_EVENT || d->wake == NULL) {
    err = pfd__win_last_errno();
    goto error;
  }
  /* Makes the listening socket non-blocking too, as on Unix. */
  if (WSAEventSelect(d->listen, d->accept_event, FD_ACCEPT) != 0) {
    err = pfd__win_errno((DWORD)WSAGetLastError());
    goto error;
  }
  InitializeCriticalSection(&d->lock);
  InitializeConditionVariable(&d->closed);
  *out = d;
  return 0;
error:
  if (d->accept_event != WSA_INVALID_EVENT && d->accept_event != NULL) {
    WSACloseEvent(d->accept_event);
  }
  if (d->wake != NULL) CloseHandle(d->wake);
  free(d);
  return err;
}

int pfd_dispatch_start(pfd_dispatch_t *d) {
  int r = 0;
  EnterCriticalSection(&d->lock);
  if (d->started) {
    r = -EBUSY;
  } else {
    uintptr_t t = _beginthreadex(NULL, 0, pfd__run, d, 0, NULL);
    if (t == 0) {
      r = -errno;
    } else {
      d->thread = (HANDLE)t;
      d->started = 1;
    }
  }
  LeaveCriticalSection(&d->lock);
  return r;
}

/* How many hand-offs the pipe's buffer holds unread (at least 1). */
static unsigned pfd__win_pipe_room(HANDLE pipe) {
  DWORD out_size = 0, in_size = 0, flags = 0;
  unsigned room;
  if (!GetNamedPipeInfo(pipe, &flags, &out_size, &in_size, NULL)) return 1;
  /* The server end's outbound buffer carries our writes; a client end's, its inbound. */
  room = (unsigned)((flags & PIPE_SERVER_END ? out_size : in_size) / PFD__WIN_HANDOFF_FRAME);
  return room ? room : 1;
}

int pfd_dispatch_add(pfd_dispatch_t *d, int sock) {
  HANDLE pipe = PFD__HANDLE(sock);
  int slot;
  if (GetFileType(pipe) != FILE_TYPE_PIPE) return -EINVAL; /* the channel is a named pipe */
  EnterCriticalSection(&d->lock);
  slot = pfd__table_add(&d->t, sock, pfd__win_pipe_room(pipe));
  while (slot >= 0 && slot >= d->nreaders) {
    pfd__win_reader_t **grown = realloc(d->readers, sizeof(*grown) * (size_t)(d->nreaders + 1));
    pfd__win_reader_t *fresh = grown ? calloc(1, sizeof(*fresh)) : NULL;
    if (grown != NULL) d->readers = grown;
    if (fresh == NULL) {
      d->t.workers[slot].sock = -1; /* the slot stays free; the caller keeps the pipe */
      slot = -ENOMEM;
    } else {
      d->readers[d->nreaders++] = fresh;
    }
  }
  if (slot >= 0) {
    pfd__win_reader_t *r = d->readers[slot];
    memset(r, 0, sizeof *r);
    r->ready = CreateEventW(NULL, FALSE, FALSE, NULL);
    if (r->ready == NULL ||
        !RegisterWaitForSingleObject(&r->wait, r->ready, pfd__win_ready, d->wake, INFINITE,
                                     WT_EXECUTEINWAITTHREAD)) {
      int err = pfd__win_last_errno();
      if (r->ready != NULL) CloseHandle(r->ready);
      memset(r, 0, sizeof *r);
      d->t.workers[slot].sock = -1;
      slot = err;
    }
  }
  LeaveCriticalSection(&d->lock);
  if (slot >= 0) SetEvent(d->wake);
  return slot;
}

int pfd_dispatch_balance(pfd_dispatch_t *d, int mode) {
  if (mode != PFD_DISPATCH_ROUND_ROBIN && mode != PFD_DISPATCH_LEAST_CONN) return -EINVAL;
  EnterCriticalSection(&d->lock);
  d->t.balance = mode;
  LeaveCriticalSection(&d->lock);
  return 0;
}

int pfd_dispatch_load(pfd_dispatch_t *d, int slot, const unsigned long long *open) {
  pfd__worker_t *w;
  EnterCriticalSection(&d->lock);
  if ((w = pfd__table_live(&d->t, slot)) != NULL) w->open = open;
  LeaveCriticalSection(&d->lock);
  return w ? 0 : -ENOENT;
}

int pfd_dispatch_remove(pfd_dispatch_t *d, int slot) {
  pfd__worker_t *w;
  EnterCriticalSection(&d->lock);
  if ((w = pfd__table_live(&d->t, slot)) != NULL) {
    /* The pipe closes before this returns, so that the worker's next acknowledgement
     * fails; what it acknowledged up to then stays its own (see the top). */
    w->open = NULL; /* the caller may unmap or reuse that memory now */
    if (!d->started) {
      pfd__win_close_worker(d, slot); /* no thread: no zero read */
    } else {
      d->readers[slot]->cut = 1;
      SetEvent(d->wake);
      while (d->readers[slot]->cut) SleepConditionVariableCS(&d->closed, &d->lock, INFINITE);
    }
  }
  LeaveCriticalSection(&d->lock);
  return w ? 0 : -ENOENT;
}

int pfd_dispatch_stats(pfd_dispatch_t *d, int slot, unsigned long long out[4]) {
  int r;
  EnterCriticalSection(&d->lock);
  r = pfd__table_stats(&d->t, slot, out);
  LeaveCriticalSection(&d->lock);
  return r;
}

void pfd_dispatch_free(pfd_dispatch_t *d) {
  int i;
  if (d == NULL) return;
  EnterCriticalSection(&d->lock);
  d->stopping = 1;
  LeaveCriticalSection(&d->lock);
  SetEvent(d->wake);
  if (d->started) { /* the thread closes the workers' pipes as it ends */
    (void)WaitForSingleObject(d->thread, INFINITE);
    CloseHandle(d->thread);
  }
  for (i = 0; i < d->t.nslots; i++) {
    if (d->t.workers[i].sock >= 0) pfd__win_close_worker(d, i);
  }
  pfd__table_free(&d->t);
  for (i = 0; i < d->nreaders; i++) free(d->readers[i]);
  free(d->readers);
  (void)WSAEventSelect(d->listen, NULL, 0); /* the listening socket stays the caller's */
  WSACloseEvent(d->accept_event);
  CloseHandle(d->wake);
  DeleteCriticalSection(&d->lock);
  free(d);
}
