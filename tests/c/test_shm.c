/* test_shm.c - anonymous shared memory: sealed size, nothing left in /dev/shm, and a ring
 * between two processes over memory whose descriptor went through SCM_RIGHTS. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sys/mman.h>

#include "runner.h"

static int count_dev_shm(void) {
  DIR *d = opendir("/dev/shm");
  int n = 0;
  if (d == NULL) return 0;
  while (readdir(d) != NULL) n++;
  closedir(d);
  return n;
}

TEST_IMPL(shm_create_map_and_seals) {
  int before_files = count_dev_shm(), before_fds = pfd_test_count_fds(), fd, pipefd[2];
  void *a, *b;
  fd = pfd_shm_create("pfd-test", 1 << 16);
  CHECK(fd >= 0);
  CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
  CHECK_EQ(pfd_shm_size(fd), 1 << 16);
  CHECK_EQ(count_dev_shm(), before_files); /* no name anywhere */
  CHECK_EQ(pfd_shm_map(fd, 1 << 16, &a), 0);
  CHECK_EQ(pfd_shm_map(fd, 1 << 16, &b), 0);
  memcpy(a, "shared", 6);
  CHECK(memcmp(b, "shared", 6) == 0); /* two mappings, one memory */
#ifdef __linux__
  CHECK(ftruncate(fd, 1 << 10) != 0 && errno == EPERM); /* sealed: no SIGBUS for the peer */
  CHECK(ftruncate(fd, 1 << 20) != 0 && errno == EPERM);
#endif
  CHECK_EQ(pfd_shm_unmap(a, 1 << 16), 0);
  CHECK_EQ(pfd_shm_unmap(b, 1 << 16), 0);
  close(fd);
  CHECK_EQ(pfd_shm_create("x", 0), -EINVAL);
  CHECK(pipe(pipefd) == 0);
  CHECK_EQ(pfd_shm_size(pipefd[0]), -EINVAL); /* not shared memory */
  close(pipefd[0]);
  close(pipefd[1]);
  CHECK_EQ(pfd_shm_size(-1), -EBADF);
#ifdef __linux__
  { /* Memory a peer could shrink under a mapping is refused. */
    int unsealed = memfd_create("pfd-test-unsealed", MFD_CLOEXEC);
    CHECK(unsealed >= 0);
    CHECK(ftruncate(unsealed, 1 << 16) == 0);
    CHECK_EQ(pfd_shm_size(unsealed), -EPERM);
    close(unsealed);
  }
#endif
  CHECK_EQ(pfd_test_count_fds(), before_fds);
  return 0;
}

TEST_IMPL(shm_ring_between_processes) {
  size_t size = pfd_ring_size(1 << 14);
  int sv[2], fd, status;
  pid_t pid;
  void *mem;
  pfd_ring_t c;
  unsigned i;
  CHECK(pfd_fd_pair(sv) == 0);
  pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) { /* the producer: gets the memory as a descriptor, like a peer would */
    int got = -1, n = 0;
    char byte;
    pfd_ring_t p;
    close(sv[0]);
    if (pfd_fd_recv(sv[1], &byte, 1, &got, 1, &n, PFD_FD_BLOCK) != 1 || n != 1) _exit(2);
    if (pfd_shm_map(got, (size_t)pfd_shm_size(got), &mem) != 0) _exit(3);
    if (pfd_ring_attach(&p, mem, size) != 0) _exit(4);
    for (i = 0; i < 5000; i++) {
      unsigned char *out;
      while (pfd_ring_reserve(&p, sizeof(i), &out) == -EAGAIN) {
        if (pfd_ring_wait(&p, PFD_RING_WAIT_SPACE, sizeof(i), 10000, sv[1]) != 1) _exit(5);
      }
      memcpy(out, &i, sizeof(i));
      pfd_ring_commit(&p, sizeof(i));
      pfd_ring_notify(&p, PFD_RING_WAIT_DATA);
    }
    _exit(0);
  }
  close(sv[1]);
  fd = pfd_shm_create("pfd-ring", size);
  CHECK(fd >= 0);
  CHECK_EQ(pfd_shm_map(fd, size, &mem), 0);
  CHECK_EQ(pfd_ring_init(mem, size, 1 << 14), 0);
  CHECK_EQ(pfd_fd_send(sv[0], "r", 1, NULL, 0, &fd, 1, PFD_FD_BLOCK), 1);
  close(fd);
  CHECK_EQ(pfd_ring_attach(&c, mem, size), 0);
  for (i = 0; i < 5000; i++) {
    const unsigned char *view;
    unsigned got;
    long long n;
    while ((n = pfd_ring_peek(&c, &view)) == -EAGAIN) {
      CHECK_EQ(pfd_ring_wait(&c, PFD_RING_WAIT_DATA, 0, 10000, sv[0]), 1);
    }
    CHECK_EQ(n, sizeof(got));
    memcpy(&got, view, sizeof(got));
    CHECK_EQ(got, i);
    CHECK_EQ(pfd_ring_release(&c, 1), 0);
    pfd_ring_notify(&c, PFD_RING_WAIT_SPACE);
  }
  CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
  /* The producer is gone: a consumer waiting for more hears it through the channel. */
  CHECK_EQ(pfd_ring_wait(&c, PFD_RING_WAIT_DATA, 0, 10000, sv[0]), -EPIPE);
  close(sv[0]);
  CHECK_EQ(pfd_shm_unmap(mem, size), 0);
  return 0;
}
