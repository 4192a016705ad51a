/*
 * policy.c - the outbound TLS decision (see policy.h).  Pure: no I/O, no
 * clock, no allocation.  The rules are written in the order of
 * docs/security.md "Which check applies where".
 */
#include "policy.h"

#include "dane.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define NAME_FN(fn, type, map, prefix)                                        \
	const char *fn(type v)                                                \
	{                                                                     \
		switch (v) {                                                  \
			map(prefix)                                           \
		}                                                             \
		return "?";                                                   \
	}

#define CASE_MX(e, name)                                                      \
	case MTA_POLICY_MX_##e:                                               \
		return name;
#define CASE_ADDR(e, name)                                                    \
	case MTA_POLICY_ADDR_##e:                                             \
		return name;
#define CASE_TLSA(e, name)                                                    \
	case MTA_POLICY_TLSA_##e:                                             \
		return name;
#define CASE_ACTION(e, name)                                                  \
	case MTA_POLICY_##e:                                                  \
		return name;
#define CASE_VERIFIER(e, name)                                                \
	case MTA_POLICY_V_##e:                                                \
		return name;
#define CASE_PTYPE(e, name)                                                   \
	case MTA_POLICY_PT_##e:                                               \
		return name;
#define CASE_RPT(e, name)                                                     \
	case MTA_RPT_##e:                                                     \
		return name;

NAME_FN(mta_policy_mx_name, enum mta_policy_mx, MTA_POLICY_MX_MAP, CASE_MX)
NAME_FN(mta_policy_addr_name, enum mta_policy_addr, MTA_POLICY_ADDR_MAP,
	CASE_ADDR)
NAME_FN(mta_policy_tlsa_name, enum mta_policy_tlsa, MTA_POLICY_TLSA_MAP,
	CASE_TLSA)
NAME_FN(mta_policy_action_name, enum mta_policy_action,
	MTA_POLICY_ACTION_MAP, CASE_ACTION)
NAME_FN(mta_policy_verifier_name, enum mta_policy_verifier,
	MTA_POLICY_VERIFIER_MAP, CASE_VERIFIER)
NAME_FN(mta_policy_ptype_name, enum mta_policy_ptype, MTA_POLICY_PTYPE_MAP,
	CASE_PTYPE)
NAME_FN(mta_rpt_name, enum mta_rpt, MTA_RPT_MAP, CASE_RPT)
#define CASE_CONT_MODE(e, name)                                               \
	case MTA_POLICY_CONT_MODE_##e:                                        \
		return name;
#define CASE_CONT(e, name)                                                    \
	case MTA_POLICY_CONT_##e:                                             \
		return name;
NAME_FN(mta_policy_cont_mode_name, enum mta_policy_cont_mode,
	MTA_POLICY_CONT_MODE_MAP, CASE_CONT_MODE)
NAME_FN(mta_policy_cont_name, enum mta_policy_cont, MTA_POLICY_CONT_MAP,
	CASE_CONT)

static const char *str(const char *s)
{
	return s != NULL ? s : "";
}

__attribute__((format(printf, 4, 5)))
static void refuse(struct mta_policy *out, enum mta_policy_action action,
		   const char *status, const char *fmt, ...)
{
	va_list ap;

	out->action = action;
	out->status = status;
	out->fallback = false;
	va_start(ap, fmt);
	vsnprintf(out->reason, sizeof(out->reason), fmt, ap);
	va_end(ap);
}

static void skip(struct mta_policy *out, const char *token,
		 const char *status)
{
	out->action = MTA_POLICY_SKIP_HOST;
	out->skip = token;
	out->status = status;
	out->fallback = false;
}

/* The STARTTLS mode that a level asks of the SMTP client. */
static enum mta_smtpc_tls starttls_for(enum mta_tls_level level)
{
	switch (level) {
	case MTA_TLS_NONE:
		return MTA_SMTPC_TLS_NONE;
	case MTA_TLS_MAY:
	case MTA_TLS_DANE: /* no usable TLSA: opportunistic */
		return MTA_SMTPC_TLS_MAY;
	case MTA_TLS_ENCRYPT:
	case MTA_TLS_DANE_ONLY:
	case MTA_TLS_VERIFY:
		return MTA_SMTPC_TLS_REQUIRE;
	}
	assert(!"TLS level outside MTA_TLS_LEVEL_MAP");
	return MTA_SMTPC_TLS_REQUIRE;
}

/* May DANE apply under the operator's level?  A table entry of none,
 * may, encrypt or verify turns it off (RFC 7672 §6: local policy); the
 * default level never does. */
static bool table_allows_dane(const struct mta_policy_in *in)
{
	if (!in->has_table)
		return true;
	switch (in->table_level) {
	case MTA_TLS_DANE:
	case MTA_TLS_DANE_ONLY:
		return true;
	case MTA_TLS_NONE:
	case MTA_TLS_MAY:
	case MTA_TLS_ENCRYPT:
	case MTA_TLS_VERIFY:
		return false;
	}
	return false;
}

static bool sts_in_force(const struct mta_policy_in *in)
{
	return in->sts == MTA_POLICY_STS_HAVE && in->sts_policy != NULL &&
	       in->sts_policy->mode != MTA_STS_MODE_NONE;
}

void mta_policy_check_dest(const struct mta_policy_in *in,
			   struct mta_policy *out)
{
	memset(out, 0, sizeof(*out));
	out->action = MTA_POLICY_CONNECT;
	out->level = in->has_table ? in->table_level : in->default_level;
	out->starttls = starttls_for(out->level);
	out->status = "";
	out->skip = "";
	switch (in->mx) {
	case MTA_POLICY_MX_BOGUS:
	case MTA_POLICY_MX_FAILED:
		/* never fall back to the domain's address (DESIGN.md step 2) */
		out->rpt = in->mx == MTA_POLICY_MX_BOGUS
				   ? MTA_RPT_DNSSEC_INVALID
				   : MTA_RPT_NONE;
		out->skip = in->mx == MTA_POLICY_MX_BOGUS ? "mx-bogus"
							  : "mx-failed";
		refuse(out, MTA_POLICY_DEFER, "4.4.3",
		       "MX lookup for %s failed: %s", str(in->domain),
		       in->why ? in->why : mta_policy_mx_name(in->mx));
		return;
	case MTA_POLICY_MX_INSECURE:
		if (!in->dnssec_ok) {
			out->skip = "dnssec-selftest";
			/* fail closed: without working validation an
			 * "insecure" answer may be a stripped secure one */
			refuse(out, MTA_POLICY_DEFER, "4.4.3",
			       "DNSSEC validation is not working (self-test "
			       "failed): %s not resolved securely",
			       str(in->domain));
			return;
		}
		break;
	case MTA_POLICY_MX_SECURE:
		break;
	}
	if (in->sts == MTA_POLICY_STS_LOST && !in->has_table &&
	    !in->tls_optional) {
		/* never deliver as if there were no policy */
		out->skip = "no-memory";
		refuse(out, MTA_POLICY_DEFER, "4.3.0",
		       "out of memory holding the MTA-STS policy of %s",
		       str(in->domain));
		return;
	}
}

bool mta_policy_want_tlsa(const struct mta_policy_in *in)
{
	if (!table_allows_dane(in) || in->mx != MTA_POLICY_MX_SECURE ||
	    in->tls_optional) /* RFC 8689 §4.2.2: DANE ignored */
		return false;
	switch (in->addr) {
	case MTA_POLICY_ADDR_SECURE:
	case MTA_POLICY_ADDR_CNAME_INSECURE:
		return true;
	case MTA_POLICY_ADDR_INSECURE:
	case MTA_POLICY_ADDR_LITERAL:
	case MTA_POLICY_ADDR_BOGUS:
		return false;
	}
	return false;
}

/* The TLSA stage (RFC 7672 §2.1.1, §2.2): 0 none applies, 1 usable
 * records, 2 only unusable ones; -1 the host is skipped (out filled). */
static int tlsa_stage(const struct mta_policy_in *in, struct mta_policy *out)
{
	if (!mta_policy_want_tlsa(in))
		return 0;
	switch (in->tlsa) {
	case MTA_POLICY_TLSA_NONE:
		return 0;
	case MTA_POLICY_TLSA_BOGUS:
	case MTA_POLICY_TLSA_FAILED:
		skip(out, in->tlsa == MTA_POLICY_TLSA_BOGUS ? "tlsa-bogus"
							    : "tlsa-failed",
		     "4.4.3");
		out->ptype = MTA_POLICY_PT_TLSA;
		out->rpt = in->tlsa == MTA_POLICY_TLSA_BOGUS
				   ? MTA_RPT_DNSSEC_INVALID
				   : MTA_RPT_NONE;
		snprintf(out->reason, sizeof(out->reason),
			 "TLSA lookup for _%u._tcp.%s failed (%s): host not "
			 "used",
			 in->port, str(in->tlsa_base),
			 in->why ? in->why : mta_policy_tlsa_name(in->tlsa));
		return -1;
	case MTA_POLICY_TLSA_SECURE:
		break;
	}
	if (in->nrrs > MTA_DANE_TLSA_MAX) {
		/* fail closed: a prefix in wire order (which DNSSEC does not
		 * protect) might hold only unusable records */
		skip(out, "tlsa-too-many", "4.7.5");
		out->ptype = MTA_POLICY_PT_TLSA;
		snprintf(out->reason, sizeof(out->reason),
			 "TLSA RRset at _%u._tcp.%s has %zu records, more "
			 "than %d: host not used",
			 in->port, str(in->tlsa_base), in->nrrs,
			 MTA_DANE_TLSA_MAX);
		return -1;
	}
	if (in->nrrs == 0 || in->rrs == NULL)
		return 0;
	return mta_dane_count_usable(in->rrs, in->nrrs) > 0 ? 1 : 2;
}

/* RFC 8689 §4.2.1: an authenticated channel or none.  False when the
 * host is skipped (out filled). */
static bool requiretls_stage(const struct mta_policy_in *in,
			     struct mta_policy *out)
{
	out->requiretls = true;
	if (out->verifier == MTA_POLICY_V_DANE)
		return true; /* step 4: DANE (RTLS-23) */
	if (out->sts_host && !out->sts_testing_mismatch) {
		/* step 2: the MX name validated by MTA-STS §4.1 matching,
		 * testing included (RTLS-22); the certificate by WebPKI */
		out->level = MTA_TLS_VERIFY;
		out->verifier = MTA_POLICY_V_STS;
		return true;
	}
	if (in->mx == MTA_POLICY_MX_SECURE &&
	    in->addr != MTA_POLICY_ADDR_LITERAL) {
		/* step 2 and 4: a DNSSEC-secure MX name (or the configured
		 * relayhost name), WebPKI-valid for it (RTLS-20, RTLS-34) */
		out->level = MTA_TLS_VERIFY;
		out->verifier = MTA_POLICY_V_WEBPKI;
		return true;
	}
	skip(out, "requiretls", "5.7.10");
	out->rpt = MTA_RPT_NONE;
	out->count = false;
	snprintf(out->reason, sizeof(out->reason),
		 "REQUIRETLS: MX %s of %s not DNSSEC/MTA-STS validated",
		 str(in->host), str(in->domain));
	return false;
}

/* Just over 100 lines: the sequence of the decision (destination, address,
 * DANE, MTA-STS, REQUIRETLS, STARTTLS) in RFC order; each stage is its
 * own function, this is the order they run in. */
void mta_policy_decide(const struct mta_policy_in *in, struct mta_policy *out)
{
	enum mta_tls_level want;
	bool sts_enforce;
	int dane;

	mta_policy_check_dest(in, out);
	if (out->action != MTA_POLICY_CONNECT)
		return;
	want = out->level; /* the operator's level: table, else default */
	if (in->addr == MTA_POLICY_ADDR_BOGUS) {
		skip(out, "address-bogus", "4.4.3");
		out->rpt = MTA_RPT_DNSSEC_INVALID;
		snprintf(out->reason, sizeof(out->reason),
			 "address lookup for %s failed: %s", str(in->host),
			 in->why ? in->why : "bogus");
		return;
	}

	/* 2. DANE */
	dane = tlsa_stage(in, out);
	if (dane < 0)
		return;
	if (dane == 2 && want == MTA_TLS_DANE_ONLY) {
		/* DANE mandatory, but no record can authenticate */
		skip(out, "tlsa-unusable", "4.7.5");
		out->ptype = MTA_POLICY_PT_TLSA;
		out->rpt = MTA_RPT_DANE_REQUIRED;
		snprintf(out->reason, sizeof(out->reason),
			 "DANE required for %s but its DNSSEC-signed TLSA "
			 "records are all unusable",
			 str(in->host));
		return;
	}
	if (dane == 1) {
		/* RFC 7672 §2.2: authentication mandatory */
		out->level = MTA_TLS_DANE_ONLY;
		out->verifier = MTA_POLICY_V_DANE;
	} else if (dane == 2) {
		/* only unusable records: TLS mandatory, never lowering an
		 * operator's verify */
		out->level = want == MTA_TLS_VERIFY ? MTA_TLS_VERIFY
						    : MTA_TLS_ENCRYPT;
		out->verifier = want == MTA_TLS_VERIFY
					? MTA_POLICY_V_WEBPKI
					: MTA_POLICY_V_TLSA_UNUSABLE;
	} else {
		out->level = want;
		if (want == MTA_TLS_DANE_ONLY) {
			skip(out, "dane-required", "4.7.5");
			out->rpt = MTA_RPT_DANE_REQUIRED;
			snprintf(out->reason, sizeof(out->reason),
				 "DANE required for %s but it has no usable "
				 "DNSSEC-signed TLSA records",
				 str(in->host));
			return;
		}
		out->verifier = want == MTA_TLS_VERIFY ? MTA_POLICY_V_WEBPKI
						       : MTA_POLICY_V_NONE;
	}
	out->dane = dane != 0;
	out->ptype = dane != 0 ? MTA_POLICY_PT_TLSA : MTA_POLICY_PT_NO_POLICY;

	/* 3./5. MTA-STS where DANE does not apply (DANE wins, also over the
	 * policy's mx patterns) and no table entry is set */
	out->sts_host = dane == 0 && !in->has_table && !in->tls_optional &&
			sts_in_force(in);
	sts_enforce = out->sts_host &&
		      in->sts_policy->mode == MTA_STS_MODE_ENFORCE;
	if (out->sts_host) {
		out->ptype = MTA_POLICY_PT_STS;
		if (!mta_sts_mx_match(in->sts_policy, str(in->host))) {
			out->rpt = MTA_RPT_VALIDATION_FAILURE;
			out->count = true;
			if (sts_enforce) {
				/* RFC 8461 §5.1: a per-host temporary
				 * failure; no connection is made */
				skip(out, "mta-sts-mx-mismatch", "4.7.5");
				snprintf(out->reason, sizeof(out->reason),
					 "mta-sts mx mismatch: %s is not "
					 "allowed by the MTA-STS policy of %s "
					 "(id %s)",
					 str(in->host), str(in->domain),
					 str(in->sts_id));
				return;
			}
			out->sts_testing_mismatch = true;
		}
		if (sts_enforce) {
			out->level = MTA_TLS_VERIFY;
			out->verifier = MTA_POLICY_V_STS;
		} else if (out->verifier == MTA_POLICY_V_NONE) {
			/* 5. testing: checked and reported, never enforced,
			 * never lowering the operator's level */
			out->verifier = MTA_POLICY_V_STS_TESTING;
		}
	}

	if (in->requiretls && !requiretls_stage(in, out))
		return;
	out->starttls = starttls_for(out->level);
	if (in->relay_auth)
		out->starttls = MTA_SMTPC_TLS_REQUIRE;
	/* DANE-62: cleartext retry only at effective level may */
	out->fallback = out->level == MTA_TLS_MAY && dane == 0 &&
			out->starttls == MTA_SMTPC_TLS_MAY && !sts_enforce;
	out->action = MTA_POLICY_CONNECT;
}

/* Over 100 lines: one case per verifier, then the CT, key continuity and
 * MTA-STS testing rules in the order they apply to the one verdict;
 * split, the half-built verdict would be passed around. */
void mta_policy_verdict(const struct mta_policy_in *in,
			const struct mta_policy *p,
			const struct mta_policy_check *chk,
			struct mta_policy_verdict *v)
{
	bool required;

	memset(v, 0, sizeof(*v));
	v->accept = true;
	v->status = "";
	v->count_ptype = p->ptype;
	switch (p->verifier) {
	case MTA_POLICY_V_NONE:
		/* RPT-21: a TLS session to a domain without a published
		 * policy is a success under "no-policy-found" */
		if (p->ptype == MTA_POLICY_PT_NO_POLICY)
			v->count_rpt = mta_rpt_name(MTA_RPT_SUCCESS);
		snprintf(v->auth, sizeof(v->auth), "none");
		return;
	case MTA_POLICY_V_TLSA_UNUSABLE:
		snprintf(v->auth, sizeof(v->auth), "encrypt (TLSA unusable)");
		return;
	case MTA_POLICY_V_DANE:
		v->count_ptype = MTA_POLICY_PT_TLSA;
		if (chk->dane_match) {
			snprintf(v->auth, sizeof(v->auth), "dane %u %u %u",
				 chk->usage, chk->selector, chk->mtype);
			v->count_rpt = mta_rpt_name(MTA_RPT_SUCCESS);
			return;
		}
		v->accept = false;
		v->count_rpt = chk->dane_rpt != NULL
				       ? chk->dane_rpt
				       : mta_rpt_name(MTA_RPT_TLSA_INVALID);
		snprintf(v->auth, sizeof(v->auth), "dane-failed");
		v->status = p->requiretls ? "5.7.10" : "4.7.5";
		snprintf(v->reason, sizeof(v->reason), "%s",
			 chk->dane_reason != NULL && chk->dane_reason[0]
				 ? chk->dane_reason
				 : "DANE authentication failed");
		return;
	case MTA_POLICY_V_WEBPKI:
	case MTA_POLICY_V_STS:
	case MTA_POLICY_V_STS_TESTING:
		break;
	}
	required = p->verifier != MTA_POLICY_V_STS_TESTING;
	if (chk->webpki_ok && required && in->require_sct > 0) {
		/* CT: only a required WebPKI check, never DANE or testing */
		v->ct = chk->ct;
		if (chk->ct != MTA_CT_OK) {
			const char *ct = mta_ct_verdict_name(
				chk->ct == MTA_CT_NOT_CHECKED ? MTA_CT_MISSING
							     : chk->ct);
			v->ct_refused = true;
			v->accept = false;
			v->status = "4.7.5";
			if (p->sts_host)
				v->count_rpt =
					mta_rpt_name(MTA_RPT_VALIDATION_FAILURE);
			if (p->verifier == MTA_POLICY_V_STS)
				snprintf(v->auth, sizeof(v->auth),
					 "mta-sts-failed id=%s ct=%s",
					 str(in->sts_id), ct);
			else
				snprintf(v->auth, sizeof(v->auth),
					 "verify-failed ct=%s", ct);
			snprintf(v->reason, sizeof(v->reason),
				 "certificate of %s lacks Certificate "
				 "Transparency: ct=%s (%s)",
				 str(in->host), ct, str(chk->ct_why));
			return;
		}
	}
	if (chk->webpki_ok && p->sts_host &&
	    in->continuity != MTA_POLICY_CONT_MODE_OFF) {
		switch (chk->cont) {
		case MTA_POLICY_CONT_NEW_ISSUER:
			v->cont_log = true;
			if (in->continuity == MTA_POLICY_CONT_MODE_HOLD &&
			    required) {
				v->cont_held = true;
				v->accept = false;
				v->status = "4.7.5";
				snprintf(v->auth, sizeof(v->auth),
					 "mta-sts-held id=%s "
					 "continuity=new_issuer",
					 str(in->sts_id));
				snprintf(v->reason, sizeof(v->reason),
					 "certificate of %s from an issuer "
					 "never seen for %s: continuity="
					 "new_issuer, held until accepted "
					 "(mtactl policy accept %s)",
					 str(in->host), str(in->domain),
					 str(in->domain));
				return;
			}
			break;
		case MTA_POLICY_CONT_NEW_KEY:
			v->cont_log = true;
			break;
		case MTA_POLICY_CONT_NONE:
		case MTA_POLICY_CONT_FIRST:
		case MTA_POLICY_CONT_KNOWN:
		case MTA_POLICY_CONT_ACCEPTED:
			break;
		}
		v->cont_learn = chk->cont != MTA_POLICY_CONT_NONE;
	}
	if (chk->webpki_ok) {
		if (p->sts_host || p->ptype == MTA_POLICY_PT_NO_POLICY)
			v->count_rpt = mta_rpt_name(MTA_RPT_SUCCESS);
		if (p->verifier == MTA_POLICY_V_STS ||
		    p->verifier == MTA_POLICY_V_STS_TESTING)
			snprintf(v->auth, sizeof(v->auth), "mta-sts%s id=%s",
				 p->verifier == MTA_POLICY_V_STS ? ""
								 : "-testing",
				 str(in->sts_id));
		else
			snprintf(v->auth, sizeof(v->auth), "verify");
		return;
	}
	if (p->sts_host) {
		v->count_rpt = chk->webpki_rpt != NULL
				       ? chk->webpki_rpt
				       : mta_rpt_name(
						 MTA_RPT_CERTIFICATE_NOT_TRUSTED);
		v->testing_failure = p->verifier != MTA_POLICY_V_STS;
	}
	if (!required) {
		snprintf(v->auth, sizeof(v->auth), "none");
		return;
	}
	v->accept = false;
	v->status = p->requiretls ? "5.7.10" : "4.7.5";
	if (p->verifier == MTA_POLICY_V_STS) {
		snprintf(v->auth, sizeof(v->auth), "mta-sts-failed id=%s",
			 str(in->sts_id));
		snprintf(v->reason, sizeof(v->reason),
			 "MTA-STS (id %s): certificate of %s not valid: %s",
			 str(in->sts_id), str(in->host),
			 str(chk->webpki_why));
	} else {
		snprintf(v->auth, sizeof(v->auth), "verify-failed");
		snprintf(v->reason, sizeof(v->reason),
			 "certificate of %s not valid: %s", str(in->host),
			 str(chk->webpki_why));
	}
}
