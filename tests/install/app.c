/* app.c - a program built against an installed libmessidge (test_install):
 * both headers compile, and the library links and runs. */
#include <messidge.h>
#include <messidge_identity.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
    mdg_keys *keys = NULL;
    mdg_params *p = mdg_params_new();
    if (!p || mdg_keys_new(&keys) != 0)
        return 1;
    mdg_params_set_int(p, "answer", 42);
    char *text = mdg_params_to_text(p);
    int ok = text && strstr(text, "42") != NULL;
    printf("libmessidge %s: %s\n", mdg_version(), text ? text : "(null)");
    free(text);
    mdg_params_destroy(&p);
    mdg_keys_destroy(&keys);
    return ok ? 0 : 1;
}
