/* aclAppLog, compiled into each CANN library xpupool ships
 * (scripts/build-acl-libs.sh): torch_npu's log lines are C variadic calls, whose
 * arguments Rust cannot read, so the line is formatted here and handed to the
 * core (acl/src/settings.rs), which says errors on stderr and drops the rest, as
 * CANN drops what its log level hides. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

void xpupool_acl_log(int level, const char *file, uint32_t line, const char *text);

void aclAppLog(int level, const char *func, const char *file, uint32_t line, const char *fmt, ...) {
    (void)func;
    if (level < 3 || fmt == NULL) return;
    char text[2048];
    va_list args;
    va_start(args, fmt);
    vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    xpupool_acl_log(level, file, line, text);
}
