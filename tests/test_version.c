/* test_version.c - mdg_version() at run time is the version of the header
 * the program was compiled with (MDG_VERSION_*), both project(VERSION). */
#include "testutil.h"

#define STR_(x) #x
#define STR(x) STR_(x)

int main(void)
{
    const char *v = mdg_version();
    CHECK(v != NULL);
    if (v) {
        const char *want =
            STR(MDG_VERSION_MAJOR) "." STR(MDG_VERSION_MINOR) "." STR(MDG_VERSION_PATCH);
        if (strcmp(v, want) != 0)
            fprintf(stderr, "mdg_version() is \"%s\", the header says \"%s\"\n", v, want);
        CHECK(strcmp(v, want) == 0);
        CHECK(v == mdg_version()); /* static text */
    }
    return t_done("test_version");
}
