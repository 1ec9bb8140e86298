/* fleet_route.c - calls between brokers of a fleet, as they come off a
 * pair channel: a call to one of our nodes (broker_route.c forwards it
 * with the calling broker's stamps), a reply or an error to one of our
 * calls, the end of a call whose caller left, a pause or a resume of one
 * whose caller does not read; and what becomes of calls
 * when a broker or one of its nodes goes. */
#include "fleet.h"

#include <string.h>

typedef struct route_scan {
    fleet_member *m;
    const uint8_t *node_pk; /* NULL: any */
    uint64_t corr;          /* from m with this user_corr, when set */
    mdg_ptrs found;
} route_scan;

static void scan_fwd(void *value, void *arg)
{
    fwd *fw = value;
    route_scan *s = arg;
    bool match = s->corr ? fw->from == s->m && fw->user_corr == s->corr
                         : (fw->via == s->m && (!s->node_pk || memcmp(fw->node_pk, s->node_pk, MDG_KEY_BYTES) == 0)) ||
                               (!s->node_pk && fw->from == s->m);
    if (match)
        mdg_ptrs_push(&s->found, fw);
}

void fleet_route_receive(fleet *f, fleet_member *m, mdg_inbound *in)
{
    mdg_broker *b = f->b;
    if (in->h.kind == MDG_K_REPLY || in->h.kind == MDG_K_ERROR) {
        broker_route_fleet_reply(b, m, in);
    } else if (strcmp(in->h.command, FLEET_END) == 0 || strcmp(in->h.command, FLEET_FLOW) == 0) {
        bool end = strcmp(in->h.command, FLEET_END) == 0;
        mdg_params *p = NULL;
        const char *state = NULL;
        if (!end && (mdg_inbound_take_params(in, &p) != 0 || mdg_params_get_str(p, "state", &state) != 0 ||
                     (strcmp(state, "pause") != 0 && strcmp(state, "resume") != 0))) {
            fleet_refuse(f, FLEET_REFUSED_CONTENT, "a flow message without a state: refused");
            mdg_params_destroy(&p);
            return;
        }
        route_scan s = {.m = m, .corr = in->h.corr};
        if (in->h.corr)
            mdg_map_each(b->fwds, scan_fwd, &s);
        for (size_t i = 0; i < s.found.n; i++)
            if (end)
                broker_end_fwd(b, s.found.v[i], "its caller has gone");
            else
                broker_fleet_flow(b, s.found.v[i], state);
        mdg_ptrs_free(&s.found);
        mdg_params_destroy(&p);
    } else if (strncmp(in->h.command, "mdg.", 4) == 0) {
        fleet_refuse(f, FLEET_REFUSED_CONTENT, "unknown fleet command '%s': refused", in->h.command);
    } else {
        broker_route_fleet_call(b, m, in);
    }
}

/* Call fw, to a node at another broker, cannot be answered: its caller
 * is told why, and it is forgotten. */
static void fail_call(mdg_broker *b, fwd *fw, const char *why)
{
    peer *caller = fw->ended ? NULL : mdg_map_get(b->sessions, fw->session_id, SESSION_ID_BYTES);
    if (caller)
        broker_send_error(b, caller->rid, caller->rid_len, caller, fw->user_corr, fw->command, why);
    broker_fwd_free(b, fw);
}

void fleet_route_forget(fleet *f, fleet_member *m)
{
    mdg_broker *b = f->b;
    char who[MDG_KEY_B64_LEN + 1], why[160];
    snprintf(why, sizeof why, "broker %s of the fleet went away before answering", pk_short(m->pk, who));
    route_scan s = {.m = m};
    mdg_map_each(b->fwds, scan_fwd, &s);
    for (size_t i = 0; i < s.found.n; i++) {
        fwd *fw = s.found.v[i];
        if (fw->via == m)
            fail_call(b, fw, why);
        else /* its caller's broker has gone: our node stops */
            broker_end_fwd(b, fw, "its caller's broker has gone");
    }
    mdg_ptrs_free(&s.found);
}

void fleet_route_node_gone(fleet *f, fleet_member *m, const uint8_t pk[MDG_KEY_BYTES])
{
    mdg_broker *b = f->b;
    char who[MDG_KEY_B64_LEN + 1], why[160];
    mdg_pk_to_b64(pk, who);
    snprintf(why, sizeof why, "node %s went away before answering", who);
    route_scan s = {.m = m, .node_pk = pk};
    mdg_map_each(b->fwds, scan_fwd, &s);
    for (size_t i = 0; i < s.found.n; i++)
        fail_call(b, s.found.v[i], why);
    mdg_ptrs_free(&s.found);
}
