/* children.c - the roles this binary plays as a spawned child ("--child NAME ARG"). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runner.h"

/* exit CODE */
CHILD_IMPL(exit) { return argc > 0 ? atoi(argv[0]) : 0; }

/* write TEXT: TEXT to stdout and "err:" TEXT to stderr. */
CHILD_IMPL(write) {
  const char *text = argc > 0 ? argv[0] : "";
  if (fputs(text, stdout) < 0) return 3;
  if (fprintf(stderr, "err:%s", text) < 0) return 3;
  return 0;
}

/* list_fds: the descriptors this process holds, space-separated, to stdout. */
CHILD_IMPL(list_fds) {
  char line[4096] = "";
  struct dirent *e;
  DIR *d = opendir("/proc/self/fd");
  (void)argc;
  (void)argv;
  if (d == NULL) return 3;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d)) continue;
    strncat(line, e->d_name, sizeof(line) - strlen(line) - 2);
    strcat(line, " ");
  }
  closedir(d);
  printf("%s", line);
  return 0;
}

/* signal_state: "blocked=<SigBlk> ignored=<SigIgn>" from /proc/self/status. */
CHILD_IMPL(signal_state) {
  char line[256], blk[64] = "?", ign[64] = "?";
  FILE *f = fopen("/proc/self/status", "r");
  (void)argc;
  (void)argv;
  if (f == NULL) return 3;
  while (fgets(line, sizeof(line), f) != NULL) {
    if (sscanf(line, "SigBlk: %63s", blk) == 1) continue;
    (void)sscanf(line, "SigIgn: %63s", ign);
  }
  fclose(f);
  printf("blocked=%s ignored=%s", blk, ign);
  return 0;
}

/* session: "leader" when this process leads its session, else "member". */
CHILD_IMPL(session) {
  (void)argc;
  (void)argv;
  printf("%s", getsid(0) == getpid() ? "leader" : "member");
  return 0;
}

/* ids: "uid gid" */
CHILD_IMPL(ids) {
  (void)argc;
  (void)argv;
  printf("%d %d", (int)getuid(), (int)getgid());
  return 0;
}

/* sleep SECONDS */
CHILD_IMPL(sleep) {
  sleep((unsigned)(argc > 0 ? atoi(argv[0]) : 10));
  return 0;
}

/* spew BYTES: BYTES of 'o' to stdout and of 'e' to stderr, interleaved in 4 KiB blocks, then
 * everything from stdin echoed to stdout. */
CHILD_IMPL(spew) {
  char block[4096];
  long left = argc > 0 ? atol(argv[0]) : 0;
  ssize_t n;
  while (left > 0) {
    size_t chunk = left > (long)sizeof(block) ? sizeof(block) : (size_t)left;
    memset(block, 'o', chunk);
    if (write(1, block, chunk) != (ssize_t)chunk) return 3;
    memset(block, 'e', chunk);
    if (write(2, block, chunk) != (ssize_t)chunk) return 3;
    left -= (long)chunk;
  }
  while ((n = read(0, block, sizeof(block))) > 0) {
    if (write(1, block, (size_t)n) != n) return 3;
  }
  return 0;
}

/* swapped: "three" to fd 3 and "four" to fd 4. */
CHILD_IMPL(swapped) {
  (void)argc;
  (void)argv;
  if (write(3, "three", 5) != 5 || write(4, "four", 4) != 4) return 3;
  return 0;
}

/* spawn_orphan: starts "sleep 30" with PFD_SPAWN_PDEATHSIG (SIGKILL), prints its pid, and
 * exits at once: the grandchild must die with it. */
CHILD_IMPL(spawn_orphan) {
  pfd_stdio_t stdio[3] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1}, {PFD_STDIO_INHERIT, 2}};
  pfd_spawn_result_t r;
  char *args[] = {(char *)pfd_test_self, (char *)"--child", (char *)"sleep", (char *)"30", NULL};
  pfd_spawn_options_t o;
  (void)argc;
  (void)argv;
  memset(&o, 0, sizeof(o));
  o.file = pfd_test_self;
  o.argv = args;
  o.stdio = stdio;
  o.stdio_count = 3;
  o.flags = PFD_SPAWN_PDEATHSIG;
  o.pdeathsig = SIGKILL;
  if (pfd_spawn(&o, &r) < 0) return 3;
  printf("%d", r.pid);
  return 0;
}
