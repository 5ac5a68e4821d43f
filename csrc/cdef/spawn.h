/* Spawning a program (csrc/unix/spawn.c, csrc/win/spawn.c). */

/* How one descriptor slot of the child is filled. */
enum {
  PFD_STDIO_INHERIT = 0, /* the parent's descriptor `fd` appears at this slot */
  PFD_STDIO_PIPE = 1,    /* a new pipe (slots 0-2) or socketpair (slots 3 and up); the
                            parent's end is returned in `fd`, close-on-exec */
  PFD_STDIO_IGNORE = 2,  /* /dev/null at slots 0-2; nothing (the slot is closed) above */
  PFD_STDIO_CLOSE = 3,   /* the slot is closed in the child */
  PFD_STDIO_INHERIT_SAME = 4, /* the parent's own descriptor at this slot, or closed when the
                                parent has it closed (what fork+exec gives) */
  PFD_STDIO_CHANNEL = 5  /* slots 3 and up: a message channel to the child, the parent's end
                            returned in `fd`.  Unix: a socketpair, as PIPE.  Windows: the
                            overlapped duplex named pipe that csrc/win/fdpass.c reads and
                            writes libuv's frames on (PIPE above slot 2 is there a plain
                            duplex pipe, read and written with ordinary blocking I/O) */
};

typedef struct pfd_stdio_s {
  int kind; /* PFD_STDIO_* */
  int fd;   /* in: the parent's descriptor for INHERIT (ignored for INHERIT_SAME);
               out: the parent's end for PIPE */
} pfd_stdio_t;

/* Options that change the child beyond its stdio. */
enum {
  PFD_SPAWN_SETSID = 1,      /* new session and process group (detached) */
  PFD_SPAWN_SETUID = 2,      /* setuid(uid) */
  PFD_SPAWN_SETGID = 4,      /* setgid(gid) */
  PFD_SPAWN_PDEATHSIG = 8,   /* the child gets `pdeathsig` when the spawning thread exits
                                (Linux; -ENOTSUP elsewhere) */
  PFD_SPAWN_USE_POSIX_SPAWN = 16, /* posix_spawn even where the vfork path is the default
                                     (it still gives way for options it cannot express) */
  PFD_SPAWN_USE_FORK_PATH = 32,    /* always the vfork/fork path */
  PFD_SPAWN_HIDE = 64,             /* Windows: no console window (CREATE_NO_WINDOW, SW_HIDE);
                                      ignored elsewhere */
  PFD_SPAWN_VERBATIM = 128,        /* Windows: the arguments after argv[0] go on the command
                                      line as they are, joined by spaces, unquoted (Node's
                                      windowsVerbatimArguments, for cmd.exe /d /s /c "...");
                                      ignored elsewhere */
  PFD_SPAWN_ASYNC_PIPES = 256      /* Windows: the parent's ends of PIPE slots 0-2 are opened
                                      for overlapped I/O (an event loop's: asyncio's
                                      proactor), the child's for ordinary I/O; ignored
                                      elsewhere */
};

/* Which step of starting the child failed, so the caller can name the syscall and path. */
enum {
  PFD_STEP_NONE = 0,
  PFD_STEP_RESOLVE = 1,   /* searching PATH for the program */
  PFD_STEP_PIPE = 2,      /* creating a stdio pipe in the parent */
  PFD_STEP_FORK = 3,      /* creating the process */
  PFD_STEP_SETSID = 4,
  PFD_STEP_PDEATHSIG = 5,
  PFD_STEP_STDIO = 6,     /* placing a descriptor at its slot */
  PFD_STEP_SETGROUPS = 7,
  PFD_STEP_SETGID = 8,
  PFD_STEP_SETUID = 9,
  PFD_STEP_CHDIR = 10,
  PFD_STEP_EXEC = 11,
  PFD_STEP_BATCH = 12     /* Windows: a .bat/.cmd program without a shell, refused (the
                             cmd.exe quoting hole of CVE-2024-27980); -EINVAL */
};

typedef struct pfd_spawn_options_s {
  const char *file;        /* program; searched in PATH unless it contains a slash */
  char **argv;             /* NULL-terminated; argv[0] is what the child sees as its name */
  char **envp;             /* NULL-terminated, or NULL for the parent's environment */
  const char *cwd;         /* NULL: the parent's */
  pfd_stdio_t *stdio;      /* the child's descriptors 0 .. stdio_count-1; it gets no others */
  int stdio_count;
  unsigned int flags;      /* PFD_SPAWN_* */
  long long uid;           /* with PFD_SPAWN_SETUID */
  long long gid;           /* with PFD_SPAWN_SETGID */
  int pdeathsig;           /* with PFD_SPAWN_PDEATHSIG */
} pfd_spawn_options_t;

typedef struct pfd_spawn_result_s {
  int pid;   /* the child, on success */
  int step;  /* PFD_STEP_*: on failure, the step that failed */
  int slot;  /* with PFD_STEP_STDIO or PFD_STEP_PIPE: the slot */
} pfd_spawn_result_t;

/* Starts a program.  On success the child is running (its exec succeeded), result->pid is
 * set and every PIPE slot's `fd` holds the parent's end.  On failure nothing is left
 * behind: no process, no descriptor; result->step says which step failed.
 * Returns 0 on success, -errno on failure. */
int pfd_spawn(const pfd_spawn_options_t *options, pfd_spawn_result_t *result);
