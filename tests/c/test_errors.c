/* test_errors.c - the errno table. */
#include <errno.h>
#include <string.h>

#include "runner.h"

TEST_IMPL(errors_names) {
  CHECK(strcmp(pfd_err_name(ENOENT), "ENOENT") == 0);
  CHECK(strcmp(pfd_err_name(-ENOENT), "ENOENT") == 0);
  CHECK(strcmp(pfd_err_name(-EAGAIN), "EAGAIN") == 0);
  CHECK(strcmp(pfd_err_name(EACCES), "EACCES") == 0);
  CHECK(strcmp(pfd_err_name(-ETIMEDOUT), "ETIMEDOUT") == 0);
  CHECK(strcmp(pfd_err_name(999999), "UNKNOWN") == 0);
  CHECK(strcmp(pfd_strerror(-ENOENT), strerror(ENOENT)) == 0);
  CHECK(pfd_strerror(999999) != NULL);
  return 0;
}
