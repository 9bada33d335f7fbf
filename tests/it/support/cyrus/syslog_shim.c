/* LD_PRELOAD shim for the Cyrus test server (support/cyrus/server.rs): Cyrus only logs
 * through syslog(3) and there is no syslogd, so every message is appended to
 * $CYRUS_SYSLOG_FILE instead. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static const char *shim_ident = "";
void openlog(const char *ident, int option, int facility) {
  (void)option; (void)facility; if (ident) shim_ident = ident;
}
void closelog(void) {}
int setlogmask(int mask) { (void)mask; return 0xff; }
void vsyslog(int pri, const char *fmt, va_list ap) {
  const char *path = getenv("CYRUS_SYSLOG_FILE");
  if (!path) return;
  int saved = errno;
  char buf[8192];
  int n = snprintf(buf, sizeof buf, "%ld %s[%d] <%d>: ", (long)time(NULL), shim_ident,
                   (int)getpid(), pri & 7);
  if (n < 0) n = 0;
  if ((size_t)n < sizeof buf) {
    errno = saved; /* for %m */
    int m = vsnprintf(buf + n, sizeof buf - n, fmt, ap);
    if (m > 0) n += m;
  }
  if ((size_t)n > sizeof buf - 2) n = sizeof buf - 2;
  if (n > 0 && buf[n - 1] != '\n') buf[n++] = '\n';
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd >= 0) { ssize_t w = write(fd, buf, n); (void)w; close(fd); }
  errno = saved;
}
void syslog(int pri, const char *fmt, ...) {
  va_list ap; va_start(ap, fmt); vsyslog(pri, fmt, ap); va_end(ap);
}
void __syslog_chk(int pri, int flag, const char *fmt, ...) {
  (void)flag; va_list ap; va_start(ap, fmt); vsyslog(pri, fmt, ap); va_end(ap);
}
void __vsyslog_chk(int pri, int flag, const char *fmt, va_list ap) {
  (void)flag; vsyslog(pri, fmt, ap);
}
