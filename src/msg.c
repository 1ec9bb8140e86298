/* msg.c - received messages, replies, and command-table validation. */
#include "msg.h"

#include "internal.h"
#include "params.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

int mdg_msg_from_inbound(mdg_msg **out, mdg_inbound *in)
{
    _Static_assert(offsetof(mdg_msg, h) == 0, "the header comes first");
    mdg_msg *m = malloc(sizeof *m); /* all but the header zeroed: it is copied below */
    if (!m)
        return MDG_ENOMEM;
    memset((char *)m + sizeof m->h, 0, sizeof *m - sizeof m->h);
    int rc = mdg_inbound_take_params(in, &m->params);
    if (rc) {
        free(m);
        return rc;
    }
    mdg_header_copy(&m->h, &in->h);
    m->has_bulk = mdg_inbound_take_bulk(in, &m->bulk);
    if (m->h.kind == MDG_K_ERROR) {
        if (mdg_params_get_str(m->params, "error", &m->error) != 0)
            m->error = "(no error text)";
    }
    *out = m;
    return 0;
}

void mdg_msg_give_back(mdg_msg *m, mdg_inbound *in)
{
    mdg_params_destroy(&in->params);
    in->params = m->params;
    m->params = NULL;
    if (m->has_bulk) {
        if (in->has_bulk)
            zmq_msg_close(&in->bulk);
        zmq_msg_init(&in->bulk);
        zmq_msg_move(&in->bulk, &m->bulk);
        zmq_msg_close(&m->bulk);
        in->has_bulk = true;
        m->has_bulk = false;
    }
}

void mdg_msg_destroy(mdg_msg **pm)
{
    if (!pm || !*pm)
        return;
    mdg_msg *m = *pm;
    mdg_params_destroy(&m->params);
    if (m->has_bulk)
        zmq_msg_close(&m->bulk);
    free(m);
    *pm = NULL;
}

const char *mdg_msg_command(const mdg_msg *m)
{
    return m ? m->h.command : "";
}

const mdg_params *mdg_msg_params(const mdg_msg *m)
{
    return m ? m->params : NULL;
}

const void *mdg_msg_bulk(const mdg_msg *m, size_t *len)
{
    if (!m || !m->has_bulk) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = zmq_msg_size((zmq_msg_t *)&m->bulk);
    return zmq_msg_data((zmq_msg_t *)&m->bulk);
}

bool mdg_msg_replyable(const mdg_msg *m)
{
    return m && m->h.corr != 0 && m->h.kind == MDG_K_CMD;
}

bool mdg_msg_is_error(const mdg_msg *m)
{
    return m && m->h.kind == MDG_K_ERROR;
}

const char *mdg_msg_error(const mdg_msg *m)
{
    return mdg_msg_is_error(m) ? m->error : NULL;
}

bool mdg_msg_more(const mdg_msg *m)
{
    return m && (m->h.flags & MDG_F_MORE);
}

mdg_msg *mdg_msg_keep(mdg_msg *m)
{
    if (m)
        m->kept = true;
    return m;
}

void *mdg_msg_session_data(const mdg_msg *m)
{
    return m ? m->session_data : NULL;
}

static int reply(mdg_msg *m, uint32_t flags, mdg_params *results, const void *bulk, size_t len)
{
    int rc;
    if (!m || !m->send_reply || (!bulk && len)) {
        rc = mdg_fail(MDG_EINVAL, "invalid reply");
    } else if (!mdg_msg_replyable(m)) {
        rc = mdg_fail(MDG_EINVAL, "message '%s' is not replyable (sent without a reply callback)",
                      m->h.command);
    } else if (m->closed) {
        rc = mdg_fail(MDG_ECLOSED, "message '%s' has had its final reply", m->h.command);
    } else {
        m->closed = !(flags & MDG_F_MORE);
        return m->send_reply(m, MDG_K_REPLY, flags, results, bulk, len);
    }
    mdg_params_destroy(&results);
    return rc;
}

int mdg_msg_reply(mdg_msg *m, mdg_params *results, const void *bulk, size_t bulk_len)
{
    return reply(m, 0, results, bulk, bulk_len);
}

int mdg_msg_reply_more(mdg_msg *m, mdg_params *results, const void *bulk, size_t bulk_len)
{
    return reply(m, MDG_F_MORE, results, bulk, bulk_len);
}

int mdg_msg_fail(mdg_msg *m, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    if (!m || !fmt || !m->send_reply)
        return mdg_fail(MDG_EINVAL, "invalid message");
    if (m->closed)
        return mdg_fail(MDG_ECLOSED, "message '%s' has had its final reply", m->h.command);
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    mdg_params *p = mdg_params_new();
    if (!p || mdg_params_set_str(p, "error", text) || mdg_params_set_str(p, "command", m->h.command)) {
        mdg_params_destroy(&p);
        return MDG_ENOMEM;
    }
    m->closed = true;
    /* A message nobody waits for still gets its error to the sender, as an
     * uncorrelated notice (corr 0), so nothing fails silently. */
    return m->send_reply(m, MDG_K_ERROR, 0, p, NULL, 0);
}

const mdg_cmd *mdg_cmd_check(const mdg_cmd *table, const mdg_msg *m, bool from_node, char *why,
                             size_t why_len)
{
    const mdg_cmd *c = NULL;
    for (const mdg_cmd *t = table; t && t->name; t++)
        if (strcmp(t->name, m->h.command) == 0) {
            c = t;
            break;
        }
    if (!c) {
        snprintf(why, why_len, "unknown command '%s'", m->h.command);
        return NULL;
    }
    if ((c->flags & MDG_CMD_NODE_ONLY) && !from_node) {
        snprintf(why, why_len, "command '%s' may only be sent by a node", c->name);
        return NULL;
    }
    if ((c->flags & MDG_CMD_USER_ONLY) && from_node) {
        snprintf(why, why_len, "command '%s' may only be sent by a user", c->name);
        return NULL;
    }
    if ((c->flags & MDG_CMD_NEEDS_REPLY) && !mdg_msg_replyable(m)) {
        snprintf(why, why_len, "command '%s' needs a reply but was sent without one", c->name);
        return NULL;
    }
    for (const char *const *r = c->required; r && *r; r++)
        if (!mdg_params_has(m->params, *r)) {
            snprintf(why, why_len, "command '%s' is missing required param '%s'", c->name, *r);
            return NULL;
        }
    return c;
}
