/* Anonymous shared memory that travels as a descriptor (csrc/unix/shm.c). */

/* Creates a shared memory object of `size` bytes (mode 0600, close-on-exec, never a name
 * left in the filesystem: memfd on Linux with its size sealed, shm_open + immediate
 * shm_unlink on macOS).  `name` only labels it (Linux shows it in /proc/PID/fd).
 * Returns the descriptor, or -errno (-EINVAL for a size of 0). */
int pfd_shm_create(const char *name, size_t size);

/* The size of the shared memory object behind `fd`, or -errno (-EINVAL when `fd` is not
 * one: a pipe, a socket, ...; -EPERM on Linux when it is not a memfd sealed against
 * shrinking, which a peer could truncate under a mapping). */
long long pfd_shm_size(int fd);

/* Maps `size` bytes of `fd` read-write and shared; *out gets the address.  Returns 0 or
 * -errno. */
int pfd_shm_map(int fd, size_t size, void **out);

/* Unmaps what pfd_shm_map mapped.  Returns 0 or -errno. */
int pfd_shm_unmap(void *addr, size_t size);
