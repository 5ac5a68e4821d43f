/*
 * atomic.h - every atomic access and barrier of the C core, in one place.
 *
 * C11 <stdatomic.h> where the compiler has it; MSVC (no C11 atomics before VS 2022 17.5)
 * gets the same names over volatile accesses, which MSVC on x86/x64 compiles with acquire
 * and release semantics (/volatile:ms, the default there).  Callers say which order they
 * need; a relaxed access states in a comment why relaxed is enough.
 */
#ifndef PFD_ATOMIC_H
#define PFD_ATOMIC_H

#if defined(_MSC_VER) && !defined(__clang__)
typedef volatile long pfd_atomic_int_t;
#define pfd_atomic_load_relaxed(p) (*(p))
#define pfd_atomic_store_relaxed(p, v) ((void)(*(p) = (v)))
#else
#include <stdatomic.h>
typedef atomic_int pfd_atomic_int_t;
#define pfd_atomic_load_relaxed(p) atomic_load_explicit((p), memory_order_relaxed)
#define pfd_atomic_store_relaxed(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
#endif

#endif /* PFD_ATOMIC_H */
