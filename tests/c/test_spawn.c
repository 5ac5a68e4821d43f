/* test_spawn.c - pfd_spawn: exit codes, failures and the step that failed, stdio placement,
 * descriptor hygiene, signal state, sessions, PATH, identity, parent-death signal.  Each
 * behaviour is checked on the posix_spawn fast path and on the vfork general path. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "runner.h"

/* Both ways in: posix_spawn and the vfork/fork path. */
static const unsigned paths[2] = {PFD_SPAWN_USE_POSIX_SPAWN, PFD_SPAWN_USE_FORK_PATH};

/* Spawns "self --child NAME ARG" with stdout on a pipe and returns what it printed. */
static int run_capture(const char *name, const char *arg, unsigned flags, char *out,
                       size_t size) {
  pfd_stdio_t stdio[3] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_PIPE, -1}, {PFD_STDIO_INHERIT, 2}};
  pfd_spawn_result_t r;
  CHECK_EQ(pfd_test_spawn_child(name, arg, stdio, 3, flags, &r), 0);
  CHECK(stdio[1].fd >= 0);
  pfd_test_read_all(stdio[1].fd, out, size);
  close(stdio[1].fd);
  return pfd_test_reap(r.pid);
}

TEST_IMPL(spawn_exit_code) {
  int p;
  for (p = 0; p < 2; p++) {
    pfd_stdio_t stdio[3] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1},
                            {PFD_STDIO_INHERIT, 2}};
    pfd_spawn_result_t r;
    CHECK_EQ(pfd_test_spawn_child("exit", "42", stdio, 3, paths[p], &r), 0);
    CHECK(r.pid > 0);
    CHECK_EQ(pfd_test_reap(r.pid), 42);
  }
  return 0;
}

TEST_IMPL(spawn_missing_program) {
  int p, before = pfd_test_count_fds();
  for (p = 0; p < 2; p++) {
    char *argv[] = {(char *)"pfd-no-such-program", NULL};
    pfd_stdio_t stdio[3] = {{PFD_STDIO_PIPE, -1}, {PFD_STDIO_PIPE, -1}, {PFD_STDIO_PIPE, -1}};
    pfd_spawn_options_t o;
    pfd_spawn_result_t r;
    memset(&o, 0, sizeof(o));
    o.file = argv[0];
    o.argv = argv;
    o.stdio = stdio;
    o.stdio_count = 3;
    o.flags = paths[p];
    CHECK_EQ(pfd_spawn(&o, &r), -ENOENT);
    CHECK_EQ(r.step, PFD_STEP_RESOLVE);
    CHECK_EQ(stdio[0].fd, -1);
    /* With a slash there is no search: exec itself fails, and says so. */
    o.file = "/pfd/no/such/program";
    CHECK_EQ(pfd_spawn(&o, &r), -ENOENT);
    CHECK_EQ(r.step, PFD_STEP_EXEC);
  }
  CHECK_EQ(pfd_test_count_fds(), before);
  return 0;
}

TEST_IMPL(spawn_not_executable) {
  char path[] = "/tmp/pfd-test-noexec-XXXXXX";
  int p, fd = mkstemp(path);
  CHECK(fd >= 0);
  CHECK(write(fd, "#!/bin/sh\n", 10) == 10);
  close(fd);
  CHECK(chmod(path, 0644) == 0);
  for (p = 0; p < 2; p++) {
    char *argv[] = {path, NULL};
    pfd_spawn_options_t o;
    pfd_spawn_result_t r;
    memset(&o, 0, sizeof(o));
    o.file = path;
    o.argv = argv;
    o.flags = paths[p];
    if (geteuid() != 0) {
      CHECK_EQ(pfd_spawn(&o, &r), -EACCES);
      CHECK_EQ(r.step, PFD_STEP_EXEC);
    } else {
      /* root may read anything but still cannot exec a file with no x bit. */
      CHECK_EQ(pfd_spawn(&o, &r), -EACCES);
    }
  }
  unlink(path);
  return 0;
}

TEST_IMPL(spawn_missing_cwd) {
  int p, before = pfd_test_count_fds();
  for (p = 0; p < 2; p++) {
    char *argv[] = {(char *)pfd_test_self, (char *)"--child", (char *)"exit", (char *)"0", NULL};
    pfd_stdio_t stdio[2] = {{PFD_STDIO_PIPE, -1}, {PFD_STDIO_PIPE, -1}};
    pfd_spawn_options_t o;
    pfd_spawn_result_t r;
    memset(&o, 0, sizeof(o));
    o.file = pfd_test_self;
    o.argv = argv;
    o.cwd = "/pfd/no/such/dir";
    o.stdio = stdio;
    o.stdio_count = 2;
    o.flags = paths[p];
    CHECK_EQ(pfd_spawn(&o, &r), -ENOENT);
    CHECK_EQ(r.step, PFD_STEP_CHDIR);
    CHECK_EQ(stdio[1].fd, -1);
  }
  CHECK_EQ(pfd_test_count_fds(), before);
  return 0;
}

TEST_IMPL(spawn_exec_failure_step) {
  /* A directory is found by no PATH search, but named directly it fails in exec. */
  int p;
  for (p = 0; p < 2; p++) {
    char *argv[] = {(char *)"/tmp", NULL};
    pfd_spawn_options_t o;
    pfd_spawn_result_t r;
    memset(&o, 0, sizeof(o));
    o.file = "/tmp";
    o.argv = argv;
    o.flags = paths[p];
    CHECK_EQ(pfd_spawn(&o, &r), -EACCES);
    CHECK_EQ(r.step, PFD_STEP_EXEC);
  }
  return 0;
}

TEST_IMPL(spawn_failure_repeated) {
  /* The first vfork-path spawn of a process learns whether the child's record reaches the
   * parent's memory (it does under a real vfork, not under valgrind), the later ones rely
   * on that: every one of them must report the failing step exactly, and a success after
   * failures must still be a success. */
  int i, before = pfd_test_count_fds();
  for (i = 0; i < 6; i++) {
    char *argv[] = {(char *)pfd_test_self, (char *)"--child", (char *)"exit", (char *)"5", NULL};
    pfd_spawn_options_t o;
    pfd_spawn_result_t r;
    memset(&o, 0, sizeof(o));
    o.file = pfd_test_self;
    o.argv = argv;
    o.flags = PFD_SPAWN_USE_FORK_PATH;
    o.cwd = i % 2 ? "/pfd/no/such/dir" : NULL;
    if (i == 4) o.file = "/pfd/no/such/program";
    if (i % 2 == 0 && i != 4) {
      CHECK_EQ(pfd_spawn(&o, &r), 0);
      CHECK_EQ(pfd_test_reap(r.pid), 5);
    } else {
      CHECK_EQ(pfd_spawn(&o, &r), -ENOENT);
      CHECK_EQ(r.step, i == 4 ? PFD_STEP_EXEC : PFD_STEP_CHDIR);
    }
  }
  CHECK_EQ(pfd_test_count_fds(), before);
  return 0;
}

TEST_IMPL(spawn_stdio_pipes) {
  int p;
  for (p = 0; p < 2; p++) {
    char out[256], err[256];
    pfd_stdio_t stdio[3] = {{PFD_STDIO_PIPE, -1}, {PFD_STDIO_PIPE, -1}, {PFD_STDIO_PIPE, -1}};
    pfd_spawn_result_t r;
    CHECK_EQ(pfd_test_spawn_child("write", "hello", stdio, 3, paths[p], &r), 0);
    CHECK(stdio[0].fd >= 0 && stdio[1].fd >= 0 && stdio[2].fd >= 0);
    /* The parent's ends are close-on-exec, so no later child inherits them. */
    CHECK(fcntl(stdio[1].fd, F_GETFD) & FD_CLOEXEC);
    close(stdio[0].fd);
    pfd_test_read_all(stdio[1].fd, out, sizeof(out));
    pfd_test_read_all(stdio[2].fd, err, sizeof(err));
    close(stdio[1].fd);
    close(stdio[2].fd);
    CHECK_EQ(pfd_test_reap(r.pid), 0);
    CHECK(strcmp(out, "hello") == 0);
    CHECK(strcmp(err, "err:hello") == 0);
  }
  return 0;
}

static int move_high(int fd) {
  int moved = fcntl(fd, F_DUPFD_CLOEXEC, 20);
  CHECK(moved >= 20);
  close(fd);
  return moved;
}

TEST_IMPL(spawn_stdio_swapped_sources) {
  /* Slot 3 gets the parent's fd 4 and slot 4 its fd 3: a naive dup2 order loses one. */
  int p;
  for (p = 0; p < 2; p++) {
    int a[2], b[2];
    char out_a[64], out_b[64];
    pfd_stdio_t stdio[5] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1},
                            {PFD_STDIO_INHERIT, 2}, {PFD_STDIO_INHERIT, 4},
                            {PFD_STDIO_INHERIT, 3}};
    pfd_spawn_result_t r;
    CHECK(pipe(a) == 0 && pipe(b) == 0);
    /* Move all four ends clear of 3 and 4 before placing the write ends there. */
    a[0] = move_high(a[0]);
    a[1] = move_high(a[1]);
    b[0] = move_high(b[0]);
    b[1] = move_high(b[1]);
    CHECK(dup2(a[1], 3) == 3 && dup2(b[1], 4) == 4);
    close(a[1]);
    close(b[1]);
    CHECK_EQ(pfd_test_spawn_child("swapped", "", stdio, 5, paths[p], &r), 0);
    close(3);
    close(4);
    pfd_test_read_all(a[0], out_a, sizeof(out_a));
    pfd_test_read_all(b[0], out_b, sizeof(out_b));
    close(a[0]);
    close(b[0]);
    CHECK_EQ(pfd_test_reap(r.pid), 0);
    CHECK(strcmp(out_a, "four") == 0);  /* parent fd 3 (pipe a) sat at the child's slot 4 */
    CHECK(strcmp(out_b, "three") == 0);
  }
  return 0;
}

TEST_IMPL(spawn_fd_hygiene) {
  /* An inheritable descriptor in the parent must not reach the child. */
  int p, leak = open("/dev/null", O_RDONLY);
  CHECK(leak >= 0);
  CHECK((fcntl(leak, F_GETFD) & FD_CLOEXEC) == 0);
  for (p = 0; p < 2; p++) {
    char out[512];
    CHECK_EQ(run_capture("list_fds", "", paths[p], out, sizeof(out)), 0);
    CHECK(strcmp(out, "0 1 2 ") == 0);
  }
  close(leak);
  return 0;
}

TEST_IMPL(spawn_signals_reset) {
  /* The parent blocks SIGUSR2 and ignores SIGUSR1, SIGPIPE and SIGRTMIN; the child must
   * see none of that.  glibc's posix_spawn sets its two private signals (32 and 33, below
   * SIGRTMIN, which no program can name) to SIG_IGN in every child it starts, and no
   * attribute changes that: posix_spawn is held to every signal a program can use, the
   * vfork path (Linux's default) to all of them. */
  int p;
  sigset_t block;
  signal(SIGUSR1, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
#ifdef SIGRTMIN /* (macOS has no real-time signals) */
  signal(SIGRTMIN, SIG_IGN);
#endif
  sigemptyset(&block);
  sigaddset(&block, SIGUSR2);
  sigprocmask(SIG_BLOCK, &block, NULL);
  for (p = 0; p < 2; p++) {
    char out[256];
    unsigned long long blocked = ~0ULL, ignored = ~0ULL, libc_private = 0;
    CHECK_EQ(run_capture("signal_state", "", paths[p], out, sizeof(out)), 0);
    CHECK(sscanf(out, "blocked=%llx ignored=%llx", &blocked, &ignored) == 2);
#ifdef __GLIBC__
    if (paths[p] == PFD_SPAWN_USE_POSIX_SPAWN) libc_private = (1ULL << 31) | (1ULL << 32);
#endif
    if (blocked != 0 || (ignored & ~libc_private) != 0) {
      fprintf(stderr, "path %d: %s\n", p, out);
      CHECK(0);
    }
  }
  return 0;
}

TEST_IMPL(spawn_setsid) {
  int p;
  for (p = 0; p < 2; p++) {
    char out[64];
    CHECK_EQ(run_capture("session", "", paths[p] | PFD_SPAWN_SETSID, out, sizeof(out)), 0);
    CHECK(strcmp(out, "leader") == 0);
    CHECK_EQ(run_capture("session", "", paths[p], out, sizeof(out)), 0);
    CHECK(strcmp(out, "member") == 0);
  }
  return 0;
}

TEST_IMPL(spawn_env_path) {
  /* The program is searched in the child's PATH, not the parent's. */
  char dir[] = "/tmp/pfd-test-path-XXXXXX", prog[256], out[64];
  int p, fd;
  CHECK(mkdtemp(dir) != NULL);
  snprintf(prog, sizeof(prog), "%s/pfd-hello", dir);
  fd = open(prog, O_WRONLY | O_CREAT | O_TRUNC, 0755);
  CHECK(fd >= 0);
  CHECK(write(fd, "#!/bin/sh\nprintf found\n", 23) == 23);
  close(fd);
  for (p = 0; p < 2; p++) {
    char path_var[300];
    char *argv[] = {(char *)"pfd-hello", NULL};
    char *envp[] = {path_var, NULL};
    pfd_stdio_t stdio[2] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_PIPE, -1}};
    pfd_spawn_options_t o;
    pfd_spawn_result_t r;
    snprintf(path_var, sizeof(path_var), "PATH=/pfd/nothing:%s:/bin", dir);
    memset(&o, 0, sizeof(o));
    o.file = "pfd-hello";
    o.argv = argv;
    o.envp = envp;
    o.stdio = stdio;
    o.stdio_count = 2;
    o.flags = paths[p];
    CHECK_EQ(pfd_spawn(&o, &r), 0);
    pfd_test_read_all(stdio[1].fd, out, sizeof(out));
    close(stdio[1].fd);
    CHECK_EQ(pfd_test_reap(r.pid), 0);
    CHECK(strcmp(out, "found") == 0);
    /* Without that PATH it is not found. */
    o.envp = NULL;
    CHECK_EQ(pfd_spawn(&o, &r), -ENOENT);
  }
  unlink(prog);
  rmdir(dir);
  return 0;
}

TEST_IMPL(spawn_uid_gid) {
  char out[64];
  pfd_stdio_t stdio[3] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_PIPE, -1}, {PFD_STDIO_INHERIT, 2}};
  pfd_spawn_result_t r;
  char *argv[] = {(char *)pfd_test_self, (char *)"--child", (char *)"ids", NULL};
  pfd_spawn_options_t o;
  memset(&o, 0, sizeof(o));
  o.file = pfd_test_self;
  o.argv = argv;
  o.stdio = stdio;
  o.stdio_count = 3;
  o.flags = PFD_SPAWN_SETUID | PFD_SPAWN_SETGID;
  o.uid = 65534;
  o.gid = 65534;
  if (geteuid() != 0) {
    /* Unprivileged: the general path reports the exact step that was refused. */
    CHECK_EQ(pfd_spawn(&o, &r), -EPERM);
    CHECK_EQ(r.step, PFD_STEP_SETGID);
    return 0;
  }
  CHECK_EQ(pfd_spawn(&o, &r), 0);
  pfd_test_read_all(stdio[1].fd, out, sizeof(out));
  close(stdio[1].fd);
  CHECK_EQ(pfd_test_reap(r.pid), 0);
  CHECK(strcmp(out, "65534 65534") == 0);
  return 0;
}

TEST_IMPL(spawn_pdeathsig) {
  /* The middle process spawns a grandchild with the parent-death signal and exits. */
  char out[64];
  int grandchild, i;
  CHECK_EQ(run_capture("spawn_orphan", "", 0, out, sizeof(out)), 0);
  grandchild = atoi(out);
  CHECK(grandchild > 0);
  for (i = 0; i < 100; i++) { /* gone within 1 s; it is not our child, so probe it */
    struct timespec ts = {0, 10 * 1000 * 1000};
    char path[64], state = 0;
    FILE *f;
    snprintf(path, sizeof(path), "/proc/%d/stat", grandchild);
    f = fopen(path, "r");
    if (f == NULL) return 0;
    if (fscanf(f, "%*d %*s %c", &state) == 1 && state == 'Z') {
      fclose(f);
      return 0; /* dead, waiting for init to reap it */
    }
    fclose(f);
    nanosleep(&ts, NULL);
  }
  fprintf(stderr, "grandchild %d still alive\n", grandchild);
  return 1;
}

TEST_IMPL(spawn_bad_options) {
  char *argv[] = {(char *)"true", NULL};
  pfd_stdio_t stdio[1] = {{PFD_STDIO_INHERIT, 987}};
  pfd_stdio_t bad_kind[1] = {{42, -1}};
  pfd_spawn_options_t o;
  pfd_spawn_result_t r;
  int before = pfd_test_count_fds();
  CHECK_EQ(pfd_spawn(NULL, &r), -EINVAL);
  memset(&o, 0, sizeof(o));
  o.file = "true";
  CHECK_EQ(pfd_spawn(&o, &r), -EINVAL); /* no argv */
  o.argv = argv;
  o.stdio = stdio;
  o.stdio_count = 1;
  CHECK_EQ(pfd_spawn(&o, &r), -EBADF);
  CHECK_EQ(r.step, PFD_STEP_STDIO);
  CHECK_EQ(r.slot, 0);
  o.stdio = bad_kind;
  CHECK_EQ(pfd_spawn(&o, &r), -EINVAL);
  CHECK_EQ(r.slot, 0);
  bad_kind[0].kind = PFD_STDIO_CHANNEL; /* a channel is for slots 3 and up */
  CHECK_EQ(pfd_spawn(&o, &r), -EINVAL);
  CHECK_EQ(r.step, PFD_STEP_STDIO);
  o.file = "";
  CHECK_EQ(pfd_spawn(&o, &r), -ENOENT);
  CHECK_EQ(pfd_test_count_fds(), before);
  return 0;
}
