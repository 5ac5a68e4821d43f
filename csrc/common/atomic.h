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
typedef volatile __int64 pfd_atomic_u64_t;
#define pfd_atomic_load_relaxed(p) (*(p))
#define pfd_atomic_store_relaxed(p, v) ((void)(*(p) = (v)))
/* x64 keeps 8-byte aligned 64-bit accesses whole; /volatile:ms gives them acquire (load)
 * and release (store) order. */
#define pfd_atomic_load_acquire_u64(p) ((unsigned long long)*(p))
#define pfd_atomic_store_release_u64(p, v) ((void)(*(p) = (__int64)(v)))
#else
#include <stdatomic.h>
typedef atomic_int pfd_atomic_int_t;
typedef atomic_ullong pfd_atomic_u64_t;
#define pfd_atomic_load_relaxed(p) atomic_load_explicit((p), memory_order_relaxed)
#define pfd_atomic_store_relaxed(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
#define pfd_atomic_load_acquire_u64(p) atomic_load_explicit((p), memory_order_acquire)
#define pfd_atomic_store_release_u64(p, v) atomic_store_explicit((p), (v), memory_order_release)
#endif

#endif /* PFD_ATOMIC_H */
