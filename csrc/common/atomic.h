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
#include <intrin.h>
typedef volatile long pfd_atomic_int_t;
typedef volatile long pfd_atomic_u32_t;
typedef volatile __int64 pfd_atomic_u64_t;
#define pfd_atomic_load_relaxed(p) (*(p))
#define pfd_atomic_store_relaxed(p, v) ((void)(*(p) = (v)))
/* x64 keeps 8-byte aligned 64-bit accesses whole; /volatile:ms gives them acquire (load)
 * and release (store) order. */
#define pfd_atomic_load_acquire_u64(p) ((unsigned long long)*(p))
#define pfd_atomic_store_release_u64(p, v) ((void)(*(p) = (__int64)(v)))
/* Sequentially consistent accesses for the wait layer's sleep/wake handshake. */
#define pfd_atomic_load_u32(p) ((unsigned)_InterlockedOr((p), 0))
#define pfd_atomic_store_u32(p, v) ((void)_InterlockedExchange((p), (long)(v)))
#define pfd_atomic_add_u32(p, v) ((unsigned)_InterlockedExchangeAdd((p), (long)(v)))
#define pfd_atomic_fence() __faststorefence()
#else
#include <stdatomic.h>
typedef atomic_int pfd_atomic_int_t;
typedef atomic_ullong pfd_atomic_u64_t;
typedef atomic_uint pfd_atomic_u32_t;
#define pfd_atomic_load_relaxed(p) atomic_load_explicit((p), memory_order_relaxed)
#define pfd_atomic_store_relaxed(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
#define pfd_atomic_load_acquire_u64(p) atomic_load_explicit((p), memory_order_acquire)
#define pfd_atomic_store_release_u64(p, v) atomic_store_explicit((p), (v), memory_order_release)
/* Sequentially consistent accesses for the wait layer's sleep/wake handshake. */
#define pfd_atomic_load_u32(p) atomic_load((p))
#define pfd_atomic_store_u32(p, v) atomic_store((p), (v))
#define pfd_atomic_add_u32(p, v) atomic_fetch_add((p), (v))
#define pfd_atomic_fence() atomic_thread_fence(memory_order_seq_cst)
#endif

/* A hint, inside a spin loop, that this thread is waiting on another. */
#if defined(_MSC_VER) && !defined(__clang__)
#define pfd_cpu_relax() _mm_pause()
#elif defined(__x86_64__) || defined(__i386__)
#define pfd_cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define pfd_cpu_relax() __asm__ __volatile__("yield")
#else
#define pfd_cpu_relax() ((void)0)
#endif

#endif /* PFD_ATOMIC_H */
