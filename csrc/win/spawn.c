/*
 * spawn.c - starting a program on Windows: CreateProcessW with exactly the handles named.
 *
 * The same contract as csrc/unix/spawn.c (cdef/spawn.h), in Windows terms:
 *   - the command line is UTF-16, each argument quoted by the rules the Microsoft C
 *     runtime uses to split it again (pfd__win_quote), so that any argument (quotes,
 *     backslashes, spaces, unicode, empty) arrives as it was given;
 *   - a .bat/.cmd program is refused (PFD_STEP_BATCH): cmd.exe splits its command line by
 *     other rules, which no quoting makes safe (CVE-2024-27980); the shell option runs it;
 *   - the child inherits only its stdio handles (PROC_THREAD_ATTRIBUTE_HANDLE_LIST), never
 *     whatever else happens to be inheritable in this process; slots 3 and up reach the
 *     child's C runtime as descriptors through STARTUPINFO's lpReserved2, as libuv does;
 *   - unless detached, the child runs inside this process's kill-on-close Job Object: when
 *     this process ends, however it ends, its children end too (Linux's PDEATHSIG, for the
 *     whole tree).  It is started suspended and assigned before it runs a single line.
 * On failure nothing is left: no process, no handle.
 */
#include <errno.h>
#include <io.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#include "internal.h"

/* ---- quoting ------------------------------------------------------------------------- */

/* Appends `arg` quoted to out (when out is not NULL); returns the characters it takes.
 * The MSVC runtime's rules: 2n backslashes before a quote are n backslashes and the quote
 * ends or starts quoting, 2n+1 are n backslashes and a literal quote; backslashes not
 * before a quote are literal. */
static size_t pfd__win_quote_one(const wchar_t *arg, wchar_t *out) {
  size_t n = 0, slashes = 0;
  const wchar_t *p;
  if (*arg != L'\0' && wcspbrk(arg, L" \t\n\v\"") == NULL) {
    size_t len = wcslen(arg);
    if (out != NULL) memcpy(out, arg, len * sizeof(wchar_t));
    return len;
  }
#define PFD__PUT(c)                 \
  do {                              \
    if (out != NULL) out[n] = (c);  \
    n++;                            \
  } while (0)
  PFD__PUT(L'"');
  for (p = arg;; p++) {
    if (*p == L'\\') {
      slashes++;
      continue;
    }
    if (*p == L'\0' || *p == L'"') {
      /* Backslashes before the closing quote or a literal quote: doubled. */
      size_t i, twice = slashes * 2 + (*p == L'"');
      for (i = 0; i < twice; i++) PFD__PUT(L'\\');
      if (*p == L'\0') break;
      PFD__PUT(L'"');
    } else {
      for (; slashes > 0; slashes--) PFD__PUT(L'\\');
      PFD__PUT(*p);
    }
    slashes = 0;
  }
  PFD__PUT(L'"');
#undef PFD__PUT
  return n;
}

int pfd__win_command_line(char *const *argv, int verbatim, wchar_t **out) {
  size_t count = 0, total = 0, i, at = 0;
  wchar_t **wide;
  int err = 0;
  while (argv[count] != NULL) count++;
  if (count == 0) return -EINVAL;
  wide = calloc(count, sizeof(wchar_t *));
  if (wide == NULL) return -ENOMEM;
  for (i = 0; i < count; i++) {
    if ((wide[i] = pfd__utf16(argv[i], &err)) == NULL) goto done;
  }
  /* argv[0] is split by other rules (everything up to the next quote): it may not hold a
   * quote at all, which no Windows file name does. */
  if (wcschr(wide[0], L'"') != NULL) {
    err = -EINVAL;
    goto done;
  }
  for (i = 0; i < count; i++) {
    total += (verbatim && i > 0 ? wcslen(wide[i]) : pfd__win_quote_one(wide[i], NULL)) + 3;
  }
  if ((*out = malloc((total + 1) * sizeof(wchar_t))) == NULL) {
    err = -ENOMEM;
    goto done;
  }
  for (i = 0; i < count; i++) {
    if (i > 0) (*out)[at++] = L' ';
    if (i == 0 && *wide[0] != L'\0' && wcspbrk(wide[0], L" \t") == NULL) {
      size_t len = wcslen(wide[0]);
      memcpy(*out + at, wide[0], len * sizeof(wchar_t));
      at += len;
    } else if (i == 0) {
      size_t len = wcslen(wide[0]);
      (*out)[at++] = L'"';
      memcpy(*out + at, wide[0], len * sizeof(wchar_t));
      at += len;
      (*out)[at++] = L'"';
    } else if (verbatim) {
      size_t len = wcslen(wide[i]);
      memcpy(*out + at, wide[i], len * sizeof(wchar_t));
      at += len;
    } else {
      at += pfd__win_quote_one(wide[i], *out + at);
    }
  }
  (*out)[at] = L'\0';
done:
  for (i = 0; i < count; i++) free(wide[i]);
  free(wide);
  return err;
}

/* ---- finding the program --------------------------------------------------------------- */

static int pfd__win_is_file(const wchar_t *path) {
  DWORD attr = GetFileAttributesW(path);
  return attr != INVALID_FILE_ATTRIBUTES && !(attr & FILE_ATTRIBUTE_DIRECTORY);
}

static int pfd__win_ends_with(const wchar_t *s, const wchar_t *suffix) {
  size_t n = wcslen(s), m = wcslen(suffix);
  return n >= m && _wcsicmp(s + n - m, suffix) == 0;
}

static int pfd__win_is_batch(const wchar_t *path) {
  return pfd__win_ends_with(path, L".bat") || pfd__win_ends_with(path, L".cmd");
}

/* `base` as given, or with each of the extensions CreateProcess and cmd.exe would try
 * when it has none; the first that exists goes to *found (malloc'd). */
static int pfd__win_try(const wchar_t *base, wchar_t **found) {
  static const wchar_t *const exts[] = {L"", L".com", L".exe", L".bat", L".cmd"};
  const wchar_t *name = wcsrchr(base, L'\\');
  size_t i, len = wcslen(base);
  int has_ext;
  name = name != NULL ? name + 1 : base;
  has_ext = wcschr(name, L'.') != NULL;
  for (i = has_ext ? 0 : 1; i < sizeof exts / sizeof exts[0]; i++) {
    wchar_t *path = malloc((len + 5) * sizeof(wchar_t));
    if (path == NULL) return -ENOMEM;
    wcscpy(path, base);
    wcscat(path, exts[i]);
    if (pfd__win_is_file(path)) {
      *found = path;
      return 0;
    }
    free(path);
    if (has_ext) break;
  }
  return -ENOENT;
}

/* The PATH to search: the child's own (from envp) when given, else ours. */
static wchar_t *pfd__win_path_var(char *const *envp, int *err) {
  if (envp != NULL) {
    for (; *envp != NULL; envp++) {
      if (_strnicmp(*envp, "PATH=", 5) == 0) return pfd__utf16(*envp + 5, err);
    }
    return pfd__utf16("", err);
  } else {
    DWORD n = GetEnvironmentVariableW(L"PATH", NULL, 0);
    wchar_t *out = malloc((n + 1) * sizeof(wchar_t));
    if (out == NULL) {
      *err = -ENOMEM;
      return NULL;
    }
    if (n == 0 || GetEnvironmentVariableW(L"PATH", out, n + 1) == 0) out[0] = L'\0';
    return out;
  }
}

static int pfd__win_resolve(const char *file, char *const *envp, wchar_t **found, int *step) {
  int err = 0;
  wchar_t *wfile = pfd__utf16(file, &err), *path, *dir, *end;
  *step = PFD_STEP_RESOLVE;
  if (wfile == NULL) return err;
  if (*wfile == L'\0') {
    free(wfile);
    return -ENOENT;
  }
  if (wcspbrk(wfile, L"\\/:") != NULL) {
    err = pfd__win_try(wfile, found);
  } else {
    err = -ENOENT;
    if ((path = pfd__win_path_var(envp, &err)) != NULL) {
      err = -ENOENT;
      for (dir = path; dir != NULL; dir = end != NULL ? end + 1 : NULL) {
        size_t dlen;
        wchar_t *base;
        if ((end = wcschr(dir, L';')) != NULL) *end = L'\0';
        if ((dlen = wcslen(dir)) == 0) continue;
        base = malloc((dlen + wcslen(wfile) + 2) * sizeof(wchar_t));
        if (base == NULL) {
          err = -ENOMEM;
          break;
        }
        wcscpy(base, dir);
        if (dlen > 0 && dir[dlen - 1] != L'\\' && dir[dlen - 1] != L'/') wcscat(base, L"\\");
        wcscat(base, wfile);
        err = pfd__win_try(base, found);
        free(base);
        if (err != -ENOENT) break;
      }
      free(path);
    }
  }
  free(wfile);
  if (err == 0 && pfd__win_is_batch(*found)) {
    free(*found);
    *found = NULL;
    *step = PFD_STEP_BATCH;
    return -EINVAL;
  }
  return err;
}

/* ---- environment ----------------------------------------------------------------------- */

static int pfd__win_env_block(char *const *envp, wchar_t **out) {
  size_t total = 1, at = 0, i;
  int err = 0;
  for (i = 0; envp[i] != NULL; i++) {
    int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, envp[i], -1, NULL, 0);
    if (n <= 0) return pfd__win_last_errno();
    total += (size_t)n;
  }
  if ((*out = malloc(total * sizeof(wchar_t))) == NULL) return -ENOMEM;
  for (i = 0; envp[i] != NULL; i++) {
    int n = MultiByteToWideChar(CP_UTF8, 0, envp[i], -1, *out + at, (int)(total - at));
    if (n <= 0) {
      err = pfd__win_last_errno();
      free(*out);
      return err;
    }
    at += (size_t)n;
  }
  (*out)[at] = L'\0'; /* the block ends with an empty string */
  return 0;
}

/* ---- the job ----------------------------------------------------------------------------- */

static INIT_ONCE pfd__win_job_once = INIT_ONCE_STATIC_INIT;
static HANDLE pfd__win_job;
static DWORD pfd__win_job_error;

static BOOL CALLBACK pfd__win_job_create(PINIT_ONCE once, PVOID param, PVOID *context) {
  JOBOBJECT_EXTENDED_LIMIT_INFORMATION info;
  (void)once;
  (void)param;
  (void)context;
  pfd__win_job = CreateJobObjectW(NULL, NULL);
  if (pfd__win_job == NULL) {
    pfd__win_job_error = GetLastError();
    return TRUE;
  }
  memset(&info, 0, sizeof info);
  /* The handle is never closed on purpose: it closes when this process ends, and then
   * every child left in the job is killed.  Detached children break away. */
  info.BasicLimitInformation.LimitFlags =
      JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | JOB_OBJECT_LIMIT_BREAKAWAY_OK;
  if (!SetInformationJobObject(pfd__win_job, JobObjectExtendedLimitInformation, &info,
                               sizeof info)) {
    pfd__win_job_error = GetLastError();
    CloseHandle(pfd__win_job);
    pfd__win_job = NULL;
  }
  return TRUE;
}

static HANDLE pfd__win_job_get(int *err) {
  InitOnceExecuteOnce(&pfd__win_job_once, pfd__win_job_create, NULL, NULL);
  if (pfd__win_job == NULL) *err = pfd__win_errno(pfd__win_job_error);
  return pfd__win_job;
}

/* ---- stdio --------------------------------------------------------------------------------- */

/* The C runtime's flags for a descriptor handed over in lpReserved2. */
#define PFD__CRT_FOPEN 0x01
#define PFD__CRT_FPIPE 0x08
#define PFD__CRT_FDEV 0x40

/* The handle behind this process's C runtime descriptor `fd`, or INVALID_HANDLE_VALUE when
 * it is not open.  The UCRT (an MSVC build, as the wheels are) reports a bad descriptor to
 * its invalid-parameter handler, which ends the process by default: this thread gets a
 * handler that returns, for the one call.  mingw's msvcrt.dll just answers -1. */
#ifdef _MSC_VER
static void __cdecl pfd__win_ignore_parameter(const wchar_t *expression, const wchar_t *function,
                                              const wchar_t *file, unsigned int line,
                                              uintptr_t reserved) {
  (void)expression;
  (void)function;
  (void)file;
  (void)line;
  (void)reserved;
}

static HANDLE pfd__win_crt_handle(int fd) {
  _invalid_parameter_handler old =
      _set_thread_local_invalid_parameter_handler(pfd__win_ignore_parameter);
  intptr_t h = _get_osfhandle(fd);
  (void)_set_thread_local_invalid_parameter_handler(old);
  return (HANDLE)h;
}
#else
static HANDLE pfd__win_crt_handle(int fd) { return (HANDLE)_get_osfhandle(fd); }
#endif

/* The handle the child gets at `slot` (inheritable, ours to close after the start), or
 * NULL for none; for a PIPE, our end goes to *parent_end. */
static int pfd__win_slot(const pfd_stdio_t *s, int slot, int async_pipes, HANDLE *child,
                         HANDLE *parent_end, unsigned char *crt_flags, int *step) {
  HANDLE source = NULL, made = NULL;
  int err = 0;
  *child = NULL;
  *parent_end = NULL;
  *crt_flags = PFD__CRT_FOPEN;
  switch (s->kind) {
    case PFD_STDIO_INHERIT:
      source = PFD__HANDLE(s->fd);
      break;
    case PFD_STDIO_INHERIT_SAME:
      if (slot <= 2) {
        static const DWORD which[3] = {STD_INPUT_HANDLE, STD_OUTPUT_HANDLE, STD_ERROR_HANDLE};
        source = GetStdHandle(which[slot]);
      } else {
        source = pfd__win_crt_handle(slot);
      }
      if (source == INVALID_HANDLE_VALUE || source == NULL) return 0; /* closed here too */
      break;
    case PFD_STDIO_IGNORE:
      if (slot > 2) return 0;
      made = CreateFileW(L"NUL", GENERIC_READ | GENERIC_WRITE,
                         FILE_SHARE_READ | FILE_SHARE_WRITE, NULL, OPEN_EXISTING, 0, NULL);
      if (made == INVALID_HANDLE_VALUE) {
        *step = PFD_STEP_STDIO;
        return pfd__win_last_errno();
      }
      *crt_flags |= PFD__CRT_FDEV;
      break;
    case PFD_STDIO_PIPE:
      *step = PFD_STEP_PIPE;
      if (async_pipes && slot <= 2) { /* (named: an anonymous pipe cannot be overlapped) */
        if ((err = pfd__win_duplex_pipe(parent_end, &made, PFD__PIPE_OURS_OVERLAPPED)) < 0) {
          return err;
        }
      } else if (slot <= 2) {
        HANDLE r, w;
        if (!CreatePipe(&r, &w, NULL, 0)) return pfd__win_last_errno();
        made = slot == 0 ? r : w;
        *parent_end = slot == 0 ? w : r;
      } else if ((err = pfd__win_duplex_pipe(parent_end, &made, 0)) < 0) {
        return err;
      }
      *crt_flags |= PFD__CRT_FPIPE;
      break;
    case PFD_STDIO_CHANNEL:
      if (slot <= 2) {
        *step = PFD_STEP_STDIO;
        return -EINVAL;
      }
      *step = PFD_STEP_PIPE;
      err = pfd__win_duplex_pipe(parent_end, &made,
                                 PFD__PIPE_OURS_OVERLAPPED | PFD__PIPE_THEIRS_OVERLAPPED);
      if (err < 0) return err;
      *crt_flags |= PFD__CRT_FPIPE;
      break;
    case PFD_STDIO_CLOSE:
      return 0;
    default:
      *step = PFD_STEP_STDIO;
      return -EINVAL;
  }
  if (!DuplicateHandle(GetCurrentProcess(), made != NULL ? made : source, GetCurrentProcess(),
                       child, 0, TRUE, DUPLICATE_SAME_ACCESS)) {
    err = pfd__win_last_errno();
    *step = PFD_STEP_STDIO;
    *child = NULL;
    if (*parent_end != NULL) CloseHandle(*parent_end);
    *parent_end = NULL;
  }
  if (made != NULL) CloseHandle(made);
  if (err == 0 && GetFileType(*child) == FILE_TYPE_PIPE) *crt_flags |= PFD__CRT_FPIPE;
  if (err == 0 && GetFileType(*child) == FILE_TYPE_CHAR) *crt_flags |= PFD__CRT_FDEV;
  return err;
}

/* ---- the start ----------------------------------------------------------------------------- */

typedef struct pfd__win_start_s {
  wchar_t *app, *cmdline, *env, *cwd;
  HANDLE *child;       /* per slot (count entries), inheritable copies */
  HANDLE *parent_end;  /* per slot, for PIPE */
  unsigned char *crt;  /* lpReserved2: int count, count flag bytes, count handles */
  LPPROC_THREAD_ATTRIBUTE_LIST attrs;
  int count;
} pfd__win_start_t;

static void pfd__win_start_free(pfd__win_start_t *st, int keep_parent_ends) {
  int i;
  for (i = 0; i < st->count; i++) {
    if (st->child != NULL && st->child[i] != NULL) CloseHandle(st->child[i]);
    if (!keep_parent_ends && st->parent_end != NULL && st->parent_end[i] != NULL) {
      CloseHandle(st->parent_end[i]);
    }
  }
  if (st->attrs != NULL) {
    DeleteProcThreadAttributeList(st->attrs);
    free(st->attrs);
  }
  free(st->app);
  free(st->cmdline);
  free(st->env);
  free(st->cwd);
  free(st->child);
  free(st->parent_end);
  free(st->crt);
}

static int pfd__win_check_cwd(const wchar_t *cwd) {
  DWORD attr = GetFileAttributesW(cwd);
  if (attr == INVALID_FILE_ATTRIBUTES) return pfd__win_last_errno();
  return (attr & FILE_ATTRIBUTE_DIRECTORY) ? 0 : -ENOTDIR;
}

int pfd_spawn(const pfd_spawn_options_t *o, pfd_spawn_result_t *result) {
  pfd__win_start_t st;
  STARTUPINFOEXW si;
  PROCESS_INFORMATION pi;
  HANDLE *inherit = NULL, job = NULL;
  SIZE_T attr_size = 0;
  DWORD create;
  int err = 0, i, n_inherit = 0, detached = (o->flags & PFD_SPAWN_SETSID) != 0;
  memset(&st, 0, sizeof st);
  memset(result, 0, sizeof *result);
  result->pid = -1;
  result->slot = -1;
  result->step = PFD_STEP_NONE;
  if (o->file == NULL || o->argv == NULL || o->argv[0] == NULL || o->stdio_count < 0 ||
      o->stdio_count > 256 || (o->stdio_count > 0 && o->stdio == NULL)) {
    return -EINVAL;
  }
  if (o->flags & (PFD_SPAWN_SETUID | PFD_SPAWN_SETGID | PFD_SPAWN_PDEATHSIG)) return -ENOTSUP;
  if ((err = pfd__win_resolve(o->file, o->envp, &st.app, &result->step)) < 0) return err;
  result->step = PFD_STEP_NONE;
  if ((err = pfd__win_command_line(o->argv, (o->flags & PFD_SPAWN_VERBATIM) != 0, &st.cmdline)) < 0) goto fail;
  if (o->envp != NULL && (err = pfd__win_env_block(o->envp, &st.env)) < 0) goto fail;
  if (o->cwd != NULL) {
    if ((st.cwd = pfd__utf16(o->cwd, &err)) == NULL || (err = pfd__win_check_cwd(st.cwd)) < 0) {
      result->step = PFD_STEP_CHDIR;
      goto fail;
    }
  }
  if (!detached && (job = pfd__win_job_get(&err)) == NULL) {
    result->step = PFD_STEP_FORK;
    goto fail;
  }

  /* The handles, and what the child's C runtime is told of them. */
  st.count = o->stdio_count < 3 ? 3 : o->stdio_count;
  st.child = calloc((size_t)st.count, sizeof(HANDLE));
  st.parent_end = calloc((size_t)st.count, sizeof(HANDLE));
  st.crt = calloc(1, sizeof(int) + (size_t)st.count * (1 + sizeof(HANDLE)));
  inherit = calloc((size_t)st.count, sizeof(HANDLE));
  if (st.child == NULL || st.parent_end == NULL || st.crt == NULL || inherit == NULL) {
    err = -ENOMEM;
    goto fail;
  }
  memcpy(st.crt, &st.count, sizeof(int));
  for (i = 0; i < st.count; i++) {
    unsigned char flags = 0;
    HANDLE none = INVALID_HANDLE_VALUE;
    if (i < o->stdio_count) {
      err = pfd__win_slot(&o->stdio[i], i, (o->flags & PFD_SPAWN_ASYNC_PIPES) != 0,
                          &st.child[i], &st.parent_end[i], &flags, &result->step);
      if (err < 0) {
        result->slot = i;
        goto fail;
      }
    }
    if (st.child[i] != NULL) inherit[n_inherit++] = st.child[i];
    st.crt[sizeof(int) + (size_t)i] = st.child[i] != NULL ? flags : 0;
    memcpy(st.crt + sizeof(int) + (size_t)st.count + (size_t)i * sizeof(HANDLE),
           st.child[i] != NULL ? &st.child[i] : &none, sizeof(HANDLE));
  }

  /* Only these handles are inherited, whatever else is inheritable here. */
  InitializeProcThreadAttributeList(NULL, 1, 0, &attr_size);
  if ((st.attrs = malloc(attr_size)) == NULL) {
    err = -ENOMEM;
    goto fail;
  }
  if (!InitializeProcThreadAttributeList(st.attrs, 1, 0, &attr_size)) {
    err = pfd__win_last_errno();
    free(st.attrs);
    st.attrs = NULL;
    result->step = PFD_STEP_FORK;
    goto fail;
  }
  if (n_inherit > 0 &&
      !UpdateProcThreadAttribute(st.attrs, 0, PROC_THREAD_ATTRIBUTE_HANDLE_LIST, inherit,
                                 (SIZE_T)n_inherit * sizeof(HANDLE), NULL, NULL)) {
    err = pfd__win_last_errno();
    result->step = PFD_STEP_FORK;
    goto fail;
  }

  memset(&si, 0, sizeof si);
  si.StartupInfo.cb = sizeof si;
  si.StartupInfo.dwFlags = STARTF_USESTDHANDLES;
  si.StartupInfo.hStdInput = st.child[0];
  si.StartupInfo.hStdOutput = st.child[1];
  si.StartupInfo.hStdError = st.child[2];
  si.StartupInfo.cbReserved2 = (WORD)(sizeof(int) + (size_t)st.count * (1 + sizeof(HANDLE)));
  si.StartupInfo.lpReserved2 = st.crt;
  si.lpAttributeList = st.attrs;
  create = CREATE_UNICODE_ENVIRONMENT | EXTENDED_STARTUPINFO_PRESENT | CREATE_SUSPENDED;
  if (o->flags & PFD_SPAWN_HIDE) {
    create |= CREATE_NO_WINDOW;
    si.StartupInfo.dwFlags |= STARTF_USESHOWWINDOW;
    si.StartupInfo.wShowWindow = SW_HIDE;
  }
  if (detached) create |= DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP | CREATE_BREAKAWAY_FROM_JOB;
  if (!CreateProcessW(st.app, st.cmdline, NULL, NULL, n_inherit > 0, create, st.env, st.cwd,
                      &si.StartupInfo, &pi)) {
    err = pfd__win_last_errno();
    result->step = PFD_STEP_EXEC;
    goto fail;
  }
  if (job != NULL && !AssignProcessToJobObject(job, pi.hProcess)) {
    err = pfd__win_last_errno();
    TerminateProcess(pi.hProcess, 1);
    WaitForSingleObject(pi.hProcess, INFINITE);
    CloseHandle(pi.hThread);
    CloseHandle(pi.hProcess);
    result->step = PFD_STEP_FORK;
    goto fail;
  }
  if ((err = pfd__child_add(pi.dwProcessId, pi.hProcess)) < 0 ||
      ResumeThread(pi.hThread) == (DWORD)-1) {
    if (err == 0) {
      err = pfd__win_last_errno();
      pfd__child_remove(pi.dwProcessId); /* (closes hProcess) */
    } else {
      CloseHandle(pi.hProcess);
    }
    TerminateProcess(pi.hProcess, 1);
    CloseHandle(pi.hThread);
    result->step = PFD_STEP_FORK;
    goto fail;
  }
  CloseHandle(pi.hThread);
  for (i = 0; i < o->stdio_count; i++) {
    if (o->stdio[i].kind != PFD_STDIO_PIPE && o->stdio[i].kind != PFD_STDIO_CHANNEL) continue;
    o->stdio[i].fd = PFD__FD(st.parent_end[i]);
    if (o->stdio[i].kind == PFD_STDIO_CHANNEL) {
      pfd__win_pipe_peer(o->stdio[i].fd, pi.dwProcessId); /* a channel to it */
    }
  }
  result->pid = (int)pi.dwProcessId;
  free(inherit);
  pfd__win_start_free(&st, 1);
  return 0;
fail:
  free(inherit);
  pfd__win_start_free(&st, 0);
  return err;
}
