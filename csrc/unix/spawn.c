/*
 * spawn.c - starting a program on Unix (pfd_spawn).
 *
 * What it does: finds the program in PATH (the child's PATH when an environment is given,
 * as Node does), makes the stdio pipes, and starts the child with exactly the descriptors
 * named in options->stdio, an empty signal mask and every signal disposition at its
 * default.  There are two ways in, and neither grows with the parent's memory:
 *
 *  - posix_spawn(3), the default on macOS (implemented in its kernel) and wherever the
 *    C library offers the closefrom and chdir file actions.
 *  - the vfork path (fork outside Linux), then only async-signal-safe calls until exec.
 *    It is the default on Linux because it is the cheaper of the two there: glibc's
 *    posix_spawn maps and unmaps a stack for every child, and it leaves glibc's two
 *    private signals ignored in the child, where this path resets every disposition
 *    (measured in BENCHMARKS.md).  It also does what posix_spawn cannot express: uid/gid
 *    and the parent-death signal.  The child reports which step failed (chdir, dup2,
 *    setuid, exec, ...) in a record in the parent's memory, which a vfork child shares; a
 *    close-on-exec pipe carries the same record where that sharing is not there (fork,
 *    or a tool such as valgrind that turns vfork into fork).
 *
 * What it does not do: wait for, signal or read from the child (process.c), or pass
 * descriptors to a running process (fdpass.c).
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE
#endif
#if defined(__APPLE__) && !defined(_DARWIN_C_SOURCE)
#define _DARWIN_C_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef __linux__
#include <dirent.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#endif

#include "../common/atomic.h"
#include "internal.h"
#include "pyforkd.h"

extern char **environ;

/* The posix_spawn fast path needs closefrom (glibc 2.34) and chdir (2.29) file actions;
 * with both, adddup2(fd, fd) also clears close-on-exec (2.29, Austin Group issue 411). */
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
#define PFD__FAST_GLIBC 1
#elif defined(__APPLE__)
#define PFD__FAST_DARWIN 1
#endif

/* Which way is tried first without a PFD_SPAWN_USE_* flag (see the top of this file). */
#ifdef __linux__
#define PFD__POSIX_SPAWN_FIRST 0
#else
#define PFD__POSIX_SPAWN_FIRST 1
#endif

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#define PFD__PATH_MAX 4096
#define PFD__DEVNULL (-2) /* child_fd value: open /dev/null at this slot */
#define PFD__CLOSED (-1)  /* child_fd value: the slot is closed */

/* The record a failed child leaves for the parent before _exit(127). */
typedef struct pfd__child_error_s {
  int step; /* PFD_STEP_*; PFD_STEP_NONE while nothing failed */
  int err;
  int slot;
} pfd__child_error_t;

/* What the parent prepares before the child exists, so that the child only reads it, but
 * for `shared`, the one thing a vfork child writes into the parent's memory. */
typedef struct pfd__plan_s {
  const pfd_spawn_options_t *options;
  const char *path;      /* the resolved program */
  char **envp;
  int *child_fd;         /* per slot: the parent's descriptor to place there, or PFD__* */
  unsigned char *keep;   /* per slot: already in place and inheritable: nothing to do */
  int *owned;            /* descriptors the parent closes after the spawn */
  int owned_count;
  int max_fd;            /* for the last-resort close loop in the child */
  pid_t parent;
  int error_fd;          /* the write end of the error pipe, or -1 when `shared` serves */
  volatile int started;  /* set first thing by the child: tells whether memory is shared */
  volatile pfd__child_error_t shared;
  char path_buf[PFD__PATH_MAX];
} pfd__plan_t;

/* ---- finding the program -------------------------------------------------------------- */

static const char *pfd__env_path(char **envp) {
  const char *value;
  if (envp == NULL) {
    value = getenv("PATH");
  } else {
    value = NULL;
    for (; *envp != NULL; envp++) {
      if (strncmp(*envp, "PATH=", 5) == 0) {
        value = *envp + 5;
        break;
      }
    }
  }
  /* execvp's default when PATH is unset (glibc's confstr(_CS_PATH)). */
  return value != NULL ? value : "/bin:/usr/bin";
}

/* Is `candidate` (relative to `cwd` when it is relative and cwd is set) an executable
 * regular file?  Returns 0, -ENOENT to go on searching, or -EACCES. */
static int pfd__candidate_check(const char *candidate, const char *cwd) {
  char joined[PFD__PATH_MAX];
  const char *check = candidate;
  struct stat st;
  if (cwd != NULL && candidate[0] != '/') {
    size_t cwd_len = strlen(cwd), cand_len = strlen(candidate);
    if (cwd_len + 1 + cand_len + 1 > sizeof(joined)) return -ENOENT;
    memcpy(joined, cwd, cwd_len);
    joined[cwd_len] = '/';
    memcpy(joined + cwd_len + 1, candidate, cand_len + 1);
    check = joined;
  }
  if (stat(check, &st) < 0) {
    return (errno == EACCES || errno == EPERM) ? -EACCES : -ENOENT;
  }
  if (!S_ISREG(st.st_mode)) return -EACCES;
  if (faccessat(AT_FDCWD, check, X_OK, AT_EACCESS) < 0) return -EACCES;
  return 0;
}

/* Resolves options->file like execvp(3) does, but in the PATH of the child's environment,
 * and before the child exists, so that a missing program costs no process at all.  An
 * empty PATH entry means the current directory, which is the child's cwd. */
static int pfd__spawn_resolve(pfd__plan_t *plan) {
  const char *file = plan->options->file;
  const char *dir, *end;
  size_t file_len = strlen(file);
  int saw_eacces = 0;

  if (file_len == 0) return -ENOENT;
  if (strchr(file, '/') != NULL) {
    plan->path = file; /* exec itself reports what is wrong with it */
    return 0;
  }
  if (file_len + 3 > sizeof(plan->path_buf)) return -ENAMETOOLONG;
  for (dir = pfd__env_path(plan->envp);; dir = end + 1) {
    size_t dir_len;
    int r;
    end = strchr(dir, ':');
    if (end == NULL) end = dir + strlen(dir);
    dir_len = (size_t)(end - dir);
    if (dir_len == 0) {
      memcpy(plan->path_buf, "./", 2);
      dir_len = 1;
    } else if (dir_len + 1 + file_len + 1 <= sizeof(plan->path_buf)) {
      memcpy(plan->path_buf, dir, dir_len);
      plan->path_buf[dir_len] = '/';
    } else {
      if (*end == '\0') break;
      continue; /* too long to be a real directory: execvp skips it too */
    }
    memcpy(plan->path_buf + dir_len + 1, file, file_len + 1);
    r = pfd__candidate_check(plan->path_buf, plan->options->cwd);
    if (r == 0) {
      plan->path = plan->path_buf;
      return 0;
    }
    if (r == -EACCES) saw_eacces = 1;
    if (*end == '\0') break;
  }
  return saw_eacces ? -EACCES : -ENOENT;
}

/* ---- preparing the descriptors -------------------------------------------------------- */

static int pfd__plan_own(pfd__plan_t *plan, int fd) {
  plan->owned[plan->owned_count++] = fd;
  return fd;
}

/* Makes the pipes and checks the inherited descriptors.  On failure the caller closes
 * whatever was made (plan->owned and the parent ends in stdio). */
static int pfd__plan_stdio(pfd__plan_t *plan, pfd_spawn_result_t *result) {
  const pfd_spawn_options_t *o = plan->options;
  int i, err;
  for (i = 0; i < o->stdio_count; i++) {
    pfd_stdio_t *slot = &o->stdio[i];
    int fds[2];
    switch (slot->kind) {
      case PFD_STDIO_CHANNEL: /* a socketpair, as a PIPE above slot 2 */
      case PFD_STDIO_PIPE:
        if (slot->kind == PFD_STDIO_CHANNEL && i <= 2) {
          result->step = PFD_STEP_STDIO;
          result->slot = i;
          return -EINVAL;
        }
        /* Slots 0-2 get one-way pipes, as every shell gives; higher slots have no fixed
         * direction, so they get a socketpair, which is what Node/libuv give every slot. */
        err = i <= 2 ? pfd__cloexec_pipe(fds, 0) : pfd__cloexec_socketpair(fds);
        if (err < 0) {
          result->step = PFD_STEP_PIPE;
          result->slot = i;
          return err;
        }
        if (i == 0) { /* the child reads its stdin: it gets the read end */
          plan->child_fd[i] = pfd__plan_own(plan, fds[0]);
          slot->fd = fds[1];
        } else {
          plan->child_fd[i] = pfd__plan_own(plan, fds[1]);
          slot->fd = fds[0];
        }
        break;
      case PFD_STDIO_INHERIT_SAME:
      case PFD_STDIO_INHERIT: {
        int flags;
        if (slot->kind == PFD_STDIO_INHERIT_SAME) slot->fd = i;
        flags = slot->fd < 0 ? -1 : fcntl(slot->fd, F_GETFD);
        if (flags < 0 && slot->kind == PFD_STDIO_INHERIT_SAME) {
          plan->child_fd[i] = PFD__CLOSED; /* (this process's own is closed: so is the child's) */
          break;
        }
        if (flags < 0) {
          result->step = PFD_STEP_STDIO;
          result->slot = i;
          return -EBADF;
        }
        plan->child_fd[i] = slot->fd;
        /* The usual case, stdin/stdout/stderr passed on as they are, costs nothing. */
        plan->keep[i] = slot->fd == i && !(flags & FD_CLOEXEC);
        break;
      }
      case PFD_STDIO_IGNORE:
        plan->child_fd[i] = i <= 2 ? PFD__DEVNULL : PFD__CLOSED;
        break;
      case PFD_STDIO_CLOSE:
        plan->child_fd[i] = PFD__CLOSED;
        break;
      default:
        result->step = PFD_STEP_STDIO;
        result->slot = i;
        return -EINVAL;
    }
  }
  /* A source below stdio_count would be overwritten by an earlier dup2 (slot 0 <- fd 1,
   * slot 1 <- fd 0 is the classic), so each such source moves above the slots first. */
  for (i = 0; i < o->stdio_count; i++) {
    int src = plan->child_fd[i];
    if (src >= 0 && src < o->stdio_count && src != i) {
      int moved = fcntl(src, F_DUPFD_CLOEXEC, o->stdio_count);
      if (moved < 0) {
        result->step = PFD_STEP_STDIO;
        result->slot = i;
        return -errno;
      }
      plan->child_fd[i] = pfd__plan_own(plan, moved);
    }
  }
  return 0;
}

/* ---- posix_spawn ---------------------------------------------------------------------------- */

#if defined(PFD__FAST_GLIBC) || defined(PFD__FAST_DARWIN)
#ifdef PFD__FAST_DARWIN
/* posix_spawn_file_actions_addchdir_np, weakly imported under a name of our own (the SDK's
 * declaration carries its availability, and __builtin_available needs compiler-rt). */
extern int pfd__addchdir(posix_spawn_file_actions_t *fa, const char *path)
    __asm__("_posix_spawn_file_actions_addchdir_np") __attribute__((weak_import));
#endif

static int pfd__spawn_actions(const pfd__plan_t *plan, posix_spawn_file_actions_t *fa) {
  const pfd_spawn_options_t *o = plan->options;
  int i, r = 0;
  for (i = 0; i < o->stdio_count && r == 0; i++) {
    int src = plan->child_fd[i];
    if (plan->keep[i]) continue;
    if (src == PFD__DEVNULL) {
      r = posix_spawn_file_actions_addopen(fa, i, "/dev/null", O_RDWR, 0);
    } else if (src == PFD__CLOSED) {
      r = posix_spawn_file_actions_addclose(fa, i);
#ifdef PFD__FAST_DARWIN
    } else if (src == i) {
      r = posix_spawn_file_actions_addinherit_np(fa, i);
#endif
    } else {
      r = posix_spawn_file_actions_adddup2(fa, src, i);
    }
  }
#ifdef PFD__FAST_GLIBC
  if (r == 0) r = posix_spawn_file_actions_addclosefrom_np(fa, o->stdio_count);
#endif
  if (r == 0 && o->cwd != NULL) {
#ifdef PFD__FAST_DARWIN
    /* Absent before macOS 10.15 (the x86_64 wheels are for 10.13 on): the fork path,
     * which can chdir, takes over. */
    if (pfd__addchdir == NULL) return -ENOTSUP;
    r = pfd__addchdir(fa, o->cwd);
#else
    r = posix_spawn_file_actions_addchdir_np(fa, o->cwd);
#endif
  }
  return -r;
}

static int pfd__spawn_attrs(const pfd__plan_t *plan, posix_spawnattr_t *attr) {
  sigset_t none, all;
  short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
  int r;
  if (plan->options->flags & PFD_SPAWN_SETSID) {
#ifdef POSIX_SPAWN_SETSID
    flags |= POSIX_SPAWN_SETSID;
#else
    return -ENOTSUP;
#endif
  }
#ifdef PFD__FAST_DARWIN
  flags |= POSIX_SPAWN_CLOEXEC_DEFAULT; /* macOS: descriptors not named above are closed */
#endif
  sigemptyset(&none);
  sigfillset(&all);
  if ((r = posix_spawnattr_setflags(attr, flags)) != 0) return -r;
  if ((r = posix_spawnattr_setsigmask(attr, &none)) != 0) return -r;
  if ((r = posix_spawnattr_setsigdefault(attr, &all)) != 0) return -r;
  return 0;
}

/* A failed posix_spawn says only errno, not whether chdir or exec failed.  The program
 * was found before, so an error that a missing or forbidden cwd explains is blamed on the
 * cwd when the cwd does show it. */
static int pfd__spawn_blame(const pfd__plan_t *plan) {
  struct stat st;
  const char *cwd = plan->options->cwd;
  if (cwd == NULL) return PFD_STEP_EXEC;
  if (stat(cwd, &st) < 0) return PFD_STEP_CHDIR;
  if (!S_ISDIR(st.st_mode) || access(cwd, X_OK) < 0) return PFD_STEP_CHDIR;
  return PFD_STEP_EXEC;
}

static int pfd__spawn_posix(const pfd__plan_t *plan, pid_t *pid, pfd_spawn_result_t *result) {
  const pfd_spawn_options_t *o = plan->options;
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  int err, r;

  if (o->flags & (PFD_SPAWN_SETUID | PFD_SPAWN_SETGID | PFD_SPAWN_PDEATHSIG)) return -ENOTSUP;
  if ((r = posix_spawn_file_actions_init(&fa)) != 0) return -r;
  if ((r = posix_spawnattr_init(&attr)) != 0) {
    posix_spawn_file_actions_destroy(&fa);
    return -r;
  }
  err = pfd__spawn_actions(plan, &fa);
  if (err == 0) err = pfd__spawn_attrs(plan, &attr);
  if (err == 0) {
    r = posix_spawn(pid, plan->path, &fa, &attr, o->argv,
                    plan->envp != NULL ? plan->envp : environ);
    if (r != 0) {
      err = -r;
      result->step = pfd__spawn_blame(plan);
    }
  }
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&fa);
  return err;
}
#else
static int pfd__spawn_posix(const pfd__plan_t *plan, pid_t *pid, pfd_spawn_result_t *result) {
  (void)plan;
  (void)pid;
  (void)result;
  return -ENOTSUP;
}
#endif

/* ---- the vfork / fork path ------------------------------------------------------------------ */

#ifdef __linux__
/* Closes every descriptor >= low except `keep` by walking /proc/self/fd with the raw
 * getdents64 syscall (opendir would allocate).  Returns 0, or -errno without /proc. */
static int pfd__close_from_proc(int low, int keep) {
  char buf[2048];
  long n;
  int dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return -errno;
  while ((n = syscall(SYS_getdents64, dir, buf, sizeof(buf))) > 0) {
    long off = 0;
    while (off < n) {
      /* struct linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, char name[]. */
      unsigned short reclen;
      const char *name = buf + off + 19;
      int fd = 0;
      memcpy(&reclen, buf + off + 16, sizeof(reclen));
      off += reclen;
      if (name[0] < '0' || name[0] > '9') continue;
      for (; *name >= '0' && *name <= '9'; name++) fd = fd * 10 + (*name - '0');
      if (fd >= low && fd != keep && fd != dir) (void)close(fd);
    }
  }
  (void)close(dir);
  return 0;
}
#endif

/* Child side: leaves open only descriptors below `low`, plus `keep` until exec. */
static void pfd__close_from(int low, int keep, int max_fd) {
  int fd;
#if defined(__linux__) && defined(SYS_close_range)
  /* Linux 5.11: mark the rest close-on-exec in one call; `keep` is close-on-exec already. */
  if (syscall(SYS_close_range, (unsigned)low, ~0U, CLOSE_RANGE_CLOEXEC) == 0) return;
  if (keep >= low && (keep == low || syscall(SYS_close_range, (unsigned)low,
                                             (unsigned)keep - 1, 0) == 0) &&
      syscall(SYS_close_range, (unsigned)keep + 1, ~0U, 0) == 0) {
    return;
  }
#endif
#ifdef __linux__
  if (pfd__close_from_proc(low, keep) == 0) return;
#endif
  for (fd = low; fd < max_fd; fd++) {
    if (fd != keep) (void)close(fd);
  }
}

static void pfd__child_fail(pfd__plan_t *plan, int step, int err, int slot)
    __attribute__((noreturn));
static void pfd__child_fail(pfd__plan_t *plan, int step, int err, int slot) {
  pfd__child_error_t record;
  ssize_t n;
  /* Under vfork this lands in the parent's plan, which it reads once we have exited. */
  plan->shared.err = err;
  plan->shared.slot = slot;
  plan->shared.step = step;
  if (plan->error_fd >= 0) {
    record.step = step;
    record.err = err;
    record.slot = slot;
    do {
      n = write(plan->error_fd, &record, sizeof(record));
    } while (n < 0 && errno == EINTR);
  }
  _exit(127);
}

/* Child side: puts every slot's descriptor in place.  Sources were moved above the slots by
 * the parent, so no dup2 here can overwrite a source that a later slot still needs. */
static void pfd__child_stdio(pfd__plan_t *plan) {
  int i, count = plan->options->stdio_count;
  for (i = 0; i < count; i++) {
    int src = plan->child_fd[i];
    if (plan->keep[i]) continue;
    if (src == i) {
      int flags = fcntl(i, F_GETFD);
      if (flags < 0 || fcntl(i, F_SETFD, flags & ~FD_CLOEXEC) < 0) {
        pfd__child_fail(plan, PFD_STEP_STDIO, errno, i);
      }
    } else if (src >= 0 || src == PFD__DEVNULL) {
      int fd = src;
      if (src == PFD__DEVNULL) {
        fd = open("/dev/null", O_RDWR);
        if (fd < 0) pfd__child_fail(plan, PFD_STEP_STDIO, errno, i);
        if (fd == i) continue;
      }
      while (dup2(fd, i) < 0) {
        if (errno != EINTR && errno != EBUSY) pfd__child_fail(plan, PFD_STEP_STDIO, errno, i);
      }
      if (src == PFD__DEVNULL) (void)close(fd);
    } else {
      (void)close(i);
    }
  }
}

/* Child side: the identity changes.  Raw syscalls on Linux, because glibc's setuid() and
 * friends broadcast the change to every thread they believe the process has (SIGSETXID),
 * and a vfork child still sees its parent's thread list; the syscall changes exactly this
 * process, which has one thread.  (CPython refuses vfork for these options for the same
 * reason.) */
static void pfd__child_identity(pfd__plan_t *plan) {
  const pfd_spawn_options_t *o = plan->options;
  long r;
  if (!(o->flags & (PFD_SPAWN_SETUID | PFD_SPAWN_SETGID))) return;
#ifdef __linux__
  r = syscall(SYS_setgroups, 0, NULL);
#else
  r = setgroups(0, NULL);
#endif
  /* Dropping supplementary groups needs privilege; without it setgid/setuid below fail
   * with a clearer EPERM, so this step only reports other errors. */
  if (r < 0 && errno != EPERM) pfd__child_fail(plan, PFD_STEP_SETGROUPS, errno, -1);
  if (o->flags & PFD_SPAWN_SETGID) {
#ifdef __linux__
    r = syscall(SYS_setgid, (gid_t)o->gid);
#else
    r = setgid((gid_t)o->gid);
#endif
    if (r < 0) pfd__child_fail(plan, PFD_STEP_SETGID, errno, -1);
  }
  if (o->flags & PFD_SPAWN_SETUID) {
#ifdef __linux__
    r = syscall(SYS_setuid, (uid_t)o->uid);
#else
    r = setuid((uid_t)o->uid);
#endif
    if (r < 0) pfd__child_fail(plan, PFD_STEP_SETUID, errno, -1);
  }
}

/* Child side: every signal disposition back to SIG_DFL, the C library's private signals
 * included (glibc's sigaction() refuses 32 and 33, and a SIG_IGN there would outlive exec).
 * On Linux the raw syscall takes an all-zero kernel sigaction, which is SIG_DFL with no
 * flags and an empty mask whatever the architecture's field order. */
static void pfd__child_signal_defaults(void) {
  int sig;
#ifdef __linux__
  static const unsigned long zero_action[8];
  for (sig = 1; sig < NSIG; sig++) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    (void)syscall(SYS_rt_sigaction, sig, zero_action, NULL, (size_t)((NSIG - 1) / 8));
  }
#else
  struct sigaction dfl;
  memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (sig = 1; sig < NSIG; sig++) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    (void)sigaction(sig, &dfl, NULL);
  }
#endif
}

/*
 * Runs in the child between vfork/fork and exec, and never returns.
 *
 * Contract: only async-signal-safe calls, no allocation, no locks, and no writes to the
 * parent's memory but plan->started and plan->shared.  Under vfork it runs on the parent's
 * memory and stack while other threads of the parent may hold the malloc or stdio locks;
 * under fork those locks are copied held (CPython's _posixsubprocess keeps the same rules, see
 * bpo-35823).  All signals arrive blocked (the parent blocked them before vfork), so no
 * handler of the parent can run here; they are unblocked only after every disposition is
 * back at its default.
 */
static void pfd__spawn_child(pfd__plan_t *plan) __attribute__((noreturn, noinline));
static void pfd__spawn_child(pfd__plan_t *plan) {
  const pfd_spawn_options_t *o = plan->options;
  sigset_t none;

  plan->started = 1;
  pfd__child_signal_defaults();
  if ((o->flags & PFD_SPAWN_SETSID) && setsid() < 0) {
    pfd__child_fail(plan, PFD_STEP_SETSID, errno, -1);
  }
  if (o->flags & PFD_SPAWN_PDEATHSIG) {
#ifdef __linux__
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)o->pdeathsig) < 0) {
      pfd__child_fail(plan, PFD_STEP_PDEATHSIG, errno, -1);
    }
    /* The parent may have died before prctl armed the signal: then it never comes. */
    if (getppid() != plan->parent) _exit(127);
#else
    pfd__child_fail(plan, PFD_STEP_PDEATHSIG, ENOTSUP, -1);
#endif
  }
  pfd__child_stdio(plan);
  pfd__close_from(o->stdio_count, plan->error_fd, plan->max_fd);
  if (o->cwd != NULL && chdir(o->cwd) < 0) pfd__child_fail(plan, PFD_STEP_CHDIR, errno, -1);
  pfd__child_identity(plan);
  sigemptyset(&none);
  (void)sigprocmask(SIG_SETMASK, &none, NULL);
  execve(plan->path, o->argv, plan->envp != NULL ? plan->envp : environ);
  pfd__child_fail(plan, PFD_STEP_EXEC, errno, -1);
}

/* vfork (Linux) shares memory and stack with the suspended parent, so the child runs in
 * its own small frame and never returns into ours. */
static pid_t pfd__fork_and_exec(pfd__plan_t *plan) {
#ifdef __linux__
  pid_t pid = vfork();
#else
  pid_t pid = fork();
#endif
  if (pid == 0) pfd__spawn_child(plan);
  return pid;
}

/* The highest descriptor number the child may hold, for the last-resort close loop. */
static int pfd__max_fd(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      rl.rlim_cur < INT_MAX) {
    return (int)rl.rlim_cur;
  }
  return 65536;
}

#ifdef __linux__
/* Whether a vfork child's writes reach this process's memory: -1 not known yet, 0 no (a
 * tool turns vfork into fork), 1 yes.  The first spawn finds out, with the pipe as well.
 * Relaxed is enough: the value only picks the cheaper of two correct ways. */
static pfd_atomic_int_t pfd__vfork_shares = -1;
#endif

/* Reads the child's record from the error pipe: 0 at EOF (exec succeeded), 1 with a record,
 * -errno when the read failed or the record was torn. */
static int pfd__read_record(int fd, pfd__child_error_t *record) {
  ssize_t n;
  do {
    n = read(fd, record, sizeof(*record));
  } while (n < 0 && errno == EINTR);
  if (n == 0) return 0;
  if (n == (ssize_t)sizeof(*record)) return 1;
  return n < 0 ? -errno : -EIO;
}

static int pfd__spawn_fork_path(pfd__plan_t *plan, pid_t *pid_out,
                                pfd_spawn_result_t *result) {
  int errpipe[2] = {-1, -1}, err = 0, got;
  sigset_t all, old;
  pid_t pid;
  pfd__child_error_t record;
#ifdef __linux__
  int shares = pfd_atomic_load_relaxed(&pfd__vfork_shares);
#else
  int shares = 0; /* fork: the child's memory is its own */
#endif

  plan->max_fd = pfd__max_fd();
  plan->parent = getpid();
  plan->started = 0;
  plan->shared.step = PFD_STEP_NONE;
  if (shares != 1) {
    if ((err = pfd__cloexec_pipe(errpipe, 0)) < 0) {
      result->step = PFD_STEP_PIPE;
      return err;
    }
  }
  plan->error_fd = errpipe[1];
  /* Blocked here, so that no handler of ours runs in the child (see pfd__spawn_child). */
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pid = pfd__fork_and_exec(plan);
  err = pid < 0 ? -errno : 0;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (errpipe[1] >= 0) pfd__close_quietly(errpipe[1]);
  if (pid < 0) {
    pfd__close_quietly(errpipe[0]);
    result->step = PFD_STEP_FORK;
    return err;
  }
  if (shares == 1) {
    /* vfork returned: the child has exec'd or exited, and said which in plan->shared. */
    got = plan->shared.step != PFD_STEP_NONE;
    record.step = plan->shared.step;
    record.err = plan->shared.err;
    record.slot = plan->shared.slot;
  } else {
    /* EOF means exec succeeded (the pipe is close-on-exec); a record means the child
     * failed at record.step and exits with 127.  Reading it before waitpid is what lets
     * the parent tell that apart from a program that exits 127 on its own. */
    got = pfd__read_record(errpipe[0], &record);
    pfd__close_quietly(errpipe[0]);
#ifdef __linux__
    if (got >= 0) pfd_atomic_store_relaxed(&pfd__vfork_shares, plan->started ? 1 : 0);
#endif
  }
  if (got == 0) {
    *pid_out = pid;
    return 0;
  }
  if (got == 1) {
    result->step = record.step;
    result->slot = record.slot;
    err = -record.err;
  } else {
    /* A failed read or a torn record: the child's state is unknown, so end it. */
    (void)kill(pid, SIGKILL);
    result->step = PFD_STEP_FORK;
    err = got;
  }
  while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
  }
  return err;
}

/* ---- the entry point ---------------------------------------------------------------------- */

static int pfd__plan_init(pfd__plan_t *plan, const pfd_spawn_options_t *o) {
  int count = o->stdio_count;
  plan->options = o;
  plan->path = NULL;
  plan->envp = o->envp;
  plan->owned_count = 0;
  plan->error_fd = -1;
  /* One block: count ints of child_fd, 2 * count + 1 ints of owned (a slot owns at most a
   * pipe end and a moved copy), then count bytes of keep. */
  plan->child_fd = calloc((size_t)count * 3 + 1, sizeof(int) + 1);
  if (plan->child_fd == NULL) return -ENOMEM;
  plan->owned = plan->child_fd + count;
  plan->keep = (unsigned char *)(plan->owned + 2 * count + 1);
  return 0;
}

int pfd_spawn(const pfd_spawn_options_t *o, pfd_spawn_result_t *result) {
  pfd__plan_t plan;
  pid_t pid = -1;
  int err, i;

  memset(result, 0, sizeof(*result));
  result->slot = -1;
  plan.child_fd = NULL;
  if (o == NULL || o->file == NULL || o->argv == NULL || o->stdio_count < 0 ||
      (o->stdio_count > 0 && o->stdio == NULL)) {
    return -EINVAL;
  }
  if ((err = pfd__plan_init(&plan, o)) < 0) {
    result->step = PFD_STEP_FORK;
    return err;
  }
  for (i = 0; i < o->stdio_count; i++) {
    if (o->stdio[i].kind == PFD_STDIO_PIPE || o->stdio[i].kind == PFD_STDIO_CHANNEL) {
      o->stdio[i].fd = -1;
    }
  }
  if ((err = pfd__spawn_resolve(&plan)) < 0) {
    result->step = PFD_STEP_RESOLVE;
    goto error;
  }
  if ((err = pfd__plan_stdio(&plan, result)) < 0) goto error;
  /* posix_spawn cannot change uid/gid or arm the parent-death signal, and older C
   * libraries lack its closefrom/chdir actions: it answers -ENOTSUP and the vfork/fork
   * path, which can do all of these at the same constant cost, takes over. */
  err = -ENOTSUP;
  if ((o->flags & PFD_SPAWN_USE_POSIX_SPAWN) ||
      (PFD__POSIX_SPAWN_FIRST && !(o->flags & PFD_SPAWN_USE_FORK_PATH))) {
    err = pfd__spawn_posix(&plan, &pid, result);
  }
  if (err == -ENOTSUP) err = pfd__spawn_fork_path(&plan, &pid, result);
  if (err < 0) goto error;

  for (i = 0; i < plan.owned_count; i++) pfd__close_quietly(plan.owned[i]);
  free(plan.child_fd);
  result->pid = (int)pid;
  return 0;

error:
  for (i = 0; i < plan.owned_count; i++) pfd__close_quietly(plan.owned[i]);
  for (i = 0; i < o->stdio_count; i++) {
    if ((o->stdio[i].kind == PFD_STDIO_PIPE || o->stdio[i].kind == PFD_STDIO_CHANNEL) &&
        o->stdio[i].fd >= 0) {
      pfd__close_quietly(o->stdio[i].fd);
      o->stdio[i].fd = -1;
    }
  }
  free(plan.child_fd);
  return err;
}
