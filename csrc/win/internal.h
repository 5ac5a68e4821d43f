/*
 * internal.h - what the Windows files of the C core share (never part of the public API).
 *
 * On Windows the core's "descriptors" are HANDLE values and its pids are process ids:
 * both fit in an int (64-bit Windows keeps kernel handles within 32 bits so that 32- and
 * 64-bit processes can share them), so the declarations of csrc/cdef/ serve unchanged.
 */
#ifndef PFD_WIN_INTERNAL_H
#define PFD_WIN_INTERNAL_H

#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>

#include "pyforkd.h"

/* A Windows error code (GetLastError, or a WSA code) as a negative errno value. */
int pfd__win_errno(DWORD code);

/* -errno for GetLastError() now. */
int pfd__win_last_errno(void);

/* The exit code a process killed by pfd_process_kill(sig) is given, and back: a code in
 * the NTSTATUS "customer" space that no program's exit() or crash produces. */
#define PFD__WIN_KILLED_MARK 0xE0504600u /* 0xE0 'P' 'F' sig */
#define PFD__WIN_KILLED(sig) (PFD__WIN_KILLED_MARK | ((unsigned)(sig) & 0xFFu))

/* UTF-8 to a new UTF-16 string (free() it); NULL with *err = -errno on failure. */
wchar_t *pfd__utf16(const char *utf8, int *err);

/* The command line CreateProcessW gets for argv (UTF-8): each argument quoted so that the
 * Microsoft C runtime splits it back exactly (spawn.c), or with `verbatim` the arguments
 * after argv[0] as they are (PFD_SPAWN_VERBATIM).  *out is malloc'd.  Returns 0, -EINVAL
 * (no argv[0], or a quote in it), -EILSEQ (not UTF-8) or -ENOMEM. */
int pfd__win_command_line(char *const *argv, int verbatim, wchar_t **out);

/* Handle passing (fdpass.c).  Copies `handle` into process `pid` and stores the value it
 * has there in *remote (DuplicateHandle; with `move`, this process's copy is closed in the
 * same step, whatever the outcome).  The receiver must be told the value, or its copy
 * leaks there.  Returns 0 or -errno. */
int pfd__win_handle_send(DWORD pid, int handle, int move, long long *remote);

/* Describes socket `sock` for process `pid` (WSADuplicateSocketW): the receiver makes its
 * own socket from `info` with pfd__win_socket_receive.  Returns 0 or -errno. */
int pfd__win_socket_send(DWORD pid, unsigned long long sock, void *info, size_t info_size);

/* The receiving side: a socket of this process from what pfd__win_socket_send wrote.
 * Returns 0 and *sock, or -errno. */
int pfd__win_socket_receive(const void *info, size_t info_size, unsigned long long *sock);

/* The size of what pfd__win_socket_send writes (a WSAPROTOCOL_INFOW). */
size_t pfd__win_socket_info_size(void);

/* Records the process at the other end of a channel pipe (spawn.c, for the pipes it makes
 * for a child; a child's own channel defaults to its parent). */
void pfd__win_pipe_peer(int pipe, DWORD pid);

/* One duplex named pipe (fdpass.c): *ours the server end, *theirs the client end, neither
 * inheritable.  `overlapped`: PFD__PIPE_OURS_OVERLAPPED and PFD__PIPE_THEIRS_OVERLAPPED say
 * which end is opened for overlapped I/O (both: a channel), the others are for plain
 * blocking reads and writes.  Returns 0 or -errno. */
enum { PFD__PIPE_OURS_OVERLAPPED = 1, PFD__PIPE_THEIRS_OVERLAPPED = 2 };
int pfd__win_duplex_pipe(HANDLE *ours, HANDLE *theirs, int overlapped);

/* Drops what fdpass.c keeps for a channel pipe (before the pipe is closed). */
void pfd__win_pipe_forget(int pipe);

/* int <-> HANDLE, as the core passes handles around. */
#define PFD__HANDLE(fd) ((HANDLE)(intptr_t)(fd))
#define PFD__FD(handle) ((int)(intptr_t)(handle))

/* The children this process started (spawn.c adds them, process.c uses and reaps them):
 * the process handle is kept until the child is reaped, so that its pid cannot be reused
 * meanwhile.  Returns 0 or -ENOMEM. */
int pfd__child_add(DWORD pid, HANDLE process);

/* The handle of a child still in the table (not a new one), or NULL. */
HANDLE pfd__child_handle(DWORD pid);

/* Removes a child from the table and closes its handle. */
void pfd__child_remove(DWORD pid);

#endif /* PFD_WIN_INTERNAL_H */
