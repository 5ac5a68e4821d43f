/* A started child: waiting, reaping, signalling, and collecting its output
 * (csrc/unix/process.c, csrc/win/process.c). */

/* Opens a descriptor that refers to the child and becomes readable when it exits (a pidfd
 * on Linux).  Returns the descriptor, -ENOSYS where the system has none, -errno on failure. */
int pfd_process_open(int pid);

/* Waits until the child has exited without reaping it, so that the caller can reap it under
 * its own lock.  timeout_ms < 0 waits for ever (handle may then be -1); otherwise `handle`
 * must come from pfd_process_open (macOS: ignored, kqueue is used).  A signal interrupts the
 * wait so that the caller can run its handlers and call again.
 * Returns 1 when the child has exited, 0 on timeout, -EINTR, -ENOSYS for a timed wait
 * where the system offers no handle, or -errno on failure. */
int pfd_process_wait(int pid, int handle, int timeout_ms);

/* Reaps the child if it has exited: *exit_code gets its exit status, or -1 when a signal
 * ended it, in which case *term_signal gets the signal (else 0).
 * Returns 1 when reaped, 0 while it still runs, -errno on failure. */
int pfd_process_reap(int pid, int *exit_code, int *term_signal);

/* Sends `sig` to the child (through `handle` when it is >= 0, which cannot hit a recycled
 * pid).  Returns 0 on success, -errno on failure (-ESRCH: it is gone). */
int pfd_process_kill(int pid, int handle, int sig);

/* Arms the parent-death signal for the calling process: `sig` arrives when the thread that
 * created it exits (Linux PR_SET_PDEATHSIG; note: the *thread*, so call it only in a child
 * forked from a thread that lives as long as the parent).  Then checks that the parent is
 * still `expected_parent`: if it died first the signal would never come.
 * Returns 0, -ESRCH when the parent is gone already, -ENOTSUP where there is no such
 * thing, or -errno. */
int pfd_process_die_with_parent(int sig, int expected_parent);

/* Kills the calling process (SIGKILL; Windows: TerminateProcess) once the peer of channel
 * `sock` hangs up, from a thread of the C core that never takes the interpreter's lock: a
 * process stuck in a long C call that holds the GIL dies with its parent all the same.  It
 * watches a copy of `sock`, so what the process does with `sock` later does not matter.
 * Returns 0, or -errno (the copy, the thread). */
int pfd_process_watch_hangup(int sock);

/* Disarms that watch: a hang-up from then on ends nothing (a process that leaves its
 * parent on purpose). */
void pfd_process_unwatch(void);

/* Makes the watch look at `word` (8 bytes of memory shared with the parent, aligned, alive
 * as long as the process; pfd_process_watch_hangup forgets it) when the hang-up comes: non-zero there means the parent let
 * this process go on purpose, and it goes on (a cluster worker the primary disconnected:
 * it ends when its program does).  NULL: the watch kills again. */
void pfd_process_spare_on_hangup(const void *word);

/* Output collection for the exec family: one loop that writes the input to the child's
 * stdin and reads its stdout and stderr at once, so no pipe can fill up and deadlock. */
typedef struct pfd_buffer_s {
  char *data;
  size_t size;
  size_t capacity;
} pfd_buffer_t;

typedef struct pfd_collect_s {
  int in_fd;            /* the child's stdin (write end), or -1; closed when all is written */
  const char *input;    /* what to write; owned by the caller */
  size_t input_size;
  size_t input_done;
  int out_fd[2];        /* the child's stdout and stderr (read ends), or -1; closed at EOF */
  pfd_buffer_t out[2];  /* what was read; freed by pfd_collect_close */
  size_t max_buffer;    /* per stream; 0 for no limit */
  int overflow;         /* set to 1 (stdout) or 2 (stderr) when a stream went over */
} pfd_collect_t;

/* Moves data until every descriptor is done, the deadline passes, or a stream goes over
 * max_buffer (its buffer keeps the whole read that went over: the caller cuts it).  It may be called again after -EINTR or
 * -ETIMEDOUT; timeout_ms < 0 waits for ever, 0 only takes what is ready.
 * Returns 0 when all is done, -ETIMEDOUT, -ENOBUFS (over max_buffer), -EINTR, or -errno. */
int pfd_collect_run(pfd_collect_t *collect, int timeout_ms);

/* Closes every descriptor still open in `collect` and frees its buffers. */
void pfd_collect_close(pfd_collect_t *collect);
