/*
 * error.c - Windows error codes translated into the errno space of the whole core.
 *
 * Every public function returns -errno, on Windows too: a GetLastError() or WSA code goes
 * through pfd__win_errno, so that errors.c's one table names it ("ENOENT") and Python
 * raises the same exception class on every system.  Codes without a close errno become
 * -EINVAL only when they mean a bad argument; anything else unknown is -EIO, never 0.
 */
#include <errno.h>
#include <stdlib.h>
#include <winsock2.h>

#include "internal.h"

typedef struct pfd__win_entry_s {
  DWORD code;
  int err;
} pfd__win_entry_t;

static const pfd__win_entry_t pfd__win_table[] = {
    {ERROR_FILE_NOT_FOUND, ENOENT},
    {ERROR_PATH_NOT_FOUND, ENOENT},
    {ERROR_INVALID_DRIVE, ENOENT},
    {ERROR_BAD_NETPATH, ENOENT},
    {ERROR_BAD_PATHNAME, ENOENT},
    {ERROR_INVALID_NAME, ENOENT},
    {ERROR_MOD_NOT_FOUND, ENOENT},
    {ERROR_DIRECTORY, ENOTDIR},
    {ERROR_TOO_MANY_OPEN_FILES, EMFILE},
    {ERROR_ACCESS_DENIED, EACCES},
    {ERROR_SHARING_VIOLATION, EBUSY},
    {ERROR_LOCK_VIOLATION, EBUSY},
    {ERROR_INVALID_HANDLE, EBADF},
    {ERROR_NOT_ENOUGH_MEMORY, ENOMEM},
    {ERROR_OUTOFMEMORY, ENOMEM},
    {ERROR_COMMITMENT_LIMIT, ENOMEM},
    {ERROR_NOT_ENOUGH_QUOTA, ENOMEM},
    {ERROR_INVALID_PARAMETER, EINVAL},
    {ERROR_INVALID_FLAGS, EINVAL},
    {ERROR_INVALID_DATA, EINVAL},
    {ERROR_BAD_EXE_FORMAT, ENOEXEC},
    {ERROR_EXE_MACHINE_TYPE_MISMATCH, ENOEXEC},
    {ERROR_BAD_FORMAT, ENOEXEC},
    {ERROR_FILE_EXISTS, EEXIST},
    {ERROR_ALREADY_EXISTS, EEXIST},
    {ERROR_FILENAME_EXCED_RANGE, ENAMETOOLONG},
    {ERROR_BROKEN_PIPE, EPIPE},
    {ERROR_NO_DATA, EPIPE},
    {ERROR_PIPE_NOT_CONNECTED, EPIPE},
    {ERROR_BAD_PIPE, EPIPE},
    {ERROR_PIPE_BUSY, EBUSY},
    {ERROR_SEM_TIMEOUT, ETIMEDOUT},
    {WAIT_TIMEOUT, ETIMEDOUT},
    {ERROR_TIMEOUT, ETIMEDOUT},
    {ERROR_OPERATION_ABORTED, EINTR},
    {ERROR_IO_PENDING, EAGAIN},
    {ERROR_NOT_SUPPORTED, ENOTSUP},
    {ERROR_CALL_NOT_IMPLEMENTED, ENOSYS},
    {ERROR_DISK_FULL, ENOSPC},
    {ERROR_HANDLE_DISK_FULL, ENOSPC},
    {ERROR_DIR_NOT_EMPTY, ENOTEMPTY},
    {ERROR_NOACCESS, EFAULT},
    {ERROR_INVALID_ADDRESS, EFAULT},
    {ERROR_PRIVILEGE_NOT_HELD, EPERM},
    {ERROR_CANT_RESOLVE_FILENAME, ELOOP},
    {ERROR_BUFFER_OVERFLOW, ENAMETOOLONG},
    {ERROR_INSUFFICIENT_BUFFER, ENOBUFS},
    {ERROR_NO_UNICODE_TRANSLATION, EILSEQ},
    {740 /* ERROR_ELEVATION_REQUIRED */, EACCES},
    {WSAEINTR, EINTR},
    {WSAEBADF, EBADF},
    {WSAEACCES, EACCES},
    {WSAEFAULT, EFAULT},
    {WSAEINVAL, EINVAL},
    {WSAEMFILE, EMFILE},
    {WSAEWOULDBLOCK, EAGAIN},
    {WSAEINPROGRESS, EINPROGRESS},
    {WSAEALREADY, EALREADY},
    {WSAENOTSOCK, ENOTSOCK},
    {WSAEDESTADDRREQ, EDESTADDRREQ},
    {WSAEMSGSIZE, EMSGSIZE},
    {WSAEPROTOTYPE, EPROTOTYPE},
    {WSAENOPROTOOPT, ENOPROTOOPT},
    {WSAEPROTONOSUPPORT, EPROTONOSUPPORT},
    {WSAEOPNOTSUPP, EOPNOTSUPP},
    {WSAEAFNOSUPPORT, EAFNOSUPPORT},
    {WSAEADDRINUSE, EADDRINUSE},
    {WSAEADDRNOTAVAIL, EADDRNOTAVAIL},
    {WSAENETDOWN, ENETDOWN},
    {WSAENETUNREACH, ENETUNREACH},
    {WSAENETRESET, ENETRESET},
    {WSAECONNABORTED, ECONNABORTED},
    {WSAECONNRESET, ECONNRESET},
    {WSAENOBUFS, ENOBUFS},
    {WSAEISCONN, EISCONN},
    {WSAENOTCONN, ENOTCONN},
    {WSAESHUTDOWN, EPIPE},
    {WSAETIMEDOUT, ETIMEDOUT},
    {WSAECONNREFUSED, ECONNREFUSED},
    {WSAEHOSTUNREACH, EHOSTUNREACH},
};

int pfd__win_errno(DWORD code) {
  size_t i;
  if (code == ERROR_SUCCESS) return -EIO; /* an error was reported without a code */
  for (i = 0; i < sizeof pfd__win_table / sizeof pfd__win_table[0]; i++) {
    if (pfd__win_table[i].code == code) return -pfd__win_table[i].err;
  }
  return -EIO;
}

int pfd__win_last_errno(void) { return pfd__win_errno(GetLastError()); }

wchar_t *pfd__utf16(const char *utf8, int *err) {
  int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, utf8, -1, NULL, 0);
  wchar_t *out;
  if (n <= 0) {
    *err = pfd__win_last_errno();
    return NULL;
  }
  out = malloc((size_t)n * sizeof(wchar_t));
  if (out == NULL) {
    *err = -ENOMEM;
    return NULL;
  }
  if (MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, utf8, -1, out, n) != n) {
    *err = pfd__win_last_errno();
    free(out);
    return NULL;
  }
  return out;
}
