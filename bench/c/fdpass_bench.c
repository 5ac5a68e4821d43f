/* fdpass_bench.c - the C limit for passing descriptors over a socketpair.
 *
 * Usage: fdpass_bench [--per-message K] [--seconds S]
 * A child echoes nothing: it receives messages with K descriptors each and closes them; the
 * parent sends as fast as it can for S seconds.  Prints "<K> <descriptors per second>". */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pyforkd.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  int per = 1, sv[2], i, fds[PFD_FRAME_MAX_FDS];
  double seconds = 1.0, t0;
  long sent = 0;
  pid_t pid;
  for (i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--per-message") == 0) per = atoi(argv[i + 1]);
    if (strcmp(argv[i], "--seconds") == 0) seconds = atof(argv[i + 1]);
  }
  if (per < 1 || per > PFD_FRAME_MAX_FDS) return 2;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return 1;
  pid = fork();
  if (pid == 0) {
    char buf[4096];
    int got[PFD_FRAME_MAX_FDS], n;
    close(sv[0]);
    for (;;) {
      long r = pfd_fd_recv(sv[1], buf, sizeof(buf), got, PFD_FRAME_MAX_FDS, &n, PFD_FD_BLOCK);
      if (r <= 0) _exit(0);
      while (n > 0) close(got[--n]);
    }
  }
  close(sv[1]);
  for (i = 0; i < per; i++) fds[i] = 0; /* stdin, duplicated into the child each time */
  t0 = now();
  while (now() - t0 < seconds) {
    int k;
    for (k = 0; k < 256; k++) {
      if (pfd_fd_send(sv[0], "x", 1, NULL, 0, fds, per, PFD_FD_BLOCK) != 1) return 1;
      sent += per;
    }
  }
  t0 = now() - t0;
  close(sv[0]);
  waitpid(pid, NULL, 0);
  printf("%d %.0f\n", per, sent / t0);
  return 0;
}
