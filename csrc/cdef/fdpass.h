/* Bytes and descriptors over a connected AF_UNIX stream socket (csrc/unix/fdpass.c). */

enum {
  PFD_FD_TRUNCATED = -1,   /* *nfds after a receive whose descriptors did not all fit */
  PFD_POLL_IN = 1,
  PFD_POLL_OUT = 2,
  PFD_FD_BLOCK = 1         /* flags: wait (GIL released) instead of answering -EAGAIN */
};

/* Sends head then body (either may be empty) in one sendmsg, with `nfds` descriptors
 * attached to the first byte.  Like send(2) it may send only a part; the descriptors go
 * with the first part.  Without PFD_FD_BLOCK in `flags` it never waits.  Never raises
 * SIGPIPE.  Returns the number of bytes sent, -EAGAIN when the socket buffer is full (not
 * blocking), -EINTR when a signal interrupted a blocking send before any byte went, or
 * -errno (-EPIPE once the peer is gone). */
long pfd_fd_send(int sock, const void *head, size_t head_size, const void *body,
                 size_t body_size, const int *fds, int nfds, int flags);

/* Sends one pyforkd frame: the header for (kind, frame_flags, nfds, size), encoded by
 * pfd_frame_encode, then `size` payload bytes, in one sendmsg with the descriptors on the
 * first byte.  The channel's hot path: one call from Python per message.  Returns the
 * bytes sent (header included: less than PFD_FRAME_HEADER_SIZE + size means the caller
 * sends the rest), or what pfd_fd_send returns on failure. */
long pfd_frame_send(int sock, unsigned int kind, unsigned int frame_flags, const char *payload,
                    size_t size, const int *fds, int nfds, int flags);

/* Receives up to `size` bytes, and up to `max_fds` descriptors into `fds` (close-on-exec).
 * *nfds gets their number, or PFD_FD_TRUNCATED when the sender attached more than fit:
 * every one received is then closed already.  Without PFD_FD_BLOCK in `flags` it never
 * waits.  Returns the number of bytes (0 at EOF), -EAGAIN when nothing is there (not
 * blocking), -EINTR when a signal interrupted a blocking receive, or -errno. */
long pfd_fd_recv(int sock, void *buf, size_t size, int *fds, int max_fds, int *nfds,
                 int flags);

/* Waits until `sock` is readable (PFD_POLL_IN) or writable (PFD_POLL_OUT), or the peer
 * hung up.  timeout_ms < 0 waits for ever.  Returns 1 when ready, 0 on timeout, -EINTR
 * when a signal came (so that the caller can run its handlers), or -errno. */
int pfd_fd_wait(int sock, int events, int timeout_ms);

/* Waits until the peer of `sock` has closed its end, without reading anything (Linux
 * POLLRDHUP; macOS a kqueue read filter that fires on EOF only).  timeout_ms < 0 waits for
 * ever.  Returns 1 when the peer is gone, 0 on timeout, -EINTR, or -errno. */
int pfd_fd_wait_hangup(int sock, int timeout_ms);

/* Makes sends on `sock` never raise SIGPIPE where the system needs a socket option for it
 * (SO_NOSIGPIPE on macOS; Linux uses MSG_NOSIGNAL per send).  Returns 0 or -errno. */
int pfd_socket_nosigpipe(int sock);

/* Two connected channel ends, close-on-exec: an AF_UNIX stream socketpair on Unix, a
 * duplex overlapped named pipe on Windows.  Returns 0 (out[0], out[1]) or -errno. */
int pfd_fd_pair(int out[2]);

/* Names the process at the other end of channel `fd`: on Windows a handle sent on it is
 * copied into that process (a pfd_fd_pair's ends start with this one; a spawned child's
 * channel with the child; a channel received or inherited with this process's parent).
 * Call it when one end of a pair is handed to another process, before sending handles on
 * the other.  Unix: nothing to do (the kernel knows).  Returns 0, -EINVAL (pid <= 0) or
 * -ENOMEM. */
int pfd_fd_peer(int fd, int pid);

/* Forgets what the core keeps for `fd` (on Windows a channel pipe's receive state), without
 * closing it: for a descriptor whose closing goes elsewhere from now on (a C runtime
 * descriptor takes a Windows handle over).  Unix: nothing.  Returns 0. */
int pfd_fd_release(int fd);

/* Closes a descriptor the core gave out or received (on Windows a handle or a socket),
 * with what the core keeps for it (a channel pipe's receive state and peer: a handle
 * value the system gives out again must not find them).  Returns 0 or -errno (-EBADF). */
int pfd_fd_close(int fd);

/* Shuts a channel down in both directions (shutdown(SHUT_RDWR) on Unix): threads blocked
 * sending or receiving on it return, and from then on receives see the end of the stream
 * and sends fail with -EPIPE, in this process.  Returns 0 or -errno. */
int pfd_fd_shutdown(int fd);
