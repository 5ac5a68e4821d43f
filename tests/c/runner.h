/* runner.h - the C test harness: one list of tests (test_list.h), each run in its own
 * process by re-executing this binary, which also serves as every child the tests need
 * ("runner --child NAME ARGS..."), so no helper binaries exist.  A test returns 0 (pass),
 * 77 (skip, with a reason printed) or fails through CHECK, which prints the condition. */
#ifndef PFD_TEST_RUNNER_H
#define PFD_TEST_RUNNER_H

#include <stdio.h>
#include <stdlib.h>

#include "pyforkd.h"

#define PFD_TEST_SKIP 77

#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);  \
      exit(1);                                                                   \
    }                                                                            \
  } while (0)

#define CHECK_EQ(a, b)                                                                 \
  do {                                                                                 \
    long long pfd_a_ = (long long)(a), pfd_b_ = (long long)(b);                        \
    if (pfd_a_ != pfd_b_) {                                                            \
      fprintf(stderr, "%s:%d: check failed: %s == %s (%lld != %lld)\n", __FILE__,      \
              __LINE__, #a, #b, pfd_a_, pfd_b_);                                        \
      exit(1);                                                                         \
    }                                                                                  \
  } while (0)

#define TEST_IMPL(name) int pfd_test_##name(void)
#define CHILD_IMPL(name) int pfd_child_##name(int argc, char **argv)

/* The path of this binary, for tests that spawn it as a child. */
extern const char *pfd_test_self;

/* Helpers shared by the tests (runner.c), on every platform. */
/* Descriptors (Windows: handles) this process holds. */
int pfd_test_count_fds(void);
/* Spawns "self --child NAME ARG" with the given stdio and flags; returns pfd_spawn's code. */
int pfd_test_spawn_child(const char *name, const char *arg, pfd_stdio_t *stdio, int count,
                         unsigned flags, pfd_spawn_result_t *result);
/* The same with the arguments in a NULL-terminated list (NULL: none). */
int pfd_test_spawn_child_argv(const char *name, const char *const *args, pfd_stdio_t *stdio,
                              int count, unsigned flags, pfd_spawn_result_t *result);
/* Reads a descriptor to EOF into buf (NUL-terminated); returns the length. */
size_t pfd_test_read_all(int fd, char *buf, size_t size);
/* Waits for and reaps pid; returns its exit code, or -signal. */
int pfd_test_reap(int pid);
/* The channel or pipe a child was given at stdio slot `slot`, as the C core takes it. */
int pfd_test_slot(int slot);

#endif
