/* Sticky per-thread errors: the first message since nb_error_clear wins. */
#include "internal.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local nb_status t_code = NB_OK;
static _Thread_local char t_msg[1024];
_Thread_local uint64_t nb__t_error_count = 0;

static nb_error_handler g_handler = NULL;
static void *g_handler_user = NULL;

static const char *const status_names[] = {
    [NB_OK] = "NB_OK",
    [NB_ERR_ARG] = "NB_ERR_ARG",
    [NB_ERR_SHAPE] = "NB_ERR_SHAPE",
    [NB_ERR_DTYPE] = "NB_ERR_DTYPE",
    [NB_ERR_STATE] = "NB_ERR_STATE",
    [NB_ERR_NOMEM] = "NB_ERR_NOMEM",
    [NB_ERR_IO] = "NB_ERR_IO",
    [NB_ERR_FORMAT] = "NB_ERR_FORMAT",
    [NB_ERR_NUMERIC] = "NB_ERR_NUMERIC",
    [NB_ERR_UNSUPPORTED] = "NB_ERR_UNSUPPORTED",
};
_Static_assert(sizeof(status_names) / sizeof(status_names[0]) == NB_STATUS_COUNT,
               "status_names must name every nb_status");

const char *nb_status_name(nb_status s)
{
    if ((unsigned)s >= NB_STATUS_COUNT) return "NB_ERR_?";
    return status_names[s];
}

nb_status nb_error_code(void) { return t_code; }
const char *nb_error_message(void) { return t_code == NB_OK ? "" : t_msg; }

void nb_error_clear(void)
{
    t_code = NB_OK;
    t_msg[0] = 0;
}

void nb_set_error_handler(nb_error_handler handler, void *user)
{
    g_handler = handler;
    g_handler_user = user;
}

void nb_error_handler_print(nb_status status, const char *message, void *user)
{
    (void)user;
    fprintf(stderr, "nabla: %s: %s\n", nb_status_name(status), message);
}

void nb_error_handler_abort(nb_status status, const char *message, void *user)
{
    nb_error_handler_print(status, message, user);
    abort();
}

static void record(nb_status status, const char *fmt, va_list ap)
{
    nb__t_error_count++;
    if (t_code != NB_OK) return; /* keep the first error */
    t_code = status;
    vsnprintf(t_msg, sizeof t_msg, fmt, ap);
    if (g_handler) g_handler(status, t_msg, g_handler_user);
}

void *nb__fail(nb_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    record(status, fmt, ap);
    va_end(ap);
    return NULL;
}

nb_status nb__fail_status(nb_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    record(status, fmt, ap);
    va_end(ap);
    return status;
}

const char *nb__shape_str(int ndim, const int64_t *shape)
{
    static _Thread_local char bufs[4][160];
    static _Thread_local int which = 0;
    char *b = bufs[which];
    which = (which + 1) % 4;
    size_t off = 0;
    off += (size_t)snprintf(b + off, sizeof bufs[0] - off, "[");
    for (int i = 0; i < ndim && off < sizeof bufs[0]; i++)
        off += (size_t)snprintf(b + off, sizeof bufs[0] - off, i ? ",%lld" : "%lld", (long long)shape[i]);
    if (off < sizeof bufs[0]) snprintf(b + off, sizeof bufs[0] - off, "]");
    return b;
}

void nb_error_set(nb_status status, const char *fmt, ...)
{
    if (status == NB_OK || (unsigned)status >= NB_STATUS_COUNT) status = NB_ERR_ARG;
    va_list ap;
    va_start(ap, fmt);
    record(status, fmt ? fmt : "(no message)", ap);
    va_end(ap);
}
