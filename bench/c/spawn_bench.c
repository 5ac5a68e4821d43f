/* spawn_bench.c - the C limit for spawn-and-reap of /bin/true.
 *
 * Usage: spawn_bench [--count N] [--reps R] [--mem-mib M]
 * Prints one line per method: "<method> <median microseconds per spawn+reap>".  With
 * --mem-mib the process first allocates and touches M MiB, to show which methods grow with
 * the parent's size (fork copies page tables; vfork and posix_spawn do not). */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pyforkd.h"

extern char **environ;

static char *true_argv[] = {(char *)"/bin/true", NULL};

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static void reap(pid_t pid) {
  int status;
  if (pid <= 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) {
    fprintf(stderr, "spawn_bench: child failed\n");
    exit(1);
  }
}

static void run_vfork(void) {
  pid_t pid = vfork();
  if (pid == 0) {
    execve(true_argv[0], true_argv, environ);
    _exit(127);
  }
  reap(pid);
}

static void run_fork(void) {
  pid_t pid = fork();
  if (pid == 0) {
    execve(true_argv[0], true_argv, environ);
    _exit(127);
  }
  reap(pid);
}

static void run_posix_spawn(void) {
  pid_t pid;
  if (posix_spawn(&pid, true_argv[0], NULL, NULL, true_argv, environ) != 0) exit(1);
  reap(pid);
}

static void run_pfd(unsigned flags) {
  pfd_stdio_t stdio[3] = {{PFD_STDIO_INHERIT, 0}, {PFD_STDIO_INHERIT, 1}, {PFD_STDIO_INHERIT, 2}};
  pfd_spawn_options_t o;
  pfd_spawn_result_t r;
  memset(&o, 0, sizeof(o));
  o.file = true_argv[0];
  o.argv = true_argv;
  o.stdio = stdio;
  o.stdio_count = 3;
  o.flags = flags;
  if (pfd_spawn(&o, &r) != 0) exit(1);
  reap(r.pid);
}

static void run_pfd_default(void) { run_pfd(0); }
static void run_pfd_posix(void) { run_pfd(PFD_SPAWN_USE_POSIX_SPAWN); }
static void run_pfd_fork_path(void) { run_pfd(PFD_SPAWN_USE_FORK_PATH); }

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef struct {
  const char *name;
  void (*fn)(void);
} method_t;

int main(int argc, char **argv) {
  static const method_t methods[] = {
      {"c_vfork_exec", run_vfork},         {"c_posix_spawn", run_posix_spawn},
      {"c_fork_exec", run_fork},           {"c_pfd_spawn", run_pfd_default},
      {"c_pfd_spawn_posix_spawn", run_pfd_posix}, {"c_pfd_spawn_fork_path", run_pfd_fork_path},
  };
  enum { NMETHODS = sizeof(methods) / sizeof(methods[0]), MAX_REPS = 64 };
  double samples[NMETHODS][MAX_REPS];
  int count = 200, reps = 7, i, m, r;
  size_t mem = 0;
  for (i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--count") == 0) count = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--reps") == 0) reps = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--mem-mib") == 0) mem = (size_t)atol(argv[i + 1]) << 20;
  }
  if (reps < 1 || reps > MAX_REPS || count < 1) {
    fprintf(stderr, "usage: spawn_bench [--count N] [--reps 1..64] [--mem-mib M]\n");
    return 2;
  }
  if (mem) {
    char *ballast = mmap(NULL, mem, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ballast == MAP_FAILED) {
      perror("mmap");
      return 1;
    }
    memset(ballast, 1, mem); /* touched: every page is really there */
  }
  /* Round-robin over the methods in each repetition, so that drift in the machine's load
   * falls on all of them alike. */
  for (r = 0; r < reps; r++) {
    for (m = 0; m < NMETHODS; m++) {
      double t0 = now_us();
      for (i = 0; i < count; i++) methods[m].fn();
      samples[m][r] = (now_us() - t0) / count;
    }
  }
  for (m = 0; m < NMETHODS; m++) {
    qsort(samples[m], (size_t)reps, sizeof(double), cmp_double);
    printf("%s %.1f\n", methods[m].name, samples[m][reps / 2]);
  }
  return 0;
}
