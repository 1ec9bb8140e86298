/* version.c - the library's version at run time (mdg_version). */
#include "messidge.h"

/* MDG_VERSION_TEXT is project(VERSION) of CMakeLists.txt, which also checks
 * that the header's MDG_VERSION_* agree with it. */
#ifndef MDG_VERSION_TEXT
#error "MDG_VERSION_TEXT is defined by the build (CMakeLists.txt)"
#endif

const char *mdg_version(void)
{
    return MDG_VERSION_TEXT;
}
