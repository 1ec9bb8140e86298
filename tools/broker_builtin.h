/* broker_builtin.h - what messidge-broker adds to a bare broker: its own
 * commands (ping, nodes), the nodes it tracks for `nodes`, and the
 * identity store admitted late: the store is opened only once the port is
 * bound (nothing is written before), so the auth function and the
 * revocation poll take it from here when it comes. A PostgreSQL store,
 * opened before the broker starts, is attached to it instead. */
#ifndef MDG_BROKER_BUILTIN_H
#define MDG_BROKER_BUILTIN_H

#include "messidge.h"
#include "messidge_identity.h"

typedef struct broker_builtin broker_builtin;

/* Set b's commands, hooks, auth function and revocation timer (before
 * mdg_broker_start). Until broker_builtin_set_store, every key is refused.
 * 0 or an MDG_E code. */
int broker_builtin_new(broker_builtin **out, mdg_broker *b);
/* Admit the keys of id from now on (any thread; id borrowed, it must
 * outlive the broker); with poll, read its revocations once a second and
 * close their sessions (without: mdg_identity_attach does, as for a
 * PostgreSQL store, which tells the broker itself). 0 or an MDG_E code. */
int broker_builtin_set_store(broker_builtin *bb, mdg_identity *id, bool poll);
/* After mdg_broker_destroy. */
void broker_builtin_destroy(broker_builtin **bb);

#endif
