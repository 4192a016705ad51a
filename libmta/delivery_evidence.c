/*
 * delivery_evidence.c - what an outbound TLS session leaves behind: the
 * RFC 8460 TLS report counters and policy notes, the key continuity
 * check and record of MTA-STS hosts, and the CT and continuity log lines
 * and metrics.  Part of the delivery module (delivery.h); called from
 * delivery_conn.c through delivery_int.h.
 */
#include "delivery_int.h"

/* ---- TLS report counters (RFC 8460 result types) ------------------- */

struct count_req {
	struct mta_commit commit;
	struct mta_delivery *d;
	char key[400];
	char note_key[64];
	char note[4096];
};

static void on_count_done(struct mta_commit *cm)
{
	struct count_req *r = container_of(cm, struct count_req, commit);
	struct mta_delivery *d = r->d;

	free(r);
	d->commits_pending--;
	dlv_maybe_stopped(d);
}

/* The RFC 8460 §4.5 policy-string of the host's policy, one line per
 * element ('\n'-separated): the MTA-STS policy for "sts", the TLSA
 * RRset for "tlsa", nothing for "no-policy-found". */
static void tlsrpt_policy_text(const struct conn *c, const char *ptype,
			       char *out, size_t len)
{
	size_t n = 0;

#define PUT(...)                                                              \
	do {                                                                  \
		if (n < len)                                                  \
			n += (size_t)snprintf(out + n, len - n, __VA_ARGS__); \
	} while (0)
	out[0] = '\0';
	if (strcmp(ptype, "sts") == 0 && c->sts != NULL) {
		const struct mta_sts_policy *p = c->sts;
		PUT("version: STSv1\nmode: %s\n",
		    p->mode == MTA_STS_MODE_ENFORCE	? "enforce"
		    : p->mode == MTA_STS_MODE_TESTING ? "testing"
							: "none");
		for (size_t i = 0; i < p->nmx; i++)
			PUT("mx: %s\n", p->mx[i]);
		PUT("max_age: %llu\n", (unsigned long long)p->max_age_raw);
	} else if (strcmp(ptype, "tlsa") == 0) {
		for (size_t i = 0; i < c->ntlsa && i < MTA_DANE_TLSA_MAX;
		     i++) {
			const struct mta_dns_tlsa *t = &c->tlsa[i];
			PUT("%u %u %u ", t->usage, t->selector, t->mtype);
			for (size_t j = 0; j < t->len; j++)
				PUT("%02X", t->data[j]);
			PUT("\n");
		}
	}
#undef PUT
	if (n >= len) /* truncated: keep whole lines only */
		n = len - 1;
	out[n] = '\0';
}

/* FNV-1a 64: names a policy text in the counter keys. */
static uint64_t tlsrpt_hash(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (; *s != '\0'; s++)
		h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
	return h;
}

/* Counts one session result for the destination's TLS report (RFC
 * 8460): ptype is "tlsa", "sts" or "no-policy-found", result an RFC
 * 8460 result type or "successful-session".  Key (tlsrpt.h):
 * "<day> <domain> <ptype> <result> <policy id> <mx host> <receiving
 * ip> <sending ip>"; the policy text goes beside it under
 * "P <day> <domain> <policy id>".  Mail that opted out of TLS policy
 * (TLS-Required: No, which TLS reports are sent with, RFC 8460 §3) is
 * not counted: reports never breed reports. */
void dlv_tlsrpt_count(struct conn *c, const char *ptype, const char *result)
{
	struct mta_delivery *d = c->d;
	struct count_req *r;
	char day[16], rip[INET6_ADDRSTRLEN] = "-", sip[INET6_ADDRSTRLEN] = "-";
	const char *mx = "-";
	time_t now = time(NULL);
	struct tm tm;
	uint64_t pid;

	if (d->stopping || result == NULL ||
	    c->dest->tlsreq == MTA_TLSREQ_OPTIONAL)
		return;
	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return;
	gmtime_r(&now, &tm);
	strftime(day, sizeof(day), "%Y-%m-%d", &tm);
	if (c->hi < c->nhosts && c->hosts[c->hi].name[0] != '\0')
		mx = c->hosts[c->hi].name;
	if (c->tcp_open && c->ai < c->naddrs) {
		const struct sockaddr_storage *sa = &c->addrs[c->ai];
		struct sockaddr_storage la;
		int ll = sizeof(la);

		if (sa->ss_family == AF_INET)
			inet_ntop(AF_INET,
				  &((const struct sockaddr_in *)sa)->sin_addr,
				  rip, sizeof(rip));
		else if (sa->ss_family == AF_INET6)
			inet_ntop(AF_INET6,
				  &((const struct sockaddr_in6 *)sa)->sin6_addr,
				  rip, sizeof(rip));
		if (uv_tcp_getsockname(&c->st.tcp, (struct sockaddr *)&la,
				       &ll) == 0) {
			if (la.ss_family == AF_INET)
				inet_ntop(AF_INET,
					  &((struct sockaddr_in *)&la)->sin_addr,
					  sip, sizeof(sip));
			else if (la.ss_family == AF_INET6)
				inet_ntop(AF_INET6,
					  &((struct sockaddr_in6 *)&la)
						   ->sin6_addr,
					  sip, sizeof(sip));
		}
	}
	tlsrpt_policy_text(c, ptype, r->note, sizeof(r->note));
	pid = tlsrpt_hash(r->note) ^ tlsrpt_hash(ptype);
	snprintf(r->key, sizeof(r->key), "%s %s %s %s %016llx %s %s %s", day,
		 c->dest->name, ptype, result, (unsigned long long)pid, mx,
		 rip, sip);
	snprintf(r->note_key, sizeof(r->note_key), "P %s %016llx", day,
		 (unsigned long long)pid);
	r->d = d;
	d->commits_pending++;
	mta_writer_submit_counter_note(d->writer, &r->commit, r->key, 1,
				       r->note_key, r->note, on_count_done);
}

/* Key continuity of an MTA-STS host: what the spool's record of the
 * destination says about this leaf and issuer (spool_keys.h).  A
 * record that cannot be read leaves the host unclassified (NONE: not
 * learned, never held). */
enum mta_policy_cont
dlv_continuity_check(struct conn *c, const char *leaf, const char *issuer)
{
	struct mta_spool_keys_rec *r;
	const struct mta_spool_keys_entry *known;
	const char *mx[MAX_HOSTS];
	uint8_t lh[MTA_SPOOL_KEYS_HASH], ih[MTA_SPOOL_KEYS_HASH];
	enum mta_policy_cont v;
	int rc;

	if (mta_spool_keys_from_hex(leaf, lh) != 0 ||
	    mta_spool_keys_from_hex(issuer, ih) != 0)
		return MTA_POLICY_CONT_NONE;
	r = malloc(sizeof(*r));
	if (r == NULL)
		return MTA_POLICY_CONT_NONE;
	rc = mta_spool_keys_get(c->d->spool, c->dest->name, r);
	if (rc == MTA_ENOTFOUND) {
		free(r);
		return MTA_POLICY_CONT_FIRST;
	}
	if (rc != 0) {
		free(r);
		return MTA_POLICY_CONT_NONE;
	}
	for (size_t i = 0; i < c->nhosts && i < MAX_HOSTS; i++)
		mx[i] = c->hosts[i].name;
	struct mta_spool_keys_query q = {
		.host = c->hosts[c->hi].name,
		.leaf = lh,
		.issuer = ih,
		.now = (int64_t)time(NULL),
		.window = c->d->cfg->mta_sts_continuity_window,
		.hold = c->d->cfg->mta_sts_continuity_hold,
		.mx = mx,
		.nmx = c->nhosts < MAX_HOSTS ? c->nhosts : MAX_HOSTS,
	};
	v = mta_spool_keys_classify(r, &q, &known);
	free(r);
	return v;
}

/* A key continuity change on its way to the writer. */
struct keys_req {
	struct mta_commit commit;
	struct mta_delivery *d;
	struct mta_spool_keys_op op;
	char domain[MTA_DNS_NAME_MAX], host[MTA_DNS_NAME_MAX];
};

static void on_keys_done(struct mta_commit *cm)
{
	struct keys_req *r = container_of(cm, struct keys_req, commit);
	struct mta_delivery *d = r->d;

	if (cm->result != 0) {
		struct mta_logline ll;
		mta_log_begin(&ll, MTA_LOG_WARN, "tls_continuity_store");
		mta_log_str(&ll, "domain", r->domain);
		mta_log_str(&ll, "error", mta_strerror(cm->result));
		mta_log_end(&ll);
	}
	free(r);
	d->commits_pending--;
	dlv_maybe_stopped(d);
}

static void keys_submit(struct conn *c, enum mta_spool_keys_opkind kind,
			const char *leaf, const char *issuer)
{
	struct mta_delivery *d = c->d;
	struct keys_req *r;

	if (d->stopping)
		return;
	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return;
	if (mta_spool_keys_from_hex(leaf, r->op.leaf) != 0 ||
	    mta_spool_keys_from_hex(issuer, r->op.issuer) != 0) {
		free(r);
		return;
	}
	snprintf(r->domain, sizeof(r->domain), "%s", c->dest->name);
	snprintf(r->host, sizeof(r->host), "%s", c->hosts[c->hi].name);
	r->op.kind = kind;
	r->op.domain = r->domain;
	r->op.host = r->host;
	r->op.now = (int64_t)time(NULL);
	r->op.window = d->cfg->mta_sts_continuity_window;
	r->d = d;
	d->commits_pending++;
	mta_writer_submit_keys(d->writer, &r->commit, &r->op, on_keys_done);
}

/* event=tls_continuity: the new key and issuer, and the known ones the
 * record names (the same host's latest, else the domain's). */
static void continuity_log(struct conn *c, enum mta_policy_cont cont,
			   bool held, const char *leaf, const char *issuer)
{
	struct mta_spool_keys_rec *r = malloc(sizeof(*r));
	const struct mta_spool_keys_entry *known = NULL;
	char kk[2 * MTA_SPOOL_KEYS_HASH + 1] = "",
	     ki[2 * MTA_SPOOL_KEYS_HASH + 1] = "";
	struct mta_logline ll;
	uint8_t lh[MTA_SPOOL_KEYS_HASH], ih[MTA_SPOOL_KEYS_HASH];

	if (r != NULL &&
	    mta_spool_keys_from_hex(leaf, lh) == 0 &&
	    mta_spool_keys_from_hex(issuer, ih) == 0 &&
	    mta_spool_keys_get(c->d->spool, c->dest->name, r) == 0) {
		struct mta_spool_keys_query q = {
			.host = c->hosts[c->hi].name, .leaf = lh, .issuer = ih,
			.now = (int64_t)time(NULL),
			.window = c->d->cfg->mta_sts_continuity_window,
			.hold = c->d->cfg->mta_sts_continuity_hold,
		};
		(void)mta_spool_keys_classify(r, &q, &known);
		if (known != NULL) {
			mta_spool_keys_to_hex(known->leaf, kk);
			mta_spool_keys_to_hex(known->issuer, ki);
		}
	}
	mta_log_begin(&ll, MTA_LOG_WARN, "tls_continuity");
	mta_log_str(&ll, "status", mta_policy_cont_name(cont));
	mta_log_str(&ll, "domain", c->dest->name);
	mta_log_str(&ll, "host", c->hosts[c->hi].name);
	mta_log_str(&ll, "key", leaf);
	mta_log_str(&ll, "issuer", issuer);
	mta_log_str(&ll, "known_key", kk);
	mta_log_str(&ll, "known_issuer", ki);
	mta_log_str(&ll, "action", held ? "held" : "delivered");
	mta_log_end(&ll);
	free(r);
}

/* After the verdict: CT and continuity evidence (log, metrics) and
 * learning the key of an accepted MTA-STS host. */
void dlv_ct_continuity_after(struct conn *c,
			     const struct mta_policy_check *chk,
			     const struct mta_policy_verdict *v,
			     const char *leaf, const char *issuer)
{
	struct mta_logline ll;

	if (v->ct != MTA_CT_NOT_CHECKED) {
		mta_metrics_ct(c->d->metrics, mta_ct_verdict_name(v->ct));
		mta_log_begin(&ll, v->ct_refused ? MTA_LOG_WARN : MTA_LOG_DEBUG,
			      "ct");
		mta_log_str(&ll, "domain", c->dest->name);
		mta_log_str(&ll, "host", c->hosts[c->hi].name);
		mta_log_str(&ll, "ct", mta_ct_verdict_name(v->ct));
		mta_log_str(&ll, "detail", chk->ct_why ? chk->ct_why : "");
		mta_log_end(&ll);
	}
	if (leaf[0] == '\0' || issuer[0] == '\0' ||
	    chk->cont == MTA_POLICY_CONT_NONE)
		return;
	if (v->cont_log)
		continuity_log(c, chk->cont, v->cont_held, leaf, issuer);
	if (v->cont_held || v->cont_log || v->cont_learn)
		mta_metrics_continuity(c->d->metrics,
				       v->cont_held ? "held"
						    : mta_policy_cont_name(
							      chk->cont));
	if (v->cont_held)
		keys_submit(c, MTA_SPOOL_KEYS_SEEN_PENDING, leaf, issuer);
	else if (v->cont_learn && v->accept)
		keys_submit(c, MTA_SPOOL_KEYS_LEARN, leaf, issuer);
}
