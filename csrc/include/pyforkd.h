/*
 * pyforkd.h - the one public header of pyforkd's C core.
 *
 * Every public function is named pfd_<noun>_<verb>, returns 0 or a count on success and
 * -errno on failure (Windows codes are translated into the same space by
 * csrc/win/error.c), and never exits the process.  There is no global error state.
 *
 * The declarations themselves live in csrc/cdef/ (one .h file per capability), because the
 * same text is what cffi reads to build pyforkd._core: one copy, two readers.  Those files
 * are plain C with no preprocessor lines, so everything platform-specific stays here and in
 * csrc/unix/ and csrc/win/, which define the same functions behind these declarations.
 */
#ifndef PYFORKD_H
#define PYFORKD_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "../cdef/errors.h"
#include "../cdef/spawn.h"
#include "../cdef/process.h"
#include "../cdef/frame.h"
#include "../cdef/fdpass.h"
#include "../cdef/ring.h"
#include "../cdef/shm.h"
#include "../cdef/dispatch.h"

#ifdef __cplusplus
}
#endif

#endif /* PYFORKD_H */
