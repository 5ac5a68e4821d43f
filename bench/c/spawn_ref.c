/* spawn_ref.c - one spawn+reap of a program per call, by each C method, built as a shared
 * library so that bench/bench_spawn.py can alternate them call by call with the Python
 * methods in one process (ctypes costs about a microsecond a call, against ~500 for the
 * spawn).  Each returns the child's exit status, or -1 when the spawn failed. */
#define _GNU_SOURCE
#include <spawn.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pyforkd.h"

extern char **environ;

static int reap(pid_t pid) {
  int status;
  if (pid <= 0 || waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int ref_vfork_exec(const char *path) {
  char *argv[] = {(char *)path, NULL};
  pid_t pid = vfork();
  if (pid == 0) {
    execve(path, argv, environ);
    _exit(127);
  }
  return reap(pid);
}

int ref_fork_exec(const char *path) {
  char *argv[] = {(char *)path, NULL};
  pid_t pid = fork();
  if (pid == 0) {
    execve(path, argv, environ);
    _exit(127);
  }
  return reap(pid);
}

int ref_posix_spawn(const char *path) {
  char *argv[] = {(char *)path, NULL};
  pid_t pid;
  if (posix_spawn(&pid, path, NULL, NULL, argv, environ) != 0) return -1;
  return reap(pid);
}

int ref_pfd_spawn(const char *path, unsigned flags) {
  char *argv[] = {(char *)path, NULL};
  pfd_stdio_t stdio[3] = {{PFD_STDIO_INHERIT, 0}, {PFD_STDIO_INHERIT, 1}, {PFD_STDIO_INHERIT, 2}};
  pfd_spawn_options_t o;
  pfd_spawn_result_t r;
  memset(&o, 0, sizeof(o));
  o.file = path;
  o.argv = argv;
  o.stdio = stdio;
  o.stdio_count = 3;
  o.flags = flags;
  if (pfd_spawn(&o, &r) != 0) return -1;
  return reap(r.pid);
}
