/*
 * errors.c - the one table of errno names, shared by every platform.
 *
 * Errors cross the C boundary as negative errno values; this table turns them into the
 * names users see ("ENOENT") and messages.  Windows codes are translated into this space
 * by csrc/win/error.c before they get here, so one table serves both.  The table is a list
 * of #ifdef'd entries because not every name exists on every system.  Where two names
 * share a value (EWOULDBLOCK == EAGAIN on Linux) the lookup names the familiar one.
 */
#include <errno.h>
#include <string.h>

#include "pyforkd.h"

typedef struct pfd__errno_entry_s {
  int value;
  const char *name;
} pfd__errno_entry_t;

#define PFD__ERRNO(name) {name, #name},

static const pfd__errno_entry_t pfd__errno_table[] = {
#ifdef E2BIG
  PFD__ERRNO(E2BIG)
#endif
#ifdef EACCES
  PFD__ERRNO(EACCES)
#endif
#ifdef EADDRINUSE
  PFD__ERRNO(EADDRINUSE)
#endif
#ifdef EADDRNOTAVAIL
  PFD__ERRNO(EADDRNOTAVAIL)
#endif
#ifdef EADV
  PFD__ERRNO(EADV)
#endif
#ifdef EAFNOSUPPORT
  PFD__ERRNO(EAFNOSUPPORT)
#endif
#ifdef EAGAIN
  PFD__ERRNO(EAGAIN)
#endif
#ifdef EALREADY
  PFD__ERRNO(EALREADY)
#endif
#ifdef EBADE
  PFD__ERRNO(EBADE)
#endif
#ifdef EBADF
  PFD__ERRNO(EBADF)
#endif
#ifdef EBADFD
  PFD__ERRNO(EBADFD)
#endif
#ifdef EBADMSG
  PFD__ERRNO(EBADMSG)
#endif
#ifdef EBADR
  PFD__ERRNO(EBADR)
#endif
#ifdef EBADRQC
  PFD__ERRNO(EBADRQC)
#endif
#ifdef EBADSLT
  PFD__ERRNO(EBADSLT)
#endif
#ifdef EBFONT
  PFD__ERRNO(EBFONT)
#endif
#ifdef EBUSY
  PFD__ERRNO(EBUSY)
#endif
#ifdef ECANCELED
  PFD__ERRNO(ECANCELED)
#endif
#ifdef ECHILD
  PFD__ERRNO(ECHILD)
#endif
#ifdef ECHRNG
  PFD__ERRNO(ECHRNG)
#endif
#ifdef ECOMM
  PFD__ERRNO(ECOMM)
#endif
#ifdef ECONNABORTED
  PFD__ERRNO(ECONNABORTED)
#endif
#ifdef ECONNREFUSED
  PFD__ERRNO(ECONNREFUSED)
#endif
#ifdef ECONNRESET
  PFD__ERRNO(ECONNRESET)
#endif
#ifdef EDEADLOCK
  PFD__ERRNO(EDEADLOCK)
#endif
#ifdef EDESTADDRREQ
  PFD__ERRNO(EDESTADDRREQ)
#endif
#ifdef EDOM
  PFD__ERRNO(EDOM)
#endif
#ifdef EDOTDOT
  PFD__ERRNO(EDOTDOT)
#endif
#ifdef EDQUOT
  PFD__ERRNO(EDQUOT)
#endif
#ifdef EEXIST
  PFD__ERRNO(EEXIST)
#endif
#ifdef EFAULT
  PFD__ERRNO(EFAULT)
#endif
#ifdef EFBIG
  PFD__ERRNO(EFBIG)
#endif
#ifdef EHOSTDOWN
  PFD__ERRNO(EHOSTDOWN)
#endif
#ifdef EHOSTUNREACH
  PFD__ERRNO(EHOSTUNREACH)
#endif
#ifdef EIDRM
  PFD__ERRNO(EIDRM)
#endif
#ifdef EILSEQ
  PFD__ERRNO(EILSEQ)
#endif
#ifdef EINPROGRESS
  PFD__ERRNO(EINPROGRESS)
#endif
#ifdef EINTR
  PFD__ERRNO(EINTR)
#endif
#ifdef EINVAL
  PFD__ERRNO(EINVAL)
#endif
#ifdef EIO
  PFD__ERRNO(EIO)
#endif
#ifdef EISCONN
  PFD__ERRNO(EISCONN)
#endif
#ifdef EISDIR
  PFD__ERRNO(EISDIR)
#endif
#ifdef EISNAM
  PFD__ERRNO(EISNAM)
#endif
#ifdef EKEYEXPIRED
  PFD__ERRNO(EKEYEXPIRED)
#endif
#ifdef EKEYREJECTED
  PFD__ERRNO(EKEYREJECTED)
#endif
#ifdef EKEYREVOKED
  PFD__ERRNO(EKEYREVOKED)
#endif
#ifdef EL2HLT
  PFD__ERRNO(EL2HLT)
#endif
#ifdef EL2NSYNC
  PFD__ERRNO(EL2NSYNC)
#endif
#ifdef EL3HLT
  PFD__ERRNO(EL3HLT)
#endif
#ifdef EL3RST
  PFD__ERRNO(EL3RST)
#endif
#ifdef ELIBACC
  PFD__ERRNO(ELIBACC)
#endif
#ifdef ELIBBAD
  PFD__ERRNO(ELIBBAD)
#endif
#ifdef ELIBEXEC
  PFD__ERRNO(ELIBEXEC)
#endif
#ifdef ELIBMAX
  PFD__ERRNO(ELIBMAX)
#endif
#ifdef ELIBSCN
  PFD__ERRNO(ELIBSCN)
#endif
#ifdef ELNRNG
  PFD__ERRNO(ELNRNG)
#endif
#ifdef ELOOP
  PFD__ERRNO(ELOOP)
#endif
#ifdef EMEDIUMTYPE
  PFD__ERRNO(EMEDIUMTYPE)
#endif
#ifdef EMFILE
  PFD__ERRNO(EMFILE)
#endif
#ifdef EMLINK
  PFD__ERRNO(EMLINK)
#endif
#ifdef EMSGSIZE
  PFD__ERRNO(EMSGSIZE)
#endif
#ifdef EMULTIHOP
  PFD__ERRNO(EMULTIHOP)
#endif
#ifdef ENAMETOOLONG
  PFD__ERRNO(ENAMETOOLONG)
#endif
#ifdef ENAVAIL
  PFD__ERRNO(ENAVAIL)
#endif
#ifdef ENETDOWN
  PFD__ERRNO(ENETDOWN)
#endif
#ifdef ENETRESET
  PFD__ERRNO(ENETRESET)
#endif
#ifdef ENETUNREACH
  PFD__ERRNO(ENETUNREACH)
#endif
#ifdef ENFILE
  PFD__ERRNO(ENFILE)
#endif
#ifdef ENOANO
  PFD__ERRNO(ENOANO)
#endif
#ifdef ENOBUFS
  PFD__ERRNO(ENOBUFS)
#endif
#ifdef ENOCSI
  PFD__ERRNO(ENOCSI)
#endif
#ifdef ENODATA
  PFD__ERRNO(ENODATA)
#endif
#ifdef ENODEV
  PFD__ERRNO(ENODEV)
#endif
#ifdef ENOENT
  PFD__ERRNO(ENOENT)
#endif
#ifdef ENOEXEC
  PFD__ERRNO(ENOEXEC)
#endif
#ifdef ENOKEY
  PFD__ERRNO(ENOKEY)
#endif
#ifdef ENOLCK
  PFD__ERRNO(ENOLCK)
#endif
#ifdef ENOLINK
  PFD__ERRNO(ENOLINK)
#endif
#ifdef ENOMEDIUM
  PFD__ERRNO(ENOMEDIUM)
#endif
#ifdef ENOMEM
  PFD__ERRNO(ENOMEM)
#endif
#ifdef ENOMSG
  PFD__ERRNO(ENOMSG)
#endif
#ifdef ENONET
  PFD__ERRNO(ENONET)
#endif
#ifdef ENOPKG
  PFD__ERRNO(ENOPKG)
#endif
#ifdef ENOPROTOOPT
  PFD__ERRNO(ENOPROTOOPT)
#endif
#ifdef ENOSPC
  PFD__ERRNO(ENOSPC)
#endif
#ifdef ENOSR
  PFD__ERRNO(ENOSR)
#endif
#ifdef ENOSTR
  PFD__ERRNO(ENOSTR)
#endif
#ifdef ENOSYS
  PFD__ERRNO(ENOSYS)
#endif
#ifdef ENOTBLK
  PFD__ERRNO(ENOTBLK)
#endif
#ifdef ENOTCONN
  PFD__ERRNO(ENOTCONN)
#endif
#ifdef ENOTDIR
  PFD__ERRNO(ENOTDIR)
#endif
#ifdef ENOTEMPTY
  PFD__ERRNO(ENOTEMPTY)
#endif
#ifdef ENOTNAM
  PFD__ERRNO(ENOTNAM)
#endif
#ifdef ENOTRECOVERABLE
  PFD__ERRNO(ENOTRECOVERABLE)
#endif
#ifdef ENOTSOCK
  PFD__ERRNO(ENOTSOCK)
#endif
#ifdef ENOTSUP
  PFD__ERRNO(ENOTSUP)
#endif
#ifdef ENOTTY
  PFD__ERRNO(ENOTTY)
#endif
#ifdef ENOTUNIQ
  PFD__ERRNO(ENOTUNIQ)
#endif
#ifdef ENXIO
  PFD__ERRNO(ENXIO)
#endif
#ifdef EOVERFLOW
  PFD__ERRNO(EOVERFLOW)
#endif
#ifdef EOWNERDEAD
  PFD__ERRNO(EOWNERDEAD)
#endif
#ifdef EPERM
  PFD__ERRNO(EPERM)
#endif
#ifdef EPFNOSUPPORT
  PFD__ERRNO(EPFNOSUPPORT)
#endif
#ifdef EPIPE
  PFD__ERRNO(EPIPE)
#endif
#ifdef EPROTO
  PFD__ERRNO(EPROTO)
#endif
#ifdef EPROTONOSUPPORT
  PFD__ERRNO(EPROTONOSUPPORT)
#endif
#ifdef EPROTOTYPE
  PFD__ERRNO(EPROTOTYPE)
#endif
#ifdef ERANGE
  PFD__ERRNO(ERANGE)
#endif
#ifdef EREMCHG
  PFD__ERRNO(EREMCHG)
#endif
#ifdef EREMOTE
  PFD__ERRNO(EREMOTE)
#endif
#ifdef EREMOTEIO
  PFD__ERRNO(EREMOTEIO)
#endif
#ifdef ERESTART
  PFD__ERRNO(ERESTART)
#endif
#ifdef ERFKILL
  PFD__ERRNO(ERFKILL)
#endif
#ifdef EROFS
  PFD__ERRNO(EROFS)
#endif
#ifdef ESHUTDOWN
  PFD__ERRNO(ESHUTDOWN)
#endif
#ifdef ESOCKTNOSUPPORT
  PFD__ERRNO(ESOCKTNOSUPPORT)
#endif
#ifdef ESPIPE
  PFD__ERRNO(ESPIPE)
#endif
#ifdef ESRCH
  PFD__ERRNO(ESRCH)
#endif
#ifdef ESRMNT
  PFD__ERRNO(ESRMNT)
#endif
#ifdef ESTALE
  PFD__ERRNO(ESTALE)
#endif
#ifdef ESTRPIPE
  PFD__ERRNO(ESTRPIPE)
#endif
#ifdef ETIME
  PFD__ERRNO(ETIME)
#endif
#ifdef ETIMEDOUT
  PFD__ERRNO(ETIMEDOUT)
#endif
#ifdef ETOOMANYREFS
  PFD__ERRNO(ETOOMANYREFS)
#endif
#ifdef ETXTBSY
  PFD__ERRNO(ETXTBSY)
#endif
#ifdef EUCLEAN
  PFD__ERRNO(EUCLEAN)
#endif
#ifdef EUNATCH
  PFD__ERRNO(EUNATCH)
#endif
#ifdef EUSERS
  PFD__ERRNO(EUSERS)
#endif
#ifdef EXDEV
  PFD__ERRNO(EXDEV)
#endif
#ifdef EXFULL
  PFD__ERRNO(EXFULL)
#endif
};

#undef PFD__ERRNO

static int pfd__abs(int err) { return err < 0 ? -err : err; }

const char *pfd_err_name(int err) {
  size_t i;
  err = pfd__abs(err);
  /* The table is alphabetical, so an alias could shadow the familiar name: answer those
   * before the scan. */
  if (err == EAGAIN) return "EAGAIN";
#ifdef EOPNOTSUPP
  if (err == EOPNOTSUPP) return "EOPNOTSUPP";
#endif
  if (err == EDEADLK) return "EDEADLK";
  for (i = 0; i < sizeof(pfd__errno_table) / sizeof(pfd__errno_table[0]); i++) {
    if (pfd__errno_table[i].value == err) return pfd__errno_table[i].name;
  }
  return "UNKNOWN";
}

const char *pfd_strerror(int err) {
  /* strerror() returns static strings for known codes on glibc >= 2.32, musl, macOS and
   * the Windows CRT; it is only used for display, never parsed. */
  const char *msg = strerror(pfd__abs(err));
  return msg != NULL ? msg : "Unknown error";
}
