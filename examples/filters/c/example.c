/*
 * The Sluice example filter, in C.
 *
 *   [stage.config] pattern = "..."   (required)
 *
 * Rejects a message whose Subject contains `pattern` (case-insensitive substring) with
 * 550 5.7.1; fails on purpose (abort) when the Subject contains "please crash", to show the
 * stage's on_error policy; otherwise counts the body bytes without keeping them, logs
 * "c example: N body bytes" and adds the header "X-Sluice-Example: c N".
 */
#define _GNU_SOURCE /* strcasestr */
#include <stdlib.h>
#include <string.h>

#include "sluice_filter.h"

struct filter {
    const char *pattern; /* owned by the helper: valid for the whole instance */
    unsigned long long body_bytes;
};

struct filter *filter_new(void) {
    const char *pattern = sluice_config_get("pattern");
    if (!pattern) {
        sluice_refuse("pattern", "missing: set pattern = \"TEXT\" (a Subject containing TEXT is rejected)");
        return NULL;
    }
    struct filter *filter = calloc(1, sizeof *filter);
    if (!filter) abort();
    filter->pattern = pattern;
    return filter;
}

sluice_interests filter_wants(void) { return SLUICE_HEADERS | SLUICE_BODY | SLUICE_END; }

void filter_on_headers(struct filter *filter, const sluice_headers *headers, sluice_answer *answer) {
    const char *subject = sluice_header_get(headers, "Subject");
    if (!subject) return;
    if (strcasestr(subject, filter->pattern)) {
        sluice_reject(answer, 550, "5.7.1", "Subject contains \"%s\"", filter->pattern);
        return;
    }
    if (strstr(subject, "please crash")) abort(); /* a failure of the stage, on purpose */
}

void filter_on_body_chunk(struct filter *filter, const uint8_t *chunk, size_t len, sluice_answer *answer) {
    (void)chunk, (void)answer; /* continue, and pass the chunk on unchanged */
    filter->body_bytes += len;
}

void filter_on_end(struct filter *filter, sluice_answer *answer) {
    sluice_log(SLUICE_INFO, "c example: %llu body bytes", filter->body_bytes);
    sluice_add_header(answer, "X-Sluice-Example", "c %llu", filter->body_bytes);
}
