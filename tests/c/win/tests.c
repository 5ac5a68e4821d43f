/*
 * tests.c - the Windows C tests and their child roles, run by the one runner
 * (tests/c/runner.c) from the one list (tests/c/test_list.h): built with mingw-w64 and
 * run under wine in .ci/run (`make -C tests/c test-win`), or on Windows.
 */
#include <winsock2.h>
#include <ws2tcpip.h>

#include <errno.h>
#include <io.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#include "../runner.h"

#ifndef SIGKILL
#define SIGKILL 9 /* (not in the Windows C runtime; pfd_process_kill records any number) */
#endif
#include "../../../csrc/common/wait.h"
#include "../../../csrc/win/internal.h"

/* ---- helpers ------------------------------------------------------------------------- */

static void hex_utf8(const wchar_t *w, char *out, size_t size) {
  char utf8[4096];
  int n = WideCharToMultiByte(CP_UTF8, 0, w, -1, utf8, sizeof utf8, NULL, NULL);
  size_t i, at = 0;
  CHECK(n > 0);
  for (i = 0; i + 1 < (size_t)n && at + 3 < size; i++) {
    at += (size_t)snprintf(out + at, size - at, "%02x", (unsigned char)utf8[i]);
  }
  out[at] = '\0';
}

/* ---- children ------------------------------------------------------------------------ */

CHILD_IMPL(exit) {
  (void)argc;
  return atoi(argv[0]);
}

CHILD_IMPL(sleep) {
  (void)argc;
  (void)argv;
  Sleep(60000);
  return 0;
}

CHILD_IMPL(echo_args) {
  /* Each argument after the role as hex of its UTF-8, one per line (from the wide command
   * line: the C runtime's narrow argv has lost what the code page cannot hold). */
  int i, wide_argc;
  wchar_t **wide = CommandLineToArgvW(GetCommandLineW(), &wide_argc);
  (void)argv;
  CHECK(wide != NULL && wide_argc == argc + 3);
  for (i = 3; i < wide_argc; i++) {
    char hex[8192];
    hex_utf8(wide[i], hex, sizeof hex);
    printf("%s\n", hex);
  }
  fflush(stdout);
  LocalFree(wide);
  return 0;
}

CHILD_IMPL(stdio) {
  (void)argc;
  (void)argv;
  fputs("to stdout", stdout);
  fputs("to stderr", stderr);
  return 0;
}

CHILD_IMPL(handles) {
  (void)argc;
  /* argv[0]: a handle value the parent made inheritable but did not list.  Slot 3: a
   * pipe that was listed.  Says what it found through slot 3. */
  HANDLE unlisted = (HANDLE)(intptr_t)_atoi64(argv[0]);
  DWORD flags;
  HANDLE slot3 = (HANDLE)_get_osfhandle(3);
  const char *msg = GetHandleInformation(unlisted, &flags) ? "leaked" : "clean";
  DWORD n;
  if (slot3 == INVALID_HANDLE_VALUE) return 3;
  if (!WriteFile(slot3, msg, (DWORD)strlen(msg), &n, NULL)) return 4;
  return 0;
}

CHILD_IMPL(shm) {
  (void)argc;
  (void)argv;
  /* Slot 3: a shared memory section; reads the parent's number, writes its own. */
  void *view;
  unsigned *word;
  HANDLE h = (HANDLE)_get_osfhandle(3);
  if (h == INVALID_HANDLE_VALUE) return 3;
  if (pfd_shm_map(PFD__FD(h), 4096, &view) != 0) return 4;
  word = view;
  if (word[0] != 12345u) return 5;
  word[1] = 54321u;
  pfd_shm_unmap(view, 4096);
  return 0;
}

CHILD_IMPL(grandparent) {
  (void)argc;
  (void)argv;
  /* Starts a sleeping child of its own, prints its pid, and ends without waiting. */
  pfd_spawn_result_t r;
  pfd_stdio_t stdio[3] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1}};
  if (pfd_test_spawn_child_argv("sleep", NULL, stdio, 3, 0, &r) != 0) return 3;
  printf("%d\n", r.pid);
  fflush(stdout);
  ExitProcess(0);
}

CHILD_IMPL(ring_consumer) {
  (void)argc;
  /* Slot 3: a section holding a ring.  Reads argv[0] records, checks each one's bytes,
   * and writes back (slot 4, a pipe) the sum of their lengths. */
  void *view;
  pfd_ring_t ring;
  HANDLE h = (HANDLE)_get_osfhandle(3), out = (HANDLE)_get_osfhandle(4);
  long long n = _atoi64(argv[0]), i, total = 0, size = _atoi64(argv[1]);
  char line[32];
  DWORD written;
  if (h == INVALID_HANDLE_VALUE || out == INVALID_HANDLE_VALUE) return 3;
  if (pfd_shm_map(PFD__FD(h), (size_t)size, &view) != 0) return 4;
  if (pfd_ring_attach(&ring, view, (size_t)size) != 0) return 5;
  for (i = 0; i < n; i++) {
    const unsigned char *rec;
    long long len, k;
    while ((len = pfd_ring_peek(&ring, &rec)) == -EAGAIN) {
      if (pfd_ring_wait(&ring, PFD_RING_WAIT_DATA, 0, 30000, -1) != 1) return 6;
    }
    if (len != i % 1500 + 1) return 7;
    for (k = 0; k < len; k++) {
      if (rec[k] != (unsigned char)(i + k)) return 8;
    }
    total += len;
    if (pfd_ring_release(&ring, 1) != 0) return 9;
    pfd_ring_notify(&ring, PFD_RING_WAIT_SPACE);
  }
  snprintf(line, sizeof line, "%lld", total);
  if (!WriteFile(out, line, (DWORD)strlen(line), &written, NULL)) return 10;
  return 0;
}

CHILD_IMPL(sleeper) {
  (void)argc;
  /* Slot 3: a section; sleeps on its first word (no timeout) until woken, then says so
   * in the second. */
  void *view;
  HANDLE h = (HANDLE)_get_osfhandle(3);
  unsigned long long key = (unsigned long long)_atoi64(argv[0]);
  pfd_atomic_u32_t *word;
  if (h == INVALID_HANDLE_VALUE || pfd_shm_map(PFD__FD(h), 4096, &view) != 0) return 3;
  word = view;
  pfd_atomic_store_u32(&word[1], 1u); /* about to sleep */
  while (pfd_atomic_load_u32(&word[0]) == 0) {
    if (pfd__wait_on_word(&word[0], 0, -1, key) != 0) return 4;
  }
  pfd_atomic_store_u32(&word[1], 2u);
  return 0;
}

CHILD_IMPL(handle_receiver) {
  (void)argc;
  (void)argv;
  /* Reads a handle value (this process's) on stdin, writes "moved" through it. */
  char line[64] = "";
  DWORD n, written;
  HANDLE h;
  if (!ReadFile(GetStdHandle(STD_INPUT_HANDLE), line, sizeof line - 1, &n, NULL)) return 3;
  line[n] = '\0';
  h = (HANDLE)(intptr_t)_atoi64(line);
  if (!WriteFile(h, "moved", 5, &written, NULL)) return 4;
  CloseHandle(h);
  return 0;
}

CHILD_IMPL(socket_receiver) {
  (void)argc;
  (void)argv;
  /* Reads a socket's description on stdin (as hex), makes the socket, sends on it. */
  static char hex[4096];
  unsigned char info[1024];
  unsigned long long s;
  size_t size = pfd__win_socket_info_size(), i, got = 0;
  DWORD n;
  WSADATA wsa;
  if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0) return 3;
  while (got < size * 2 &&
         ReadFile(GetStdHandle(STD_INPUT_HANDLE), hex + got, (DWORD)(size * 2 - got), &n, NULL) &&
         n > 0) {
    got += n;
  }
  if (got != size * 2 || size > sizeof info) return 4;
  for (i = 0; i < size; i++) {
    unsigned v;
    if (sscanf(hex + 2 * i, "%2x", &v) != 1) return 5;
    info[i] = (unsigned char)v;
  }
  if (pfd__win_socket_receive(info, size, &s) != 0) return 6;
  if (send((SOCKET)s, "via socket", 10, 0) != 10) return 7;
  closesocket((SOCKET)s);
  return 0;
}

CHILD_IMPL(frames_echo) {
  (void)argc;
  (void)argv;
  /* Slot 3: a channel pipe.  Echoes every chunk it receives as a frame of its own; a
   * handle that comes along is used (a socket: "via frame" sent on it; anything else:
   * "got handle" written to it) and closed.  Exit 0 at EOF, 42 on a malformed frame. */
  static char buf[70000];
  HANDLE pipe = (HANDLE)_get_osfhandle(3);
  WSADATA wsa;
  if (pipe == INVALID_HANDLE_VALUE || WSAStartup(MAKEWORD(2, 2), &wsa) != 0) return 3;
  for (;;) {
    int fds[1], nfds = 0;
    long n = pfd_fd_recv(PFD__FD(pipe), buf, sizeof buf, fds, 1, &nfds, PFD_FD_BLOCK);
    if (n == 0) return 0;
    if (n == -EBADMSG) return 42;
    if (n < 0) return 4;
    if (nfds == 1) {
      int type = 0, len = sizeof type;
      DWORD written;
      if (getsockopt((SOCKET)(intptr_t)fds[0], SOL_SOCKET, SO_TYPE, (char *)&type, &len) == 0) {
        if (send((SOCKET)(intptr_t)fds[0], "via frame", 9, 0) != 9) return 5;
        closesocket((SOCKET)(intptr_t)fds[0]);
      } else {
        if (!WriteFile(PFD__HANDLE(fds[0]), "got handle", 10, &written, NULL)) return 6;
        CloseHandle(PFD__HANDLE(fds[0]));
      }
    }
    if (pfd_fd_send(PFD__FD(pipe), buf, (size_t)n, NULL, 0, NULL, 0, PFD_FD_BLOCK) != n) return 7;
  }
}

CHILD_IMPL(echo3) {
  (void)argc;
  (void)argv;
  /* Slot 3: a stream (plain reads and writes through the C runtime): one chunk back. */
  char buf[256];
  int n = _read(3, buf, sizeof buf);
  if (n <= 0) return 3;
  if (_write(3, buf, (unsigned)n) != n) return 4;
  return 0;
}

CHILD_IMPL(cat) {
  (void)argc;
  (void)argv;
  /* stdin to stdout, then the byte count to stderr. */
  static char buf[65536];
  DWORD n, written;
  unsigned long long total = 0;
  char line[32];
  while (ReadFile(GetStdHandle(STD_INPUT_HANDLE), buf, sizeof buf, &n, NULL) && n > 0) {
    if (!WriteFile(GetStdHandle(STD_OUTPUT_HANDLE), buf, n, &written, NULL)) return 3;
    total += n;
  }
  snprintf(line, sizeof line, "read %llu", total);
  if (!WriteFile(GetStdHandle(STD_ERROR_HANDLE), line, (DWORD)strlen(line), &written, NULL)) {
    return 4;
  }
  return 0;
}


/* ---- tests --------------------------------------------------------------------------- */

TEST_IMPL(errors_translated) {
  CHECK_EQ(pfd__win_errno(ERROR_FILE_NOT_FOUND), -ENOENT);
  CHECK_EQ(pfd__win_errno(ERROR_ACCESS_DENIED), -EACCES);
  CHECK_EQ(pfd__win_errno(ERROR_BROKEN_PIPE), -EPIPE);
  CHECK_EQ(pfd__win_errno(WSAECONNREFUSED), -ECONNREFUSED);
  CHECK_EQ(pfd__win_errno(WSAEWOULDBLOCK), -EAGAIN);
  CHECK_EQ(pfd__win_errno(ERROR_SUCCESS), -EIO);  /* never "no error" */
  CHECK_EQ(pfd__win_errno(0x7fffffffu), -EIO);
  CHECK(strcmp(pfd_err_name(pfd__win_errno(ERROR_PATH_NOT_FOUND)), "ENOENT") == 0);
  CHECK(strcmp(pfd_err_name(pfd__win_errno(ERROR_DIRECTORY)), "ENOTDIR") == 0);
  return 0;
}

TEST_IMPL(quoting_table) {
  static const struct {
    const char *args[4];
    const wchar_t *line; /* the quoted arguments after "prog" */
  } table[] = {
      {{"plain", NULL}, L"prog plain"},
      {{"", NULL}, L"prog \"\""},
      {{"two words", NULL}, L"prog \"two words\""},
      {{"say \"hi\"", NULL}, L"prog \"say \\\"hi\\\"\""},
      {{"C:\\dir\\", NULL}, L"prog C:\\dir\\"},
      {{"C:\\my dir\\", NULL}, L"prog \"C:\\my dir\\\\\""},
      {{"a\\\\\"b", NULL}, L"prog \"a\\\\\\\\\\\"b\""},
      {{"tab\there", "", "x", NULL}, L"prog \"tab\there\" \"\" x"},
  };
  size_t i;
  for (i = 0; i < sizeof table / sizeof table[0]; i++) {
    char *argv[6] = {"prog"};
    wchar_t *line = NULL;
    int k;
    for (k = 0; table[i].args[k] != NULL; k++) argv[k + 1] = (char *)table[i].args[k];
    argv[k + 1] = NULL;
    CHECK_EQ(pfd__win_command_line(argv, 0, &line), 0);
    if (wcscmp(line, table[i].line) != 0) {
      fprintf(stderr, "row %u: got %ls\n", (unsigned)i, line);
      CHECK(0);
    }
    free(line);
  }
  {
    char *bad[] = {"pro\"g", NULL};
    wchar_t *line = NULL;
    CHECK_EQ(pfd__win_command_line(bad, 0, &line), -EINVAL);
  }
  {
    /* Verbatim (a shell's command line): argv[0] quoted as ever, the rest as they are. */
    char *shell[] = {"C:\\Windows\\system32\\cmd.exe", "/d", "/s", "/c", "\"echo \"a b\" & ver\"", NULL};
    char *spaced[] = {"C:\\my shell.exe", "/c", "x", NULL};
    wchar_t *line = NULL;
    CHECK_EQ(pfd__win_command_line(shell, 1, &line), 0);
    CHECK(wcscmp(line, L"C:\\Windows\\system32\\cmd.exe /d /s /c \"echo \"a b\" & ver\"") == 0);
    free(line);
    CHECK_EQ(pfd__win_command_line(spaced, 1, &line), 0);
    CHECK(wcscmp(line, L"\"C:\\my shell.exe\" /c x") == 0);
    free(line);
  }
  return 0;
}

/* Spawns the echo_args child with `args` and checks that it got exactly them. */
static void check_round_trip(const char *const *args) {
  pfd_stdio_t stdio[3] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_PIPE, -1}, {PFD_STDIO_INHERIT_SAME, -1}};
  pfd_spawn_result_t r;
  static char out[1 << 17];
  char *line;
  size_t i;
  CHECK_EQ(pfd_test_spawn_child_argv("echo_args", args, stdio, 3, 0, &r), 0);
  pfd_test_read_all(stdio[1].fd, out, sizeof out);
  CloseHandle(PFD__HANDLE(stdio[1].fd));
  CHECK_EQ(pfd_test_reap(r.pid), 0);
  line = out;
  for (i = 0; args[i] != NULL; i++) {
    char want[8192] = "";
    size_t k, at = 0;
    char *nl = strchr(line, '\n');
    CHECK(nl != NULL);
    *nl = '\0';
    if (nl > line && nl[-1] == '\r') nl[-1] = '\0';
    for (k = 0; args[i][k] != '\0'; k++) {
      at += (size_t)snprintf(want + at, sizeof want - at, "%02x", (unsigned char)args[i][k]);
    }
    if (strcmp(line, want) != 0) {
      fprintf(stderr, "argument %u: sent %s, got %s\n", (unsigned)i, want, line);
      CHECK(0);
    }
    line = nl + 1;
  }
  CHECK(*line == '\0'); /* and no more */
}

TEST_IMPL(arguments_round_trip) {
  /* What the child's C runtime splits back is exactly what was given. */
  static const char *const args[] = {
      "",          "plain",         "two words",   "say \"hi\"",      "C:\\dir\\",
      "C:\\my dir\\", "a\\\\\"b",   "\\\\server\\share", "tab\there",  "\xc3\xa9t\xc3\xa9 \xe2\x82\xac",
      "\"",        "\\",            "\\\"",        "  ",              "end\\\\",
      NULL};
  check_round_trip(args);
  return 0;
}

TEST_IMPL(random_arguments_round_trip) {
  /* 25 children of 12 arguments each, built from the pieces quoting gets wrong (quotes,
   * runs of backslashes, spaces, tabs, non-ASCII up to a UTF-16 surrogate pair). */
  static const char *const pieces[] = {"a", " ", "\t", "\"", "\\", "\\\\", "\\\"",
                                       "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9d\x84\x9e", "x y", ""};
  static char storage[12][256];
  const char *args[13];
  unsigned long long state = 0x9E3779B97F4A7C15ull;
  int child, i, k;
  for (child = 0; child < 25; child++) {
    for (i = 0; i < 12; i++) {
      int n;
      storage[i][0] = '\0';
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      n = (int)(state % 9);
      for (k = 0; k < n; k++) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        strcat(storage[i], pieces[state % (sizeof pieces / sizeof pieces[0])]);
      }
      args[i] = storage[i];
    }
    args[12] = NULL;
    check_round_trip(args);
  }
  return 0;
}

TEST_IMPL(exit_codes_and_kill) {
  pfd_stdio_t stdio[3] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1}};
  pfd_spawn_result_t r;
  const char *code[] = {"42", NULL};
  int exit_code, sig;
  CHECK_EQ(pfd_test_spawn_child_argv("exit", code, stdio, 3, 0, &r), 0);
  CHECK(r.pid > 0);
  CHECK_EQ(pfd_test_reap(r.pid), 42);
  CHECK_EQ(pfd_process_reap(r.pid, &exit_code, &sig), -ECHILD); /* reaped once */

  CHECK_EQ(pfd_test_spawn_child_argv("sleep", NULL, stdio, 3, 0, &r), 0);
  CHECK_EQ(pfd_process_wait(r.pid, -1, 50), 0); /* still running */
  CHECK_EQ(pfd_process_kill(r.pid, -1, 0), 0);
  CHECK_EQ(pfd_process_reap(r.pid, &exit_code, &sig), 0);
  CHECK_EQ(pfd_process_kill(r.pid, -1, SIGTERM), 0);
  CHECK_EQ(pfd_test_reap(r.pid), -SIGTERM); /* returncode == -SIGTERM, as on Unix */
  CHECK_EQ(pfd_process_kill(r.pid, -1, SIGTERM), -ESRCH);
  return 0;
}

TEST_IMPL(stdio_pipes) {
  pfd_stdio_t stdio[3] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_PIPE, -1}, {PFD_STDIO_PIPE, -1}};
  pfd_spawn_result_t r;
  char out[256], err[256];
  CHECK_EQ(pfd_test_spawn_child_argv("stdio", NULL, stdio, 3, 0, &r), 0);
  pfd_test_read_all(stdio[1].fd, out, sizeof out);
  pfd_test_read_all(stdio[2].fd, err, sizeof err);
  CloseHandle(PFD__HANDLE(stdio[1].fd));
  CloseHandle(PFD__HANDLE(stdio[2].fd));
  CHECK_EQ(pfd_test_reap(r.pid), 0);
  CHECK(strcmp(out, "to stdout") == 0);
  CHECK(strcmp(err, "to stderr") == 0);
  return 0;
}

TEST_IMPL(failures_name_their_step) {
  char dir[MAX_PATH], bat[MAX_PATH + 16], *argv[2] = {NULL, NULL};
  char *env[2] = {NULL, NULL}, path_var[MAX_PATH + 8];
  pfd_spawn_options_t o;
  pfd_spawn_result_t r;
  FILE *f;
  DWORD n = GetTempPathA(sizeof dir, dir);
  CHECK(n > 0 && n < sizeof dir);
  memset(&o, 0, sizeof o);

  o.file = argv[0] = (char *)"no-such-program-pyforkd";
  o.argv = argv;
  CHECK_EQ(pfd_spawn(&o, &r), -ENOENT);
  CHECK_EQ(r.step, PFD_STEP_RESOLVE);
  CHECK_EQ(r.pid, -1);

  o.file = argv[0] = (char *)pfd_test_self;
  o.cwd = "C:\\no\\such\\dir\\pyforkd";
  CHECK_EQ(pfd_spawn(&o, &r), -ENOENT);
  CHECK_EQ(r.step, PFD_STEP_CHDIR);
  o.cwd = NULL;

  /* A batch file is refused, named directly or found in PATH without its extension. */
  snprintf(bat, sizeof bat, "%spyforkd-test.bat", dir);
  CHECK((f = fopen(bat, "w")) != NULL);
  fputs("@echo off\r\necho pwned\r\n", f);
  fclose(f);
  o.file = argv[0] = bat;
  CHECK_EQ(pfd_spawn(&o, &r), -EINVAL);
  CHECK_EQ(r.step, PFD_STEP_BATCH);
  snprintf(path_var, sizeof path_var, "PATH=%s", dir);
  env[0] = path_var;
  o.envp = env;
  o.file = argv[0] = (char *)"pyforkd-test";
  CHECK_EQ(pfd_spawn(&o, &r), -EINVAL);
  CHECK_EQ(r.step, PFD_STEP_BATCH);
  CHECK(DeleteFileA(bat));
  o.envp = NULL;

  o.file = argv[0] = (char *)pfd_test_self;
  o.flags = PFD_SPAWN_SETUID;
  CHECK_EQ(pfd_spawn(&o, &r), -ENOTSUP);
  return 0;
}

TEST_IMPL(only_listed_handles_are_inherited) {
  SECURITY_ATTRIBUTES sa = {sizeof sa, NULL, TRUE};
  HANDLE unlisted = CreateEventW(&sa, TRUE, FALSE, NULL), r_end, w_end;
  pfd_stdio_t stdio[4] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1}, {PFD_STDIO_INHERIT_SAME, -1},
                          {PFD_STDIO_INHERIT, -1}};
  pfd_spawn_result_t r;
  char value[32], got[64];
  const char *args[] = {value, NULL};
  CHECK(unlisted != NULL);
  CHECK(CreatePipe(&r_end, &w_end, NULL, 0));
  stdio[3].fd = PFD__FD(w_end);
  snprintf(value, sizeof value, "%lld", (long long)(intptr_t)unlisted);
  CHECK_EQ(pfd_test_spawn_child_argv("handles", args, stdio, 4, 0, &r), 0);
  CloseHandle(w_end); /* the child has its own copy */
  pfd_test_read_all(PFD__FD(r_end), got, sizeof got);
  CHECK_EQ(pfd_test_reap(r.pid), 0);
  CHECK(strcmp(got, "clean") == 0);
  CloseHandle(r_end);
  CloseHandle(unlisted);
  return 0;
}

TEST_IMPL(a_closed_slot_is_given_as_closed) {
  /* "inherit" at slot 5, which is not open here: the child gets nothing there (no crash
   * in the C runtime's descriptor lookup), as fork+exec would give. */
  pfd_stdio_t stdio[6] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1},
                          {PFD_STDIO_INHERIT_SAME, -1}, {PFD_STDIO_IGNORE, -1},
                          {PFD_STDIO_IGNORE, -1}, {PFD_STDIO_INHERIT_SAME, -1}};
  const char *args[] = {"0", NULL};
  pfd_spawn_result_t r;
  CHECK(_get_osfhandle(5) == -1);
  CHECK_EQ(pfd_test_spawn_child_argv("exit", args, stdio, 6, 0, &r), 0);
  CHECK_EQ(pfd_test_reap(r.pid), 0);
  return 0;
}

TEST_IMPL(fd_close_closes_handles_and_sockets) {
  /* One call for anything the core gives out: a pipe end, a socket; a closed one is
   * EBADF (nothing else in this test opens handles meanwhile). */
  HANDLE r, w;
  DWORD flags;
  SOCKET s = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(s != INVALID_SOCKET);
  CHECK(CreatePipe(&r, &w, NULL, 0));
  CHECK_EQ(pfd_fd_close(PFD__FD(r)), 0);
  CHECK(!GetHandleInformation(r, &flags));
  CHECK_EQ(pfd_fd_close(PFD__FD(r)), -EBADF);
  CHECK_EQ(pfd_fd_close((int)s), 0);
  CHECK_EQ(pfd_fd_close((int)s), -EBADF);
  CHECK_EQ(pfd_fd_close(PFD__FD(w)), 0);
  return 0;
}

TEST_IMPL(shared_memory_between_processes) {
  pfd_stdio_t stdio[4] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1}, {PFD_STDIO_INHERIT_SAME, -1},
                          {PFD_STDIO_INHERIT, -1}};
  pfd_spawn_result_t r;
  void *view;
  unsigned *word;
  int fd = pfd_shm_create("test", 4096);
  CHECK(fd > 0);
  CHECK(pfd_shm_size(fd) >= 4096);
  CHECK_EQ(pfd_shm_map(fd, 4096, &view), 0);
  word = view;
  word[0] = 12345u;
  stdio[3].fd = fd;
  CHECK_EQ(pfd_test_spawn_child_argv("shm", NULL, stdio, 4, 0, &r), 0);
  CHECK_EQ(pfd_test_reap(r.pid), 0);
  CHECK_EQ(word[1], 54321u);
  CHECK_EQ(pfd_shm_unmap(view, 4096), 0);
  CHECK_EQ(pfd_shm_size(PFD__FD(GetCurrentProcess())), -EINVAL); /* not a section */
  CloseHandle(PFD__HANDLE(fd));
  return 0;
}

TEST_IMPL(children_die_with_their_parent) {
  /* A child that ends leaves no child of its own behind: its kill-on-close job ends it. */
  pfd_stdio_t stdio[3] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_PIPE, -1}, {PFD_STDIO_INHERIT_SAME, -1}};
  pfd_spawn_result_t r;
  char out[64];
  HANDLE grandchild;
  int gpid;
  CHECK_EQ(pfd_test_spawn_child_argv("grandparent", NULL, stdio, 3, 0, &r), 0);
  pfd_test_read_all(stdio[1].fd, out, sizeof out);
  CloseHandle(PFD__HANDLE(stdio[1].fd));
  CHECK_EQ(pfd_test_reap(r.pid), 0);
  gpid = atoi(out);
  CHECK(gpid > 0);
  grandchild = OpenProcess(SYNCHRONIZE, FALSE, (DWORD)gpid);
  if (grandchild != NULL) { /* (NULL: gone already) */
    CHECK_EQ(WaitForSingleObject(grandchild, 20000), WAIT_OBJECT_0);
    CloseHandle(grandchild);
  }
  return 0;
}

TEST_IMPL(wake_crosses_processes) {
  /* A child asleep on a shared word with no timeout wakes when this process bumps the
   * word and wakes it by key: nothing else could end its wait. */
  pfd_stdio_t stdio[4] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1},
                          {PFD_STDIO_INHERIT_SAME, -1}, {PFD_STDIO_INHERIT, -1}};
  pfd_spawn_result_t r;
  void *view;
  pfd_atomic_u32_t *word;
  unsigned long long key = pfd__wait_key_new() + 72;
  char text[32];
  const char *args[] = {text, NULL};
  int fd = pfd_shm_create("wake", 4096), rounds = 0;
  CHECK(fd > 0);
  CHECK_EQ(pfd_shm_map(fd, 4096, &view), 0);
  word = view;
  stdio[3].fd = fd;
  snprintf(text, sizeof text, "%llu", key);
  CHECK_EQ(pfd_test_spawn_child_argv("sleeper", args, stdio, 4, 0, &r), 0);
  while (pfd_atomic_load_u32(&word[1]) == 0) Sleep(1);
  Sleep(200); /* (it is asleep by now, or about to check the word: either way it wakes) */
  pfd_atomic_store_u32(&word[0], 1u);
  CHECK_EQ(pfd__wake_word(&word[0], key), 0);
  while (pfd_process_wait(r.pid, -1, 1000) == 0) {
    CHECK(++rounds < 60); /* a lost wake-up leaves it asleep for good */
  }
  CHECK_EQ(pfd_test_reap(r.pid), 0);
  CHECK_EQ(pfd_atomic_load_u32(&word[1]), 2u);
  CHECK_EQ(pfd_shm_unmap(view, 4096), 0);
  CloseHandle(PFD__HANDLE(fd));
  return 0;
}

TEST_IMPL(ring_between_processes) {
  /* 20,000 records of 1..1500 bytes through a 16 KiB ring: both sides sleep and wake each
   * other (named events) many times; every byte arrives in order. */
  const size_t size = pfd_ring_size(16384);
  const long long n = 20000;
  pfd_stdio_t stdio[5] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1},
                          {PFD_STDIO_INHERIT_SAME, -1}, {PFD_STDIO_INHERIT, -1},
                          {PFD_STDIO_INHERIT, -1}};
  pfd_spawn_result_t r;
  pfd_ring_t ring;
  void *view;
  HANDLE r_end, w_end;
  char count[32], bytes[32], got[64];
  const char *args[] = {count, bytes, NULL};
  long long i, total = 0;
  int fd = pfd_shm_create("ring", size);
  CHECK(fd > 0);
  CHECK_EQ(pfd_shm_map(fd, size, &view), 0);
  CHECK_EQ(pfd_ring_init(view, size, 16384), 0);
  CHECK_EQ(pfd_ring_attach(&ring, view, size), 0);
  CHECK(CreatePipe(&r_end, &w_end, NULL, 0));
  stdio[3].fd = fd;
  stdio[4].fd = PFD__FD(w_end);
  snprintf(count, sizeof count, "%lld", n);
  snprintf(bytes, sizeof bytes, "%u", (unsigned)size);
  CHECK_EQ(pfd_test_spawn_child_argv("ring_consumer", args, stdio, 5, 0, &r), 0);
  CloseHandle(w_end);
  for (i = 0; i < n; i++) {
    unsigned char *p;
    size_t len = (size_t)(i % 1500 + 1), k;
    int e;
    while ((e = pfd_ring_reserve(&ring, len, &p)) == -EAGAIN) {
      CHECK_EQ(pfd_ring_wait(&ring, PFD_RING_WAIT_SPACE, len, 30000, -1), 1);
    }
    CHECK_EQ(e, 0);
    for (k = 0; k < len; k++) p[k] = (unsigned char)(i + (long long)k);
    CHECK_EQ(pfd_ring_commit(&ring, len), 0);
    pfd_ring_notify(&ring, PFD_RING_WAIT_DATA);
    total += (long long)len;
  }
  pfd_test_read_all(PFD__FD(r_end), got, sizeof got);
  CloseHandle(r_end);
  CHECK_EQ(pfd_test_reap(r.pid), 0);
  CHECK_EQ(atoll(got), total);
  CHECK_EQ(pfd_shm_unmap(view, size), 0);
  CloseHandle(PFD__HANDLE(fd));
  return 0;
}

TEST_IMPL(ring_wait_sees_its_peer_gone) {
  /* A consumer waiting for data whose producer's pipe end is closed: -EPIPE, not a hang. */
  const size_t size = pfd_ring_size(4096);
  pfd_stdio_t stdio[4] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1},
                          {PFD_STDIO_IGNORE, -1}, {PFD_STDIO_CHANNEL, -1}};
  const char *code[] = {"0", NULL};
  pfd_spawn_result_t r;
  pfd_ring_t ring;
  void *view;
  int fd = pfd_shm_create("ring", size);
  CHECK(fd > 0);
  CHECK_EQ(pfd_shm_map(fd, size, &view), 0);
  CHECK_EQ(pfd_ring_init(view, size, 4096), 0);
  CHECK_EQ(pfd_ring_attach(&ring, view, size), 0);
  CHECK_EQ(pfd_test_spawn_child_argv("exit", code, stdio, 4, 0, &r), 0); /* slot 3: a duplex pipe */
  CHECK_EQ(pfd_test_reap(r.pid), 0);
  CHECK_EQ(pfd_fd_wait_hangup(stdio[3].fd, 0), 1);
  CHECK_EQ(pfd_ring_wait(&ring, PFD_RING_WAIT_DATA, 0, 30000, stdio[3].fd), -EPIPE);
  CHECK_EQ(pfd_ring_wait(&ring, PFD_RING_WAIT_DATA, 0, 0, -1), 0); /* nothing, no wait */
  CloseHandle(PFD__HANDLE(stdio[3].fd));
  CHECK_EQ(pfd_shm_unmap(view, size), 0);
  CloseHandle(PFD__HANDLE(fd));
  return 0;
}

TEST_IMPL(handle_passing_between_processes) {
  /* A pipe's write end moved into a child: the child writes through it, and once it
   * exits the read end sees the end of the data (no copy was left behind here). */
  pfd_stdio_t stdio[3] = {{PFD_STDIO_PIPE, -1}, {PFD_STDIO_IGNORE, -1}, {PFD_STDIO_INHERIT_SAME, -1}};
  pfd_spawn_result_t r;
  HANDLE r_end, w_end;
  long long remote = 0;
  char text[32], got[64];
  DWORD n;
  CHECK(CreatePipe(&r_end, &w_end, NULL, 0));
  CHECK_EQ(pfd_test_spawn_child_argv("handle_receiver", NULL, stdio, 3, 0, &r), 0);
  CHECK_EQ(pfd__win_handle_send((DWORD)r.pid, PFD__FD(w_end), 1, &remote), 0);
  CHECK(remote != 0);
  snprintf(text, sizeof text, "%lld", remote);
  CHECK(WriteFile(PFD__HANDLE(stdio[0].fd), text, (DWORD)strlen(text), &n, NULL));
  CloseHandle(PFD__HANDLE(stdio[0].fd));
  pfd_test_read_all(PFD__FD(r_end), got, sizeof got); /* to EOF: the moved copy was the only one */
  CHECK_EQ(pfd_test_reap(r.pid), 0);
  CHECK(strcmp(got, "moved") == 0);
  CloseHandle(r_end);
  /* A process that is gone cannot be given anything. */
  CHECK(CreatePipe(&r_end, &w_end, NULL, 0));
  CHECK(pfd__win_handle_send((DWORD)r.pid, PFD__FD(w_end), 0, &remote) < 0);
  CloseHandle(r_end);
  CloseHandle(w_end);
  return 0;
}

TEST_IMPL(socket_passing_between_processes) {
  /* An accepted TCP connection handed to a child (WSADuplicateSocketW): what the child
   * sends on it reaches the client. */
  pfd_stdio_t stdio[3] = {{PFD_STDIO_PIPE, -1}, {PFD_STDIO_IGNORE, -1}, {PFD_STDIO_INHERIT_SAME, -1}};
  pfd_spawn_result_t r;
  struct sockaddr_in addr;
  int len = sizeof addr;
  SOCKET listener, client, accepted;
  unsigned char info[1024];
  char hex[2048], got[64];
  size_t size = pfd__win_socket_info_size(), i;
  int n, total = 0;
  DWORD written;
  CHECK(size <= sizeof info);
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK((listener = socket(AF_INET, SOCK_STREAM, 0)) != INVALID_SOCKET);
  CHECK(bind(listener, (struct sockaddr *)&addr, sizeof addr) == 0);
  CHECK(listen(listener, 1) == 0);
  CHECK(getsockname(listener, (struct sockaddr *)&addr, &len) == 0);
  CHECK((client = socket(AF_INET, SOCK_STREAM, 0)) != INVALID_SOCKET);
  CHECK(connect(client, (struct sockaddr *)&addr, sizeof addr) == 0);
  CHECK((accepted = accept(listener, NULL, NULL)) != INVALID_SOCKET);
  CHECK_EQ(pfd_test_spawn_child_argv("socket_receiver", NULL, stdio, 3, 0, &r), 0);
  CHECK_EQ(pfd__win_socket_send((DWORD)r.pid, (unsigned long long)accepted, info, sizeof info), 0);
  for (i = 0; i < size; i++) snprintf(hex + 2 * i, 3, "%02x", info[i]);
  CHECK(WriteFile(PFD__HANDLE(stdio[0].fd), hex, (DWORD)(2 * size), &written, NULL));
  CloseHandle(PFD__HANDLE(stdio[0].fd));
  closesocket(accepted); /* the child has its own socket now */
  while (total < (int)sizeof got - 1 && (n = recv(client, got + total, (int)sizeof got - 1 - total, 0)) > 0) {
    total += n;
  }
  got[total] = '\0';
  CHECK_EQ(pfd_test_reap(r.pid), 0);
  CHECK(strcmp(got, "via socket") == 0);
  closesocket(client);
  closesocket(listener);
  return 0;
}

/* Writes bytes as they are to an overlapped pipe (no framing). */
static void write_raw(int pipe, const void *buf, DWORD size) {
  OVERLAPPED ov;
  DWORD done = 0;
  memset(&ov, 0, sizeof ov);
  CHECK((ov.hEvent = CreateEventW(NULL, TRUE, FALSE, NULL)) != NULL);
  if (!WriteFile(PFD__HANDLE(pipe), buf, size, &done, &ov)) {
    CHECK(GetLastError() == ERROR_IO_PENDING);
    CHECK(GetOverlappedResult(PFD__HANDLE(pipe), &ov, &done, TRUE));
  }
  CHECK_EQ(done, size);
  CloseHandle(ov.hEvent);
}

typedef struct {
  int pipe;
  unsigned char *got;
  size_t want, have;
  long error;
} echo_reader_t;

static DWORD WINAPI read_echo(void *arg) {
  echo_reader_t *r = arg;
  while (r->have < r->want) {
    int fds[1], nfds = 0;
    long n = pfd_fd_recv(r->pipe, r->got + r->have, r->want - r->have, fds, 1, &nfds,
                         PFD_FD_BLOCK);
    if (n <= 0) {
      r->error = n == 0 ? -EPIPE : n;
      return 1;
    }
    r->have += (size_t)n;
  }
  return 0;
}

TEST_IMPL(pipe_frames_between_processes) {
  /* 60 messages of up to 200 KB through a channel pipe and back (partial reads, a full
   * pipe on both sides), a handle and a socket inside frames, a frame written by hand in
   * libuv's layout, and a malformed header that the receiver refuses. */
  pfd_stdio_t stdio[4] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1},
                          {PFD_STDIO_INHERIT_SAME, -1}, {PFD_STDIO_CHANNEL, -1}};
  pfd_spawn_result_t r;
  echo_reader_t reader;
  HANDLE thread, r_end, w_end;
  static unsigned char sent[7 << 20];
  size_t total = 0, i, k;
  unsigned char libuv_frame[] = {1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 'h', 'e', 'l', 'l', 'o'};
  unsigned char bad_frame[] = {1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 'x'};
  char got[64];
  int pipe;
  CHECK_EQ(pfd_test_spawn_child_argv("frames_echo", NULL, stdio, 4, 0, &r), 0);
  pipe = stdio[3].fd;
  CHECK_EQ(pfd_fd_wait(pipe, PFD_POLL_IN, 50), 0); /* nothing yet: a timed wait ends */
  for (i = 0; i < 60; i++) {
    size_t len = (i * 4099) % 200000 + 1;
    char head[16];
    int hl = snprintf(head, sizeof head, "MSG%u:", (unsigned)i);
    memcpy(sent + total, head, (size_t)hl);
    for (k = 0; k < len; k++) sent[total + (size_t)hl + k] = (unsigned char)(i * 7 + k);
    total += (size_t)hl + len;
  }
  memset(&reader, 0, sizeof reader);
  reader.pipe = pipe;
  reader.got = malloc(total + 64);
  reader.want = total;
  CHECK(reader.got != NULL);
  thread = CreateThread(NULL, 0, read_echo, &reader, 0, NULL);
  CHECK(thread != NULL);
  {
    size_t at = 0;
    for (i = 0; i < 60; i++) {
      size_t len = (i * 4099) % 200000 + 1;
      size_t hl = (size_t)snprintf(got, sizeof got, "MSG%u:", (unsigned)i);
      CHECK_EQ(pfd_fd_send(pipe, sent + at, hl, sent + at + hl, len, NULL, 0, PFD_FD_BLOCK),
               (long)(hl + len));
      at += hl + len;
    }
  }
  CHECK_EQ(WaitForSingleObject(thread, 120000), WAIT_OBJECT_0);
  CloseHandle(thread);
  CHECK_EQ(reader.error, 0);
  CHECK(memcmp(reader.got, sent, total) == 0);

  /* A handle in a frame: the child writes through its own copy. */
  CHECK(CreatePipe(&r_end, &w_end, NULL, 0));
  {
    int fd = PFD__FD(w_end), fds[1], nfds = 0;
    char echo[16];
    CHECK_EQ(pfd_fd_send(pipe, "handle", 6, NULL, 0, &fd, 1, PFD_FD_BLOCK), 6);
    CloseHandle(w_end);
    CHECK_EQ(pfd_fd_recv(pipe, echo, 6, fds, 1, &nfds, PFD_FD_BLOCK), 6);
    CHECK(memcmp(echo, "handle", 6) == 0 && nfds == 0);
  }
  pfd_test_read_all(PFD__FD(r_end), got, sizeof got);
  CHECK(strcmp(got, "got handle") == 0);
  CloseHandle(r_end);

  /* A socket in a frame (libuv's socket transfer): the child answers on it. */
  {
    struct sockaddr_in addr;
    int len = sizeof addr, fd, fds[1], nfds = 0, n, have = 0;
    SOCKET listener, client, accepted;
    char echo[16];
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK((listener = socket(AF_INET, SOCK_STREAM, 0)) != INVALID_SOCKET);
    CHECK(bind(listener, (struct sockaddr *)&addr, sizeof addr) == 0 && listen(listener, 1) == 0);
    CHECK(getsockname(listener, (struct sockaddr *)&addr, &len) == 0);
    CHECK((client = socket(AF_INET, SOCK_STREAM, 0)) != INVALID_SOCKET);
    CHECK(connect(client, (struct sockaddr *)&addr, sizeof addr) == 0);
    CHECK((accepted = accept(listener, NULL, NULL)) != INVALID_SOCKET);
    fd = (int)accepted;
    CHECK_EQ(pfd_fd_send(pipe, "socket", 6, NULL, 0, &fd, 1, PFD_FD_BLOCK), 6);
    closesocket(accepted);
    CHECK_EQ(pfd_fd_recv(pipe, echo, 6, fds, 1, &nfds, PFD_FD_BLOCK), 6);
    while (have < 9 && (n = recv(client, got + have, 9 - have, 0)) > 0) have += n;
    got[have] = '\0';
    CHECK(strcmp(got, "via frame") == 0);
    closesocket(client);
    closesocket(listener);
  }

  /* libuv's own layout, written by hand, reads as a message. */
  {
    int fds[1], nfds = 0;
    char echo[16];
    write_raw(pipe, libuv_frame, sizeof libuv_frame);
    CHECK_EQ(pfd_fd_recv(pipe, echo, 5, fds, 1, &nfds, PFD_FD_BLOCK), 5);
    CHECK(memcmp(echo, "hello", 5) == 0);
  }

  /* A header with a non-zero reserved field: the receiver refuses it (exit 42). */
  write_raw(pipe, bad_frame, sizeof bad_frame);
  CHECK_EQ(pfd_test_reap(r.pid), 42);
  pfd__win_pipe_forget(pipe);
  CloseHandle(PFD__HANDLE(pipe));
  free(reader.got);
  return 0;
}

TEST_IMPL(a_stream_pipe_above_slot_2) {
  /* PIPE at slot 3 is a duplex pipe for plain blocking I/O at both ends (a CHANNEL is the
   * overlapped one): the child reads it through its C runtime and answers on it. */
  pfd_stdio_t stdio[4] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1},
                          {PFD_STDIO_INHERIT_SAME, -1}, {PFD_STDIO_PIPE, -1}};
  pfd_spawn_result_t r;
  char buf[64];
  DWORD n = 0;
  CHECK_EQ(pfd_test_spawn_child_argv("echo3", NULL, stdio, 4, 0, &r), 0);
  CHECK(WriteFile(PFD__HANDLE(stdio[3].fd), "both ways", 9, &n, NULL) && n == 9);
  CHECK(ReadFile(PFD__HANDLE(stdio[3].fd), buf, sizeof buf, &n, NULL) && n == 9);
  CHECK(memcmp(buf, "both ways", 9) == 0);
  CHECK_EQ(pfd_test_reap(r.pid), 0);
  CHECK(!ReadFile(PFD__HANDLE(stdio[3].fd), buf, sizeof buf, &n, NULL)); /* its end closed */
  CHECK_EQ(GetLastError(), ERROR_BROKEN_PIPE);
  CloseHandle(PFD__HANDLE(stdio[3].fd));
  /* A CHANNEL below slot 3 is refused. */
  {
    pfd_stdio_t bad[2] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_CHANNEL, -1}};
    CHECK_EQ(pfd_test_spawn_child_argv("echo3", NULL, bad, 2, 0, &r), -EINVAL);
  }
  return 0;
}

TEST_IMPL(pair_carries_many_handles_per_message) {
  /* A message with three handles (two pipe ends and a socket) arrives with copies of all
   * three on its first byte; more than the receiver has room for arrive as TRUNCATED and
   * closed; a handle that cannot be copied fails the send and nothing is written. */
  int pair[2], fds[4], nfds = -7, i, type = 0, len = sizeof type;
  HANDLE r[2], w[2];
  SOCKET s = socket(AF_INET, SOCK_STREAM, 0);
  char buf[16];
  DWORD n;
  CHECK(s != INVALID_SOCKET);
  CHECK_EQ(pfd_fd_pair(pair), 0);
  for (i = 0; i < 2; i++) CHECK(CreatePipe(&r[i], &w[i], NULL, 0));
  {
    int sent[3];
    sent[0] = PFD__FD(w[0]);
    sent[1] = (int)s;
    sent[2] = PFD__FD(w[1]);
    CHECK_EQ(pfd_fd_send(pair[0], "ab", 2, "c", 1, sent, 3, PFD_FD_BLOCK), 3);
    CHECK_EQ(pfd_fd_recv(pair[1], buf, sizeof buf, fds, 4, &nfds, PFD_FD_BLOCK), 3);
    CHECK(memcmp(buf, "abc", 3) == 0);
    CHECK_EQ(nfds, 3);
    for (i = 0; i < 3; i++) CHECK(fds[i] != sent[i]); /* copies, in the order sent */
  }
  CHECK(WriteFile(PFD__HANDLE(fds[0]), "one", 3, &n, NULL) && n == 3);
  CHECK(ReadFile(r[0], buf, 3, &n, NULL) && n == 3 && memcmp(buf, "one", 3) == 0);
  CHECK(getsockopt((SOCKET)(intptr_t)fds[1], SOL_SOCKET, SO_TYPE, (char *)&type, &len) == 0);
  CHECK_EQ(type, SOCK_STREAM);
  CHECK(WriteFile(PFD__HANDLE(fds[2]), "two", 3, &n, NULL) && n == 3);
  CHECK(ReadFile(r[1], buf, 3, &n, NULL) && n == 3 && memcmp(buf, "two", 3) == 0);
  for (i = 0; i < 3; i++) CHECK_EQ(pfd_fd_close(fds[i]), 0);

  /* Three handles, room for two: all closed, the bytes still delivered. */
  {
    int sent[3];
    sent[0] = sent[1] = sent[2] = PFD__FD(w[0]);
    CHECK_EQ(pfd_fd_send(pair[0], "x", 1, NULL, 0, sent, 3, PFD_FD_BLOCK), 1);
    CHECK_EQ(pfd_fd_recv(pair[1], buf, sizeof buf, fds, 2, &nfds, PFD_FD_BLOCK), 1);
    CHECK_EQ(nfds, PFD_FD_TRUNCATED);
  }
  /* The second handle is not one: EBADF, and the receiver sees nothing at all. */
  {
    int sent[2];
    sent[0] = PFD__FD(w[1]);
    sent[1] = 0x7ffffff0;
    CHECK_EQ(pfd_fd_send(pair[0], "y", 1, NULL, 0, sent, 2, PFD_FD_BLOCK), -EBADF);
    CHECK_EQ(pfd_fd_wait(pair[1], PFD_POLL_IN, 50), 0);
    CHECK_EQ(pfd_fd_send(pair[0], "z", 1, NULL, 0, NULL, 0, PFD_FD_BLOCK), 1);
    CHECK_EQ(pfd_fd_recv(pair[1], buf, sizeof buf, fds, 4, &nfds, PFD_FD_BLOCK), 1);
    CHECK(buf[0] == 'z' && nfds == 0);
  }
  CHECK_EQ(pfd_fd_send(pair[0], "q", 1, NULL, 0, fds, PFD_FRAME_MAX_FDS + 1, 0), -EINVAL);
  CHECK_EQ(pfd_fd_peer(pair[0], 0), -EINVAL);
  CHECK_EQ(pfd_fd_recv(pair[1], buf, 1, fds, PFD_FRAME_MAX_FDS + 1, &nfds, 0), -EINVAL);
  /* Closing one end with a message unread: the other sees the hang-up at once (as
   * POLLRDHUP), reads the message, then the end of the stream. */
  CHECK_EQ(pfd_fd_send(pair[0], "last", 4, NULL, 0, NULL, 0, PFD_FD_BLOCK), 4);
  CHECK_EQ(pfd_fd_wait_hangup(pair[1], 0), 0);
  CHECK_EQ(pfd_fd_close(pair[0]), 0);
  CHECK_EQ(pfd_fd_wait_hangup(pair[1], 0), 1);
  CHECK_EQ(pfd_fd_recv(pair[1], buf, sizeof buf, fds, 4, &nfds, PFD_FD_BLOCK), 4);
  CHECK(memcmp(buf, "last", 4) == 0);
  CHECK_EQ(pfd_fd_recv(pair[1], buf, sizeof buf, fds, 4, &nfds, PFD_FD_BLOCK), 0);
  CHECK_EQ(pfd_fd_close(pair[1]), 0);
  for (i = 0; i < 2; i++) {
    CloseHandle(r[i]);
    CloseHandle(w[i]);
  }
  closesocket(s);
  return 0;
}

/* Starts the "cat" child with its three streams in `c`, to be given `input`. */
static void start_cat(pfd_collect_t *c, pfd_spawn_result_t *r, const char *input, size_t size) {
  pfd_stdio_t stdio[3] = {{PFD_STDIO_PIPE, -1}, {PFD_STDIO_PIPE, -1}, {PFD_STDIO_PIPE, -1}};
  CHECK_EQ(pfd_test_spawn_child_argv("cat", NULL, stdio, 3, 0, r), 0);
  memset(c, 0, sizeof *c);
  c->in_fd = stdio[0].fd;
  c->input = input;
  c->input_size = size;
  c->out_fd[0] = stdio[1].fd;
  c->out_fd[1] = stdio[2].fd;
}

TEST_IMPL(collect_both_streams_and_limits) {
  /* 1 MB through a child's stdin and back on stdout while it also writes stderr: no pipe
   * fills up for good; then max_buffer and a timeout. */
  pfd_spawn_result_t r;
  pfd_collect_t c;
  static char input[1 << 20];
  size_t i;
  for (i = 0; i < sizeof input; i++) input[i] = (char)(i * 31 + 7);
  start_cat(&c, &r, input, sizeof input);
  CHECK_EQ(pfd_collect_run(&c, 60000), 0);
  CHECK_EQ(c.out[0].size, sizeof input);
  CHECK(memcmp(c.out[0].data, input, sizeof input) == 0);
  CHECK_EQ(c.out[1].size, strlen("read 1048576"));
  CHECK(memcmp(c.out[1].data, "read 1048576", c.out[1].size) == 0);
  CHECK_EQ(c.in_fd, -1);
  pfd_collect_close(&c);
  CHECK_EQ(pfd_test_reap(r.pid), 0);

  /* Over max_buffer: -ENOBUFS, stream 1 named; the read that went over is kept whole (the
   * caller cuts it), and nothing more is read. */
  start_cat(&c, &r, input, sizeof input);
  c.max_buffer = 1000;
  CHECK_EQ(pfd_collect_run(&c, 60000), -ENOBUFS);
  CHECK_EQ(c.overflow, 1);
  CHECK(c.out[0].size > 1000);
  CHECK(memcmp(c.out[0].data, input, c.out[0].size) == 0);
  {
    size_t kept = c.out[0].size;
    CHECK_EQ(pfd_collect_run(&c, 0), -ENOBUFS); /* it stays over */
    CHECK_EQ(c.out[0].size, kept);
  }
  /* Killed while its pipes are open (it is blocked writing to a full one): once they are
   * closed it could end by itself first. */
  CHECK_EQ(pfd_process_kill(r.pid, -1, SIGKILL), 0);
  pfd_collect_close(&c);
  CHECK_EQ(pfd_test_reap(r.pid), -SIGKILL);

  /* A child that writes nothing: the deadline ends the run, and a later run goes on. */
  {
    pfd_stdio_t quiet[3] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_PIPE, -1}, {PFD_STDIO_IGNORE, -1}};
    CHECK_EQ(pfd_test_spawn_child_argv("sleep", NULL, quiet, 3, 0, &r), 0);
    memset(&c, 0, sizeof c);
    c.in_fd = -1;
    c.out_fd[0] = quiet[1].fd;
    c.out_fd[1] = -1;
    CHECK_EQ(pfd_collect_run(&c, 100), -ETIMEDOUT);
    CHECK_EQ(pfd_process_kill(r.pid, -1, SIGTERM), 0);
    CHECK_EQ(pfd_collect_run(&c, 60000), 0); /* the kill closed its end: done */
    CHECK_EQ(c.out[0].size, 0);
    pfd_collect_close(&c);
    CHECK_EQ(pfd_test_reap(r.pid), -SIGTERM);
  }
  return 0;
}
