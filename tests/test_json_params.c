/* test_json_params.c - tools/json_params.c on the awkward values params can
 * hold (undefined, integers past int64, infinities): what `messidge call`
 * prints is JSON whatever the params hold. Text that is not UTF-8 and
 * indefinite strings cannot be in params at all: the setters refuse them,
 * as a receiver's decoder would. */
#include "../tools/json_params.h"
#include "testutil.h"

#include <math.h>

int main(void)
{
    mdg_params *p = mdg_params_new();
    cbor_item_t *chunked = cbor_new_indefinite_string();
    cbor_item_t *part = cbor_build_stringn("ab", 2);
    cbor_string_add_chunk(chunked, part);
    cbor_decref(&part);
    CHECK_RC(mdg_params_set_item(p, "bad_utf8", cbor_build_stringn("a\xff\xfe\xed\xa0\x80z", 7)), MDG_EINVAL);
    CHECK(strstr(mdg_last_error(), "not valid UTF-8") != NULL);
    CHECK_RC(mdg_params_set_str(p, "bad_utf8", "a\xff\xfez"), MDG_EINVAL);
    CHECK_RC(mdg_params_set_item(p, "chunked", chunked), MDG_EINVAL);
    CHECK(!mdg_params_has(p, "bad_utf8") && !mdg_params_has(p, "chunked"));
    mdg_params_set_item(p, "undefined", cbor_new_undef());
    mdg_params_set_item(p, "huge", cbor_build_uint64(UINT64_MAX));
    mdg_params_set_double(p, "ninf", -INFINITY);

    char *text = json_params_text(p);
    json_error_t err;
    json_t *v = text ? json_loads(text, 0, &err) : NULL;
    if (!v)
        fprintf(stderr, "not JSON: %s\n", text ? text : "(null)");
    CHECK(v != NULL);
    CHECK(json_is_null(json_object_get(v, "undefined")) && json_is_null(json_object_get(v, "ninf")));
    CHECK(json_is_real(json_object_get(v, "huge")));
    json_decref(v);
    free(text);
    mdg_params_destroy(&p);
    return t_done("test_json_params");
}
