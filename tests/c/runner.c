/* runner.c - the one C test runner, on every platform: runs every test of test_list.h,
 * each in a child process of its own (this same binary with "--run NAME"), and plays the
 * child roles ("--child NAME ...").  Prints one line per test and a closing "N passed, N
 * failed, N skipped" line; exits 1 on failure.  `runner NAME` runs the tests whose names
 * hold NAME. */
#ifdef _WIN32
#include <winsock2.h>
#include <io.h>
#include <stdint.h>
#else
#define _GNU_SOURCE
#include <dirent.h>
#include <limits.h>
#include <sys/wait.h>
#include <unistd.h>
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner.h"
#include "test_list.h"

#define DECLARE_TEST(name) int pfd_test_##name(void);
#define DECLARE_CHILD(name) int pfd_child_##name(int argc, char **argv);
PFD_TESTS(DECLARE_TEST)
PFD_CHILDREN(DECLARE_CHILD)

typedef struct {
  const char *name;
  int (*fn)(void);
} test_entry_t;

typedef struct {
  const char *name;
  int (*fn)(int, char **);
} child_entry_t;

#define TEST_ENTRY(name) {#name, pfd_test_##name},
#define CHILD_ENTRY(name) {#name, pfd_child_##name},
static const test_entry_t tests[] = {PFD_TESTS(TEST_ENTRY)};
static const child_entry_t children[] = {PFD_CHILDREN(CHILD_ENTRY)};

const char *pfd_test_self;

#ifdef _WIN32
int pfd_test_count_fds(void) {
  /* Every handle value below 65536 asked about (the system hands out the lowest free
   * ones, so a leak shows there); GetProcessHandleCount would do, but wine answers 0. */
  int count = 0;
  uintptr_t h;
  DWORD flags;
  for (h = 4; h < 65536; h += 4) count += GetHandleInformation((HANDLE)h, &flags) ? 1 : 0;
  return count;
}
#else
int pfd_test_count_fds(void) {
  int count = 0;
  struct dirent *e;
#ifdef __APPLE__
  DIR *d = opendir("/dev/fd"); /* (fdescfs: this process's descriptors) */
#else
  DIR *d = opendir("/proc/self/fd");
#endif
  CHECK(d != NULL);
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] != '.') count++;
  }
  closedir(d);
  return count - 1; /* the directory's own descriptor */
}
#endif

/* Starts "self MODE NAME args..." (MODE: --child or --run); returns pfd_spawn's code. */
static int spawn_self(const char *mode, const char *name, const char *const *args,
                      pfd_stdio_t *stdio, int count, unsigned flags, pfd_spawn_result_t *result) {
  char *argv[32];
  int n = 0;
  pfd_spawn_options_t o;
  argv[n++] = (char *)pfd_test_self;
  argv[n++] = (char *)mode;
  argv[n++] = (char *)name;
  while (args != NULL && *args != NULL && n < 31) argv[n++] = (char *)*args++;
  argv[n] = NULL;
  memset(&o, 0, sizeof(o));
  o.file = pfd_test_self;
  o.argv = argv;
  o.stdio = stdio;
  o.stdio_count = count;
  o.flags = flags;
  return pfd_spawn(&o, result);
}

int pfd_test_spawn_child_argv(const char *name, const char *const *args, pfd_stdio_t *stdio,
                              int count, unsigned flags, pfd_spawn_result_t *result) {
  return spawn_self("--child", name, args, stdio, count, flags, result);
}

int pfd_test_spawn_child(const char *name, const char *arg, pfd_stdio_t *stdio, int count,
                         unsigned flags, pfd_spawn_result_t *result) {
  const char *args[2];
  args[0] = arg;
  args[1] = NULL;
  return pfd_test_spawn_child_argv(name, args, stdio, count, flags, result);
}

#ifdef _WIN32
size_t pfd_test_read_all(int fd, char *buf, size_t size) {
  size_t len = 0;
  DWORD n;
  while (len + 1 < size && ReadFile((HANDLE)(intptr_t)fd, buf + len, (DWORD)(size - 1 - len), &n,
                                    NULL) && n > 0) {
    len += n;
  }
  buf[len] = '\0';
  return len;
}

int pfd_test_reap(int pid) {
  int code = 0, sig = 0;
  CHECK_EQ(pfd_process_wait(pid, -1, -1), 1);
  CHECK_EQ(pfd_process_reap(pid, &code, &sig), 1);
  return sig ? -sig : code;
}

int pfd_test_slot(int slot) { return (int)_get_osfhandle(slot); }
#else
size_t pfd_test_read_all(int fd, char *buf, size_t size) {
  size_t len = 0;
  for (;;) {
    ssize_t n = read(fd, buf + len, size - 1 - len);
    if (n < 0 && errno == EINTR) continue;
    CHECK(n >= 0);
    if (n == 0 || len + (size_t)n >= size - 1) {
      len += (size_t)(n > 0 ? n : 0);
      break;
    }
    len += (size_t)n;
  }
  buf[len] = '\0';
  return len;
}

int pfd_test_reap(int pid) {
  int status;
  while (waitpid(pid, &status, 0) < 0) CHECK(errno == EINTR);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return WEXITSTATUS(status);
}

int pfd_test_slot(int slot) { return slot; }
#endif

#ifdef _WIN32
/* Windows: "self --run NAME" through pfd_spawn, its stdio this process's. */
static int run_one(const test_entry_t *t) {
  pfd_stdio_t stdio[3] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_INHERIT_SAME, -1},
                          {PFD_STDIO_INHERIT_SAME, -1}};
  pfd_spawn_result_t r;
  int code;
  CHECK_EQ(spawn_self("--run", t->name, NULL, stdio, 3, 0, &r), 0);
  code = pfd_test_reap(r.pid);
  if (code < 0) {
    fprintf(stderr, "%s: killed (signal %d)\n", t->name, -code);
    return 1;
  }
  return code;
}
#else
static int run_one(const test_entry_t *t) {
  int status;
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    execl(pfd_test_self, pfd_test_self, "--run", t->name, (char *)NULL);
    _exit(126);
  }
  while (waitpid(pid, &status, 0) < 0) CHECK(errno == EINTR);
  if (WIFSIGNALED(status)) {
    fprintf(stderr, "%s: killed by signal %d\n", t->name, WTERMSIG(status));
    return 1;
  }
  return WEXITSTATUS(status);
}
#endif

int main(int argc, char **argv) {
  size_t i, passed = 0, failed = 0, skipped = 0;
#ifdef _WIN32
  static char self[MAX_PATH * 4];
  WSADATA wsa;
  if (GetModuleFileNameA(NULL, self, sizeof(self)) == 0 || WSAStartup(MAKEWORD(2, 2), &wsa) != 0) {
    fprintf(stderr, "cannot start: error %lu\n", GetLastError());
    return 2;
  }
#else
  static char self[PATH_MAX];
  if (realpath(argv[0], self) == NULL) {
    perror("realpath");
    return 2;
  }
#endif
  pfd_test_self = self;
  setvbuf(stdout, NULL, _IONBF, 0);
  if (argc >= 3 && strcmp(argv[1], "--child") == 0) {
    for (i = 0; i < sizeof(children) / sizeof(children[0]); i++) {
      if (strcmp(children[i].name, argv[2]) == 0) return children[i].fn(argc - 3, argv + 3);
    }
    fprintf(stderr, "no child role %s\n", argv[2]);
    return 2;
  }
  if (argc >= 3 && strcmp(argv[1], "--run") == 0) {
    for (i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
      if (strcmp(tests[i].name, argv[2]) == 0) return tests[i].fn();
    }
    fprintf(stderr, "no test %s\n", argv[2]);
    return 2;
  }
  for (i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
    if (argc >= 2 && strstr(tests[i].name, argv[1]) == NULL) continue;
    int r = run_one(&tests[i]);
    if (r == 0) {
      passed++;
      printf("ok %zu - %s\n", i + 1, tests[i].name);
    } else if (r == PFD_TEST_SKIP) {
      skipped++;
      printf("ok %zu - %s # SKIP\n", i + 1, tests[i].name);
    } else {
      failed++;
      printf("not ok %zu - %s (exit %d)\n", i + 1, tests[i].name, r);
    }
  }
  printf("%zu passed, %zu failed, %zu skipped\n", passed, failed, skipped);
  return failed ? 1 : 0;
}
