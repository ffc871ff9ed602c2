/* sl_assets.h - the static files built into the binary (cmake/embed.cmake):
 * /sillage.js (minified by js-tag/build.mjs), the demo shop under /demo/ and
 * the /debug page. */
#ifndef SL_ASSETS_H
#define SL_ASSETS_H

#include <stddef.h>

typedef struct sl_asset_s {
    const char *path;          /* URL path */
    const char *content_type;
    const unsigned char *data;
    size_t len;
} sl_asset_t;

extern const sl_asset_t sl_assets[];
extern const size_t sl_n_assets;

#endif
