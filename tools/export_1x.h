/* export_1x.h - `messidge-admin export-1x FILE`: the identity store's
 * admitted users and nodes in a new SQLite file with the original Python
 * Messidge 1.x schema, for its admin scripts and broker. Opening a 1.x
 * store migrates it one way (the 1.x tables are replaced), so this is the
 * way back. */
#ifndef MDG_EXPORT_1X_H
#define MDG_EXPORT_1X_H

#include "messidge_identity.h"

/* Write path (which must not exist). Revoked keys are left out, and so are
 * pending invitations: only their tokens' hashes are stored. 0, or 1 after
 * saying why on stderr. */
int export_1x(mdg_identity *id, const char *path);

#endif
