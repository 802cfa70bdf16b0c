/*
 * sluice_filter.c — the glue between the bindings `wit-bindgen c` generates for the world
 * sluice:filter/filter@0.2.2 (filter.h, filter.c) and the plain functions of sluice_filter.h.
 *
 * Ownership rules of the generated bindings, handled here once so a filter never has to:
 *  - arguments of exported functions (header lists, body chunks) belong to the callee, which
 *    frees them (the host allocated them in our heap through cabi_realloc);
 *  - results of exported functions are freed by the generated post-return functions with
 *    free(), so every non-empty string or list returned must come from malloc;
 *  - results of imported functions (config values, files) are ours to free;
 *  - arguments of imported functions (log lines) stay ours.
 */
#define _GNU_SOURCE
#include "sluice_filter.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "filter.h"

_Static_assert(SLUICE_HEADERS == SLUICE_FILTER_TYPES_INTERESTS_HEADERS, "interest bits");
_Static_assert(SLUICE_BODY == SLUICE_FILTER_TYPES_INTERESTS_BODY, "interest bits");
_Static_assert(SLUICE_END == SLUICE_FILTER_TYPES_INTERESTS_END, "interest bits");
_Static_assert(SLUICE_CONNECT == SLUICE_FILTER_TYPES_INTERESTS_CONNECT, "interest bits");
_Static_assert(SLUICE_RCPT_TO == SLUICE_FILTER_TYPES_INTERESTS_RCPT_TO, "interest bits");

typedef sluice_filter_types_verdict_t verdict_t;
typedef sluice_filter_types_header_change_t header_change_t;
typedef exports_sluice_filter_handler_reaction_t reaction_t;

/* ---- small utilities ----------------------------------------------------------------------- */

static void *xmalloc(size_t size) {
    void *p = malloc(size ? size : 1);
    if (!p) abort();
    return p;
}

static void *xrealloc(void *ptr, size_t size) {
    void *p = realloc(ptr, size ? size : 1);
    if (!p) abort();
    return p;
}

static char *xstrndup(const uint8_t *s, size_t len) {
    char *p = xmalloc(len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

static char *vformat(const char *fmt, va_list ap) {
    va_list again;
    va_copy(again, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    if (n < 0) n = 0;
    char *s = xmalloc((size_t)n + 1);
    vsnprintf(s, (size_t)n + 1, fmt, again);
    va_end(again);
    return s;
}

/* A component-model string owning a malloc'd copy of `s` (as post-return expects). */
static filter_string_t cm_string(const char *s) {
    filter_string_t out;
    filter_string_dup(&out, s);
    return out;
}

/* A component-model string taking over the malloc'd C string `s`. */
static filter_string_t cm_string_take(char *s) {
    filter_string_t out = {(uint8_t *)s, strlen(s)};
    if (out.len == 0) {
        free(s);
        out.ptr = NULL;
    }
    return out;
}

/* ---- configuration and files -------------------------------------------------------------- */

struct config_entry {
    char *key;
    char *value; /* NULL: absent */
};

static struct config_entry *config_cache;
static size_t config_count;

const char *sluice_config_get(const char *key) {
    for (size_t i = 0; i < config_count; i++)
        if (strcmp(config_cache[i].key, key) == 0) return config_cache[i].value;
    filter_string_t k;
    filter_string_set(&k, key);
    filter_string_t v;
    char *value = NULL;
    if (sluice_filter_host_config_get(&k, &v)) {
        value = xstrndup(v.ptr, v.len);
        filter_string_free(&v);
    }
    config_cache = xrealloc(config_cache, (config_count + 1) * sizeof *config_cache);
    config_cache[config_count].key = strdup(key);
    config_cache[config_count].value = value;
    config_count++;
    return value;
}

static bool config_was_read(const uint8_t *key, size_t len) {
    for (size_t i = 0; i < config_count; i++)
        if (strlen(config_cache[i].key) == len && memcmp(config_cache[i].key, key, len) == 0) return true;
    return false;
}

struct file_entry {
    char *name;
    bool present;
    filter_list_u8_t bytes;
};

static struct file_entry *file_cache;
static size_t file_count;

const uint8_t *sluice_file(const char *name, size_t *len) {
    struct file_entry *entry = NULL;
    for (size_t i = 0; i < file_count && !entry; i++)
        if (strcmp(file_cache[i].name, name) == 0) entry = &file_cache[i];
    if (!entry) {
        file_cache = xrealloc(file_cache, (file_count + 1) * sizeof *file_cache);
        entry = &file_cache[file_count++];
        entry->name = strdup(name);
        filter_string_t n;
        filter_string_set(&n, name);
        entry->present = sluice_filter_files_file(&n, &entry->bytes);
    }
    if (!entry->present) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = entry->bytes.len;
    /* An empty file has no allocation behind it: hand out a valid pointer anyway. */
    return entry->bytes.len ? entry->bytes.ptr : (const uint8_t *)"";
}

static char *refusal_key;
static char *refusal_message;

void sluice_refuse(const char *key, const char *fmt, ...) {
    free(refusal_key);
    free(refusal_message);
    refusal_key = strdup(key ? key : "");
    va_list ap;
    va_start(ap, fmt);
    refusal_message = vformat(fmt, ap);
    va_end(ap);
}

/* ---- logging --------------------------------------------------------------------------------- */

void sluice_log(sluice_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *line = vformat(fmt, ap);
    va_end(ap);
    filter_string_t message;
    filter_string_set(&message, line);
    sluice_filter_host_log((sluice_filter_host_level_t)level, &message);
    free(line);
}

/* ---- headers --------------------------------------------------------------------------------- */

const char *sluice_header_get(const sluice_headers *headers, const char *name) {
    for (size_t i = 0; i < headers->count; i++)
        if (strcasecmp(headers->fields[i].name, name) == 0) return headers->fields[i].value;
    return NULL;
}

/* Memory handed out for the duration of one hook. */
static filter_list_u8_t raw_section;
static bool raw_section_held;

const uint8_t *sluice_raw_header_section(size_t *len) {
    if (!raw_section_held) {
        sluice_filter_raw_header_section(&raw_section);
        raw_section_held = true;
    }
    if (len) *len = raw_section.len;
    return raw_section.len ? raw_section.ptr : (const uint8_t *)"";
}

static void end_of_hook(void) {
    if (raw_section_held) {
        filter_list_u8_free(&raw_section);
        raw_section_held = false;
    }
}

/* ---- answers --------------------------------------------------------------------------------- */

struct sluice_answer {
    verdict_t verdict;
    header_change_t *changes;
    size_t change_count;
    bool replace_body;
    filter_list_u8_t *chunks;
    size_t chunk_count;
};

static void answer_init(sluice_answer *a) {
    memset(a, 0, sizeof *a);
    a->verdict.tag = SLUICE_FILTER_TYPES_VERDICT_CONTINUE;
}

static void set_verdict(sluice_answer *a, uint8_t tag) {
    sluice_filter_types_verdict_free(&a->verdict);
    memset(&a->verdict, 0, sizeof a->verdict);
    a->verdict.tag = tag;
}

void sluice_accept(sluice_answer *a) { set_verdict(a, SLUICE_FILTER_TYPES_VERDICT_ACCEPT); }
void sluice_discard(sluice_answer *a) { set_verdict(a, SLUICE_FILTER_TYPES_VERDICT_DISCARD); }

static void set_reply(sluice_answer *a, uint8_t tag, unsigned code, const char *enhanced, const char *fmt,
                      va_list ap) {
    set_verdict(a, tag);
    sluice_filter_types_smtp_reply_t reply;
    reply.code = (uint16_t)code;
    reply.enhanced = cm_string(enhanced ? enhanced : "");
    reply.text = cm_string_take(vformat(fmt, ap));
    if (tag == SLUICE_FILTER_TYPES_VERDICT_REJECT)
        a->verdict.val.reject = reply;
    else
        a->verdict.val.tempfail = reply;
}

void sluice_reject(sluice_answer *a, unsigned code, const char *enhanced, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set_reply(a, SLUICE_FILTER_TYPES_VERDICT_REJECT, code, enhanced, fmt, ap);
    va_end(ap);
}

void sluice_tempfail(sluice_answer *a, unsigned code, const char *enhanced, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set_reply(a, SLUICE_FILTER_TYPES_VERDICT_TEMPFAIL, code, enhanced, fmt, ap);
    va_end(ap);
}

static header_change_t *push_change(sluice_answer *a, uint8_t tag) {
    a->changes = xrealloc(a->changes, (a->change_count + 1) * sizeof *a->changes);
    header_change_t *change = &a->changes[a->change_count++];
    memset(change, 0, sizeof *change);
    change->tag = tag;
    return change;
}

void sluice_add_header(sluice_answer *a, const char *name, const char *fmt, ...) {
    header_change_t *change = push_change(a, SLUICE_FILTER_TYPES_HEADER_CHANGE_ADD);
    va_list ap;
    va_start(ap, fmt);
    change->val.add.name = cm_string(name);
    change->val.add.value = cm_string_take(vformat(fmt, ap));
    va_end(ap);
}

void sluice_prepend_header(sluice_answer *a, const char *name, const char *fmt, ...) {
    header_change_t *change = push_change(a, SLUICE_FILTER_TYPES_HEADER_CHANGE_PREPEND);
    va_list ap;
    va_start(ap, fmt);
    change->val.prepend.name = cm_string(name);
    change->val.prepend.value = cm_string_take(vformat(fmt, ap));
    va_end(ap);
}

void sluice_change_header(sluice_answer *a, const char *name, unsigned index, const char *fmt, ...) {
    header_change_t *change = push_change(a, SLUICE_FILTER_TYPES_HEADER_CHANGE_CHANGE);
    va_list ap;
    va_start(ap, fmt);
    change->val.change.name = cm_string(name);
    change->val.change.index = index;
    change->val.change.value = cm_string_take(vformat(fmt, ap));
    va_end(ap);
}

void sluice_remove_header(sluice_answer *a, const char *name, unsigned index) {
    header_change_t *change = push_change(a, SLUICE_FILTER_TYPES_HEADER_CHANGE_REMOVE);
    change->val.remove.name = cm_string(name);
    change->val.remove.index = index;
}

void sluice_body_write(sluice_answer *a, const void *bytes, size_t len) {
    a->replace_body = true;
    if (len == 0) return;
    a->chunks = xrealloc(a->chunks, (a->chunk_count + 1) * sizeof *a->chunks);
    filter_list_u8_t *chunk = &a->chunks[a->chunk_count++];
    chunk->ptr = xmalloc(len);
    memcpy(chunk->ptr, bytes, len);
    chunk->len = len;
}

void sluice_body_drop(sluice_answer *a) {
    for (size_t i = 0; i < a->chunk_count; i++) filter_list_u8_free(&a->chunks[i]);
    a->chunk_count = 0;
    a->replace_body = true;
}

/* Hands the answer over to the bindings (their post-return frees it). */
static void answer_to_reaction(sluice_answer *a, reaction_t *ret) {
    end_of_hook();
    ret->verdict = a->verdict;
    ret->header_changes.ptr = a->changes;
    ret->header_changes.len = a->change_count;
    if (a->change_count == 0) {
        free(a->changes);
        ret->header_changes.ptr = NULL;
    }
    if (a->replace_body) {
        ret->body.tag = SLUICE_FILTER_TYPES_BODY_OUTPUT_REPLACE;
        ret->body.val.replace.ptr = a->chunks;
        ret->body.val.replace.len = a->chunk_count;
        if (a->chunk_count == 0) {
            free(a->chunks);
            ret->body.val.replace.ptr = NULL;
        }
    } else {
        free(a->chunks);
        ret->body.tag = SLUICE_FILTER_TYPES_BODY_OUTPUT_PASS;
    }
}

/* Envelope events answer with a verdict alone: changes and body output are dropped. */
static void answer_to_verdict(sluice_answer *a, verdict_t *ret) {
    end_of_hook();
    *ret = a->verdict;
    for (size_t i = 0; i < a->change_count; i++) sluice_filter_types_header_change_free(&a->changes[i]);
    free(a->changes);
    for (size_t i = 0; i < a->chunk_count; i++) filter_list_u8_free(&a->chunks[i]);
    free(a->chunks);
}

/* ---- defaults for what the filter does not write ----------------------------------------- */

__attribute__((weak)) void filter_free(struct filter *filter) { free(filter); }
__attribute__((weak)) sluice_interests filter_wants(void) { return SLUICE_ALL; }
__attribute__((weak)) void filter_on_connect(struct filter *f, const char *peer, sluice_answer *a) {
    (void)f, (void)peer, (void)a;
}
__attribute__((weak)) void filter_on_helo(struct filter *f, const char *name, sluice_answer *a) {
    (void)f, (void)name, (void)a;
}
__attribute__((weak)) void filter_on_mail_from(struct filter *f, const char *address, sluice_answer *a) {
    (void)f, (void)address, (void)a;
}
__attribute__((weak)) void filter_on_rcpt_to(struct filter *f, const char *address, sluice_answer *a) {
    (void)f, (void)address, (void)a;
}
__attribute__((weak)) void filter_on_headers(struct filter *f, const sluice_headers *h, sluice_answer *a) {
    (void)f, (void)h, (void)a;
}
__attribute__((weak)) void filter_on_body_chunk(struct filter *f, const uint8_t *c, size_t n, sluice_answer *a) {
    (void)f, (void)c, (void)n, (void)a;
}
__attribute__((weak)) void filter_on_end(struct filter *f, sluice_answer *a) { (void)f, (void)a; }

/* ---- the exports of sluice:filter/handler ------------------------------------------------- */

struct exports_sluice_filter_handler_message_t {
    struct filter *filter;
};

bool exports_sluice_filter_handler_validate_config(exports_sluice_filter_handler_config_report_t *ret,
                                                   exports_sluice_filter_handler_config_problem_t *err) {
    (void)filter_wants();
    struct filter *filter = filter_new();
    if (!filter) {
        err->key = cm_string(refusal_key ? refusal_key : "");
        err->message = cm_string(refusal_message ? refusal_message
                                                 : "the filter refused its configuration "
                                                   "(filter_new returned NULL without sluice_refuse)");
        return false;
    }
    filter_free(filter);

    filter_list_tuple2_string_string_t all;
    sluice_filter_host_config(&all);
    filter_string_t *unused = all.len ? xmalloc(all.len * sizeof *unused) : NULL;
    size_t unused_count = 0;
    for (size_t i = 0; i < all.len; i++) {
        filter_string_free(&all.ptr[i].f1);
        if (config_was_read(all.ptr[i].f0.ptr, all.ptr[i].f0.len))
            filter_string_free(&all.ptr[i].f0);
        else
            unused[unused_count++] = all.ptr[i].f0; /* ownership moves to the answer */
    }
    if (all.len) free(all.ptr);
    if (unused_count == 0) {
        free(unused);
        unused = NULL;
    }
    ret->unused_keys.ptr = unused;
    ret->unused_keys.len = unused_count;
    return true;
}

exports_sluice_filter_handler_interests_t exports_sluice_filter_handler_wants(void) {
    return filter_wants() & SLUICE_ALL;
}

exports_sluice_filter_handler_own_message_t exports_sluice_filter_handler_constructor_message(void) {
    struct filter *filter = filter_new();
    if (!filter) {
        /* validate-config accepted this configuration: a filter_new that refuses it now is a
         * bug in the filter, and a failure of the stage. */
        sluice_log(SLUICE_ERROR, "filter_new refused the configuration at a message: %s",
                   refusal_message ? refusal_message : "(no reason given)");
        abort();
    }
    exports_sluice_filter_handler_message_t *rep = xmalloc(sizeof *rep);
    rep->filter = filter;
    return exports_sluice_filter_handler_message_new(rep);
}

void exports_sluice_filter_handler_message_destructor(exports_sluice_filter_handler_message_t *rep) {
    filter_free(rep->filter);
    free(rep);
}

typedef void (*envelope_hook)(struct filter *, const char *, sluice_answer *);

static void envelope(exports_sluice_filter_handler_message_t *self, envelope_hook hook, filter_string_t *arg,
                     verdict_t *ret) {
    char *text = xstrndup(arg->ptr, arg->len);
    filter_string_free(arg);
    sluice_answer answer;
    answer_init(&answer);
    hook(self->filter, text, &answer);
    free(text);
    answer_to_verdict(&answer, ret);
}

void exports_sluice_filter_handler_method_message_on_connect(exports_sluice_filter_handler_borrow_message_t self,
                                                             filter_string_t *peer, verdict_t *ret) {
    envelope(self, filter_on_connect, peer, ret);
}

void exports_sluice_filter_handler_method_message_on_helo(exports_sluice_filter_handler_borrow_message_t self,
                                                          filter_string_t *name, verdict_t *ret) {
    envelope(self, filter_on_helo, name, ret);
}

void exports_sluice_filter_handler_method_message_on_mail_from(exports_sluice_filter_handler_borrow_message_t self,
                                                               filter_string_t *address, verdict_t *ret) {
    envelope(self, filter_on_mail_from, address, ret);
}

void exports_sluice_filter_handler_method_message_on_rcpt_to(exports_sluice_filter_handler_borrow_message_t self,
                                                             filter_string_t *address, verdict_t *ret) {
    envelope(self, filter_on_rcpt_to, address, ret);
}

void exports_sluice_filter_handler_method_message_on_headers(exports_sluice_filter_handler_borrow_message_t self,
                                                             exports_sluice_filter_handler_list_header_t *list,
                                                             reaction_t *ret) {
    size_t count = list->len;
    sluice_header *fields = xmalloc(count * sizeof *fields);
    for (size_t i = 0; i < count; i++) {
        fields[i].name = xstrndup(list->ptr[i].name.ptr, list->ptr[i].name.len);
        fields[i].value = xstrndup(list->ptr[i].value.ptr, list->ptr[i].value.len);
    }
    exports_sluice_filter_handler_list_header_free(list);
    sluice_headers headers = {count, fields};
    sluice_answer answer;
    answer_init(&answer);
    filter_on_headers(self->filter, &headers, &answer);
    for (size_t i = 0; i < count; i++) {
        free((char *)fields[i].name);
        free((char *)fields[i].value);
    }
    free(fields);
    answer_to_reaction(&answer, ret);
}

void exports_sluice_filter_handler_method_message_on_body_chunk(exports_sluice_filter_handler_borrow_message_t self,
                                                                filter_list_u8_t *chunk, reaction_t *ret) {
    sluice_answer answer;
    answer_init(&answer);
    filter_on_body_chunk(self->filter, chunk->ptr, chunk->len, &answer);
    filter_list_u8_free(chunk); /* never kept: a body is never buffered here */
    answer_to_reaction(&answer, ret);
}

void exports_sluice_filter_handler_method_message_on_end(exports_sluice_filter_handler_borrow_message_t self,
                                                         reaction_t *ret) {
    sluice_answer answer;
    answer_init(&answer);
    filter_on_end(self->filter, &answer);
    answer_to_reaction(&answer, ret);
}
