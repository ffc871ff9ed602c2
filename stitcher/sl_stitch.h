/* sl_stitch.h - identity stitching (see DESIGN.md, "Identity stitching rules").
 *
 * So far only the identifier filter lives here; the identity graph, merges
 * and profiles come with issue #4 and will run inside the writer's
 * transaction.
 */
#ifndef SL_STITCH_H
#define SL_STITCH_H

#include <stddef.h>

/* 1 when value must never become an identifier: empty or blank, or equal
 * (ASCII case-insensitively, surrounding blanks ignored) to one of the
 * configured junk values ("null", "undefined", "anonymous", "0", "guest"...). */
int sl_ident_is_junk(const char *value, size_t len, char *const *junk, size_t n_junk);

#endif
