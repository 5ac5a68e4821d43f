/* test_process.c - waiting, reaping, signalling and collecting output. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runner.h"

static int start(const char *name, const char *arg, pfd_stdio_t *stdio, int count) {
  pfd_spawn_result_t r;
  CHECK_EQ(pfd_test_spawn_child(name, arg, stdio, count, 0, &r), 0);
  return r.pid;
}

TEST_IMPL(process_wait_timeout_kill) {
  pfd_stdio_t stdio[3] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1}, {PFD_STDIO_INHERIT, 2}};
  int pid = start("sleep", "30", stdio, 3), handle, code = 0, sig = 0;
  handle = pfd_process_open(pid);
  if (handle == -ENOSYS) {
    fprintf(stderr, "no pidfd on this kernel\n");
    kill(pid, SIGKILL);
    pfd_test_reap(pid);
    return PFD_TEST_SKIP;
  }
  CHECK(handle >= 0);
  CHECK_EQ(pfd_process_wait(pid, handle, 50), 0);
  CHECK_EQ(pfd_process_wait(pid, -1, 50), -ENOSYS);
  CHECK_EQ(pfd_process_reap(pid, &code, &sig), 0);
  CHECK_EQ(pfd_process_kill(pid, handle, SIGTERM), 0);
  CHECK_EQ(pfd_process_wait(pid, handle, 5000), 1);
  /* The wait left it a zombie: still ours to reap, and a blocking wait returns at once. */
  CHECK_EQ(pfd_process_wait(pid, -1, -1), 1);
  CHECK_EQ(pfd_process_reap(pid, &code, &sig), 1);
  CHECK_EQ(code, -1);
  CHECK_EQ(sig, SIGTERM);
  close(handle);
  return 0;
}

TEST_IMPL(process_reap_twice) {
  pfd_stdio_t stdio[3] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_IGNORE, -1}, {PFD_STDIO_INHERIT, 2}};
  int pid = start("exit", "7", stdio, 3), code = 0, sig = 0;
  CHECK_EQ(pfd_process_wait(pid, -1, -1), 1);
  CHECK_EQ(pfd_process_reap(pid, &code, &sig), 1);
  CHECK_EQ(code, 7);
  CHECK_EQ(sig, 0);
  CHECK_EQ(pfd_process_reap(pid, &code, &sig), -ECHILD);
  CHECK_EQ(pfd_process_kill(0, -1, SIGTERM), -EINVAL);
  CHECK_EQ(pfd_process_wait(-1, -1, -1), -EINVAL);
  return 0;
}

static void collect_start(pfd_collect_t *c, const char *bytes, int *pid) {
  pfd_stdio_t stdio[3] = {{PFD_STDIO_PIPE, -1}, {PFD_STDIO_PIPE, -1}, {PFD_STDIO_PIPE, -1}};
  *pid = start("spew", bytes, stdio, 3);
  memset(c, 0, sizeof(*c));
  c->in_fd = stdio[0].fd;
  c->out_fd[0] = stdio[1].fd;
  c->out_fd[1] = stdio[2].fd;
}

TEST_IMPL(collect_both_streams) {
  /* 1 MiB on each stream, and 1 MiB of input echoed back: far beyond any pipe buffer, so
   * a loop that served one descriptor at a time would deadlock. */
  static char input[1 << 20];
  pfd_collect_t c;
  int pid, before = pfd_test_count_fds();
  size_t i;
  memset(input, 'i', sizeof(input));
  collect_start(&c, "1048576", &pid);
  c.input = input;
  c.input_size = sizeof(input);
  CHECK_EQ(pfd_collect_run(&c, 20000), 0);
  CHECK_EQ(c.out[0].size, 2 << 20);
  CHECK_EQ(c.out[1].size, 1 << 20);
  CHECK_EQ(c.input_done, sizeof(input));
  for (i = 0; i < (1u << 20); i++) CHECK(c.out[0].data[i] == 'o' && c.out[1].data[i] == 'e');
  CHECK(c.out[0].data[(2 << 20) - 1] == 'i');
  CHECK_EQ(c.in_fd, -1);
  CHECK_EQ(c.out_fd[0], -1);
  pfd_collect_close(&c);
  CHECK_EQ(pfd_test_reap(pid), 0);
  CHECK_EQ(pfd_test_count_fds(), before);
  return 0;
}

TEST_IMPL(collect_max_buffer) {
  pfd_collect_t c;
  int pid;
  collect_start(&c, "1048576", &pid);
  c.max_buffer = 10000;
  CHECK_EQ(pfd_collect_run(&c, 20000), -ENOBUFS);
  CHECK(c.overflow == 1 || c.overflow == 2);
  /* The read that went over is kept whole: more than the limit, by one read at most. */
  CHECK(c.out[c.overflow - 1].size > 10000);
  CHECK(c.out[c.overflow - 1].size <= 4 * 65536); /* (the first buffer's room) */
  {
    size_t kept = c.out[c.overflow - 1].size;
    CHECK_EQ(pfd_collect_run(&c, 0), -ENOBUFS); /* it stays over, and reads no more */
    CHECK_EQ(c.out[c.overflow - 1].size, kept);
  }
  kill(pid, SIGKILL);
  pfd_collect_close(&c);
  CHECK_EQ(pfd_test_reap(pid), -SIGKILL);
  return 0;
}

TEST_IMPL(collect_timeout) {
  pfd_stdio_t stdio[3] = {{PFD_STDIO_IGNORE, -1}, {PFD_STDIO_PIPE, -1}, {PFD_STDIO_PIPE, -1}};
  pfd_collect_t c;
  int pid = start("sleep", "30", stdio, 3);
  memset(&c, 0, sizeof(c));
  c.in_fd = -1;
  c.out_fd[0] = stdio[1].fd;
  c.out_fd[1] = stdio[2].fd;
  CHECK_EQ(pfd_collect_run(&c, 30), -ETIMEDOUT);
  CHECK_EQ(pfd_collect_run(&c, 0), -ETIMEDOUT);
  kill(pid, SIGKILL);
  CHECK_EQ(pfd_collect_run(&c, 5000), 0); /* the pipes reach EOF once it is dead */
  pfd_collect_close(&c);
  CHECK_EQ(pfd_test_reap(pid), -SIGKILL);
  return 0;
}

/* A child that watches its channel: killed when the peer hangs up, unless it disarmed the
 * watch (how 1) or its parent set the spare word before hanging up (how 2; how 3: the
 * word is watched but left 0); a close of its own descriptor does not count as a hang-up. */
static int watch_child(int how) {
  int sv[2], status = 0;
  char c = 0;
  pid_t pid;
  unsigned long long *word =
      mmap(NULL, 8, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  CHECK(word != MAP_FAILED);
  *word = 0;
  CHECK_EQ(pfd_fd_pair(sv), 0);
  pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    close(sv[0]);
    if (pfd_process_watch_hangup(sv[1]) != 0) _exit(3);
    if (how == 1) pfd_process_unwatch();
    if (how >= 2) pfd_process_spare_on_hangup(word);
    if (write(sv[1], "r", 1) != 1) _exit(4);
    close(sv[1]); /* the watch has a copy of its own: this is no hang-up */
    sleep(2);
    _exit(5);
  }
  close(sv[1]);
  CHECK_EQ(read(sv[0], &c, 1), 1);
  usleep(200 * 1000);
  CHECK_EQ(waitpid(pid, &status, WNOHANG), 0); /* alive after its own close */
  if (how == 2) *word = 1; /* let go on purpose */
  close(sv[0]); /* the parent's hang-up */
  CHECK_EQ(waitpid(pid, &status, 0), pid);
  CHECK_EQ(munmap(word, 8), 0);
  return status;
}

TEST_IMPL(process_watch_hangup) {
  int status = watch_child(0);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  status = watch_child(1);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 5);
  status = watch_child(2); /* spared: it finishes */
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 5);
  status = watch_child(3); /* watched word left 0: killed */
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  return 0;
}
