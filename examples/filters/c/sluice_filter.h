/*
 * sluice_filter.h — write a Sluice mail filter in plain C.
 *
 * Targets the WIT contract sluice:filter@0.2.2, world `filter` (wit/filter.wit). This helper
 * (sluice_filter.c) implements the raw bindings that `wit-bindgen c` generates and calls the
 * plain functions you write, with NUL-terminated C strings. You never see the canonical ABI
 * types, and you never free anything the helper gives you.
 *
 * You write:
 *
 *   struct filter { ... };                 your per-message state (one per message)
 *   struct filter *filter_new(void);       read the configuration and return a new state
 *                                          (malloc it), or refuse: sluice_refuse(...); return NULL;
 *   sluice_interests filter_wants(void);   which events you need (default: all of them)
 *   void filter_on_headers(struct filter *, const sluice_headers *, sluice_answer *);
 *   void filter_on_body_chunk(struct filter *, const uint8_t *, size_t, sluice_answer *);
 *   void filter_on_end(struct filter *, sluice_answer *);
 *   ... and, if you need them, filter_on_connect/helo/mail_from/rcpt_to and filter_free.
 *
 * Every function but filter_new has a default (weak) definition in the helper: a hook you do
 * not write answers "continue, no changes, pass the body"; filter_free defaults to free().
 *
 * An answer starts as "continue, no header changes, body passed on unchanged"; change it
 * with the sluice_* calls below. Strings you give them are copied at once: pass literals,
 * stack buffers, anything.
 *
 * Life of a filter: the host calls filter_wants() and filter_new() once when it loads the
 * filter (`validate-config`), in an instance of its own, and reports a refusal to the
 * operator; configuration keys that filter_new and filter_wants never read with
 * sluice_config_get are reported as unknown. Then each message gets a fresh instance of the
 * whole module (fresh globals, fresh heap): filter_new(), the hooks in order, filter_free().
 * A trap (abort(), a NULL dereference the runtime catches, running past the memory or CPU
 * limits) is a failure of the stage, handled by its `on_error` policy.
 */
#ifndef SLUICE_FILTER_H
#define SLUICE_FILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SLUICE_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))

/* ---- Events (filter_wants) ---------------------------------------------------------- */

typedef uint8_t sluice_interests;
#define SLUICE_CONNECT   (1u << 0)
#define SLUICE_HELO      (1u << 1)
#define SLUICE_MAIL_FROM (1u << 2)
#define SLUICE_RCPT_TO   (1u << 3)
#define SLUICE_HEADERS   (1u << 4)
#define SLUICE_BODY      (1u << 5)
#define SLUICE_END       (1u << 6)
#define SLUICE_ALL       (0x7fu)

/* ---- Configuration -------------------------------------------------------------------- */

/* The value of a [stage.config] key, or NULL when the key is absent. Non-string TOML values
 * come as their TOML text (`true`, `42`). The string stays valid for the whole instance. */
const char *sluice_config_get(const char *key);

/* Refuses the configuration: call it in filter_new, then return NULL. `key` is the
 * [stage.config] key at fault ("" for none); the message is one line for an operator. */
void sluice_refuse(const char *key, const char *fmt, ...) SLUICE_PRINTF(2, 3);

/* The bytes of the [stage.files] entry `name` (sets *len), or NULL when there is none.
 * Valid for the whole instance. */
const uint8_t *sluice_file(const char *name, size_t *len);

/* ---- Logging --------------------------------------------------------------------------- */

typedef enum sluice_level {
    SLUICE_TRACE,
    SLUICE_DEBUG,
    SLUICE_INFO,
    SLUICE_WARN,
    SLUICE_ERROR,
} sluice_level;

/* printf-style line in the gateway's log (subsystem `filters`, with stage and session). */
void sluice_log(sluice_level level, const char *fmt, ...) SLUICE_PRINTF(2, 3);

/* ---- Headers --------------------------------------------------------------------------- */

typedef struct sluice_header {
    const char *name;  /* as written in the message: compare case-insensitively */
    const char *value; /* unfolded, trimmed */
} sluice_header;

typedef struct sluice_headers {
    size_t count;
    const sluice_header *fields; /* in message order */
} sluice_headers;

/* The value of the first field called `name` (case-insensitive), or NULL. */
const char *sluice_header_get(const sluice_headers *headers, const char *name);

/* The header section byte for byte, as this stage got it at on-headers (sets *len). Valid
 * until the hook returns. */
const uint8_t *sluice_raw_header_section(size_t *len);

/* ---- Answers --------------------------------------------------------------------------- */

typedef struct sluice_answer sluice_answer;

/* Verdicts. The last one set wins. Envelope hooks (connect, helo, mail from, rcpt to) use
 * only the verdict of their answer. */
void sluice_accept(sluice_answer *answer);  /* done with this message: pass it on */
void sluice_discard(sluice_answer *answer); /* tell the client 250, drop the message */
/* Refuse with a 5xx (reject) or 4xx (tempfail) reply; `enhanced` like "5.7.1", or "". */
void sluice_reject(sluice_answer *answer, unsigned code, const char *enhanced, const char *fmt, ...)
    SLUICE_PRINTF(4, 5);
void sluice_tempfail(sluice_answer *answer, unsigned code, const char *enhanced, const char *fmt, ...)
    SLUICE_PRINTF(4, 5);

/* Header changes, applied in the order made (on-headers and on-end; ignored at body chunks). */
void sluice_add_header(sluice_answer *answer, const char *name, const char *fmt, ...) SLUICE_PRINTF(3, 4);
void sluice_prepend_header(sluice_answer *answer, const char *name, const char *fmt, ...) SLUICE_PRINTF(3, 4);
/* Set the index-th field called `name` (1 = first); added at the end when there is none. */
void sluice_change_header(sluice_answer *answer, const char *name, unsigned index, const char *fmt, ...)
    SLUICE_PRINTF(4, 5);
/* Remove the index-th field called `name` (0 = every field of that name). */
void sluice_remove_header(sluice_answer *answer, const char *name, unsigned index);

/* Body output. At on-body-chunk the first write replaces the chunk (and later writes follow
 * it); sluice_body_drop removes the chunk from the message. At on-end, writes append to the
 * body. Lines end with CRLF. */
void sluice_body_write(sluice_answer *answer, const void *bytes, size_t len);
void sluice_body_drop(sluice_answer *answer);

/* ---- What you write ---------------------------------------------------------------------- */

struct filter;

struct filter *filter_new(void);
void filter_free(struct filter *filter);
sluice_interests filter_wants(void);
void filter_on_connect(struct filter *filter, const char *peer, sluice_answer *answer);
void filter_on_helo(struct filter *filter, const char *name, sluice_answer *answer);
void filter_on_mail_from(struct filter *filter, const char *address, sluice_answer *answer);
void filter_on_rcpt_to(struct filter *filter, const char *address, sluice_answer *answer);
void filter_on_headers(struct filter *filter, const sluice_headers *headers, sluice_answer *answer);
void filter_on_body_chunk(struct filter *filter, const uint8_t *chunk, size_t len, sluice_answer *answer);
void filter_on_end(struct filter *filter, sluice_answer *answer);

#ifdef __cplusplus
}
#endif

#endif
