/* fleet_route.c - calls between brokers of a fleet, as they come off a
 * pair channel: a call to one of our nodes (broker_route.c forwards it
 * with the calling broker's stamps), a reply or an error to one of our
 * calls, the end of a call whose caller left, a pause or a resume of one
 * whose caller does not read; and what becomes of calls
 * when a broker goes (a node gone: broker_drop_node_fwds). */
#include "fleet.h"

#include <string.h>

typedef struct route_scan {
    fleet_member *m;
    mdg_ptrs found;
} route_scan;

/* calls to m's nodes, or from m */
static void scan_fwd(void *value, void *arg)
{
    fwd *fw = value;
    route_scan *s = arg;
    bool match = fw->via == s->m || fw->from == s->m;
    if (match)
        mdg_ptrs_push(&s->found, fw);
}

/* ------------------------------------------ calls from other brokers, by id */

#define FROM_KEY (sizeof(fleet_member *) + sizeof(uint64_t))

static void from_key(uint8_t key[FROM_KEY], const fleet_member *m, uint64_t corr)
{
    memcpy(key, &m, sizeof m);
    memcpy(key + sizeof m, &corr, sizeof corr);
}

int fleet_route_track(fleet *f, fleet_member *m, fwd *fw)
{
    uint8_t key[FROM_KEY];
    from_key(key, m, fw->user_corr);
    /* a tombstone of m's earlier life under the same id is replaced: only
     * the live call is still to be ended or paused */
    if (mdg_map_put(f->calls_from, key, sizeof key, fw) != 0)
        return mdg_fail(MDG_ENOMEM, "out of memory");
    fw->from = m;
    return 0;
}

void fleet_route_untrack(fleet *f, fwd *fw)
{
    uint8_t key[FROM_KEY];
    from_key(key, fw->from, fw->user_corr);
    if (mdg_map_get(f->calls_from, key, sizeof key) == fw)
        mdg_map_take(f->calls_from, key, sizeof key);
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
        uint8_t key[FROM_KEY];
        from_key(key, m, in->h.corr);
        fwd *fw = mdg_map_get(f->calls_from, key, sizeof key);
        if (fw && end)
            broker_end_fwd(b, fw, "its caller has gone");
        else if (fw)
            broker_fleet_flow(b, fw, state);
        mdg_params_destroy(&p);
    } else if (strncmp(in->h.command, "mdg.", 4) == 0) {
        fleet_refuse(f, FLEET_REFUSED_CONTENT, "unknown fleet command '%s': refused", in->h.command);
    } else {
        broker_route_fleet_call(b, m, in);
    }
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
            broker_fail_fwd(b, fw, why);
        else /* its caller's broker has gone: our node stops */
            broker_end_fwd(b, fw, "its caller's broker has gone");
    }
    mdg_ptrs_free(&s.found);
}
