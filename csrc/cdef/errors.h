/* Errors: one table of errno names for every platform (csrc/common/errors.c). */

/* The symbolic name of an errno value, "ENOENT" for ENOENT or -ENOENT; "UNKNOWN" when the
 * value is not in the table.  The string is static. */
const char *pfd_err_name(int err);

/* A human-readable message for an errno value (either sign); never NULL, static storage. */
const char *pfd_strerror(int err);
