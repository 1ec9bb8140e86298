/* cli_util.h - small helpers shared by the command-line programs (tools/
 * and demo/): option parsing and the port file scripts wait for. */
#ifndef MDG_CLI_UTIL_H
#define MDG_CLI_UTIL_H

/* A port number in [0, 65535] from an option, or -1 (atoi would take "abc"
 * for 0: a free port, silently). */
int cli_parse_port(const char *text);

/* Write the port to path via a temporary file and rename, so that a script
 * polling for the file never reads it half written. 0 or -1. */
int cli_write_port_file(const char *path, int port);

#endif
