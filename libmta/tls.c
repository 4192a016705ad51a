#include "tls.h"

#include "err.h"
#include "keyholder.h"

#include <errno.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

int mta_tls_creds_load(const char *cert, const char *key,
		       struct mta_tls_creds **out, char *err, size_t errlen)
{
	struct mta_tls_creds *c = calloc(1, sizeof(*c));
	int rc;

	if (c == NULL)
		return -ENOMEM;
	rc = gnutls_certificate_allocate_credentials(&c->cred);
	if (rc < 0)
		goto fail_alloc;
	rc = gnutls_certificate_set_x509_key_file(c->cred, cert, key,
						  GNUTLS_X509_FMT_PEM);
	if (rc < 0)
		goto fail_load;
	*out = c;
	return 0;

fail_load:
	gnutls_certificate_free_credentials(c->cred);
fail_alloc:
	snprintf(err, errlen, "%s / %s: %s", cert, key, gnutls_strerror(rc));
	free(c);
	return MTA_ETLS;
}

int mta_tls_creds_load_held(const char *cert, struct mta_keyholder *kh,
			    struct mta_tls_creds **out, char *err,
			    size_t errlen)
{
	struct mta_tls_creds *c = calloc(1, sizeof(*c));
	gnutls_pcert_st *pcerts = NULL;
	gnutls_privkey_t key = NULL;
	unsigned n = 16;
	int rc;

	if (c == NULL)
		return -ENOMEM;
	pcerts = calloc(n, sizeof(*pcerts));
	if (pcerts == NULL) {
		free(c);
		return -ENOMEM;
	}
	rc = gnutls_certificate_allocate_credentials(&c->cred);
	if (rc < 0)
		goto fail_alloc;
	rc = gnutls_pcert_list_import_x509_file(pcerts, &n, cert,
						GNUTLS_X509_FMT_PEM, NULL,
						NULL, 0);
	if (rc < 0 || n == 0)
		goto fail_load;
	if (mta_keyholder_privkey(kh, pcerts[0].pubkey, &key) != 0) {
		rc = GNUTLS_E_INVALID_REQUEST;
		goto fail_pcerts;
	}
	/* the credentials own the certificates and the key from here;
	 * GnuTLS checks that the key matches (one signature by the holder) */
	rc = gnutls_certificate_set_key(c->cred, NULL, 0, pcerts, n, key);
	if (rc < 0) {
		gnutls_privkey_deinit(key);
		goto fail_pcerts;
	}
	free(pcerts); /* the array only: its contents moved */
	c->holder = kh;
	*out = c;
	return 0;

fail_pcerts:
	for (unsigned i = 0; i < n; i++)
		gnutls_pcert_deinit(&pcerts[i]);
fail_load:
	gnutls_certificate_free_credentials(c->cred);
fail_alloc:
	snprintf(err, errlen, "%s (key in the key holder): %s", cert,
		 gnutls_strerror(rc));
	free(pcerts);
	free(c);
	return MTA_ETLS;
}

bool mta_tls_creds_usable(const struct mta_tls_creds *c)
{
	return c->holder == NULL || mta_keyholder_alive(c->holder);
}

void mta_tls_creds_free(struct mta_tls_creds *c)
{
	if (c == NULL)
		return;
	gnutls_certificate_free_credentials(c->cred);
	free(c);
}

static ssize_t tls_pull(gnutls_transport_ptr_t ptr, void *buf, size_t n)
{
	struct mta_tls *t = ptr;
	size_t avail = t->in.len - t->in_off;

	if (avail == 0) {
		gnutls_transport_set_errno(t->session, EAGAIN);
		return -1;
	}
	if (n > avail)
		n = avail;
	memcpy(buf, t->in.data + t->in_off, n);
	t->in_off += n;
	if (t->in_off == t->in.len)
		t->in.len = t->in_off = 0;
	return (ssize_t)n;
}

static ssize_t tls_push(gnutls_transport_ptr_t ptr, const void *buf, size_t n)
{
	struct mta_tls *t = ptr;

	if (mta_buf_append(&t->out, buf, n) != 0) {
		gnutls_transport_set_errno(t->session, ENOMEM);
		return -1;
	}
	return (ssize_t)n;
}

/* One session over our memory transport; sni only for clients. */
static int session_init(struct mta_tls *t, unsigned flags,
			const struct mta_tls_creds *c, const char *sni)
{
	int rc;

	memset(t, 0, sizeof(*t));
	rc = gnutls_init(&t->session, flags | GNUTLS_NONBLOCK);
	if (rc < 0)
		goto fail;
	rc = gnutls_set_default_priority(t->session);
	if (rc < 0)
		goto fail_session;
	rc = gnutls_credentials_set(t->session, GNUTLS_CRD_CERTIFICATE,
				    c->cred);
	if (rc < 0)
		goto fail_session;
	if (flags & GNUTLS_SERVER)
		gnutls_certificate_server_set_request(t->session,
						      GNUTLS_CERT_IGNORE);
	if (sni != NULL && sni[0] != '\0') {
		rc = gnutls_server_name_set(t->session, GNUTLS_NAME_DNS, sni,
					    strlen(sni));
		if (rc < 0)
			goto fail_session;
	}
	gnutls_transport_set_ptr(t->session, t);
	gnutls_transport_set_pull_function(t->session, tls_pull);
	gnutls_transport_set_push_function(t->session, tls_push);
	return 0;

fail_session:
	gnutls_deinit(t->session);
fail:
	t->session = NULL;
	t->error = gnutls_strerror(rc);
	return MTA_ETLS;
}

int mta_tls_server_init(struct mta_tls *t, const struct mta_tls_creds *c)
{
	return session_init(t, GNUTLS_SERVER, c, NULL);
}

void mta_tls_free(struct mta_tls *t)
{
	if (t->session != NULL)
		gnutls_deinit(t->session);
	t->session = NULL;
	mta_buf_free(&t->in);
	mta_buf_free(&t->out);
}

int mta_tls_feed(struct mta_tls *t, const void *p, size_t n)
{
	if (t->in_off > 0 && t->in_off == t->in.len)
		t->in.len = t->in_off = 0;
	return mta_buf_append(&t->in, p, n);
}

static int translate(struct mta_tls *t, int rc)
{
	if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED)
		return MTA_EAGAIN;
	t->error = gnutls_strerror(rc);
	return MTA_ETLS;
}

int mta_tls_handshake(struct mta_tls *t)
{
	int rc;

	if (t->handshake_done)
		return 0;
	/* A non-fatal error other than AGAIN (a warning alert, say) does
	 * not mean "wait for input": the handshake goes on at once with the
	 * input already buffered.  Bounded: a peer sending nothing but
	 * warnings fails the handshake instead of spinning. */
	for (unsigned i = 0; i < MTA_TLS_WARNINGS_MAX; i++) {
		rc = gnutls_handshake(t->session);
		if (rc == GNUTLS_E_SUCCESS) {
			t->handshake_done = true;
			return 0;
		}
		if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED ||
		    gnutls_error_is_fatal(rc))
			return translate(t, rc);
		if (rc == GNUTLS_E_WARNING_ALERT_RECEIVED &&
		    gnutls_alert_get(t->session) != GNUTLS_A_UNRECOGNIZED_NAME &&
		    gnutls_alert_get(t->session) != GNUTLS_A_NO_RENEGOTIATION) {
			/* a warning we cannot ignore (e.g. user_canceled) */
			t->error = gnutls_alert_get_name(
				gnutls_alert_get(t->session));
			if (t->error == NULL)
				t->error = gnutls_strerror(rc);
			return MTA_ETLS;
		}
	}
	t->error = "too many non-fatal handshake errors";
	return MTA_ETLS;
}

int mta_tls_read(struct mta_tls *t, void *buf, size_t n, size_t *got)
{
	ssize_t r;

	/* A post-handshake message (a TLS 1.3 session ticket, a key update)
	 * makes gnutls_record_recv() return AGAIN although more records may
	 * be buffered: only a truly empty input means "wait for the peer". */
	do {
		r = gnutls_record_recv(t->session, buf, n);
	} while ((r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) &&
		 (t->in.len > t->in_off ||
		  gnutls_record_check_pending(t->session) > 0));
	*got = 0;
	if (r > 0) {
		*got = (size_t)r;
		return 0;
	}
	if (r == 0)
		return MTA_ECLOSED;
	return translate(t, (int)r);
}

int mta_tls_write(struct mta_tls *t, const void *p, size_t n)
{
	const char *c = p;

	while (n > 0) {
		ssize_t w = gnutls_record_send(t->session, c, n);
		if (w < 0) {
			if (w == GNUTLS_E_AGAIN || w == GNUTLS_E_INTERRUPTED)
				continue; /* push never blocks */
			return translate(t, (int)w);
		}
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

void mta_tls_bye(struct mta_tls *t)
{
	if (t->session != NULL && t->handshake_done)
		(void)gnutls_bye(t->session, GNUTLS_SHUT_WR);
}

void mta_tls_take_output(struct mta_tls *t, struct mta_buf *dst)
{
	*dst = t->out;
	memset(&t->out, 0, sizeof(t->out));
}

void mta_tls_describe(const struct mta_tls *t, char *buf, size_t n)
{
	const char *ver = gnutls_protocol_get_name(
		gnutls_protocol_get_version(t->session));
	const char *suite = gnutls_ciphersuite_get(t->session);

	snprintf(buf, n, "%s %s", ver ? ver : "unknown",
		 suite ? suite : "unknown");
}

int mta_tls_creds_client(const char *ca_file, struct mta_tls_creds **out,
			 char *err, size_t errlen)
{
	struct mta_tls_creds *c = calloc(1, sizeof(*c));
	int rc;

	if (c == NULL)
		return -ENOMEM;
	rc = gnutls_certificate_allocate_credentials(&c->cred);
	if (rc < 0) {
		free(c);
		snprintf(err, errlen, "%s", gnutls_strerror(rc));
		return MTA_ETLS;
	}
	if (ca_file != NULL) {
		rc = gnutls_certificate_set_x509_trust_file(c->cred, ca_file,
							    GNUTLS_X509_FMT_PEM);
		if (rc <= 0) {
			snprintf(err, errlen, "%s: %s", ca_file,
				 rc == 0 ? "no certificates"
					 : gnutls_strerror(rc));
			*out = c; /* usable for opportunistic TLS */
			return MTA_ETLS;
		}
	}
	*out = c;
	return 0;
}

int mta_tls_client_init(struct mta_tls *t, const struct mta_tls_creds *c,
			const char *sni)
{
	return session_init(t, GNUTLS_CLIENT, c, sni);
}

/* RFC 6125 DNS-ID only: the leaf must carry at least one dNSName in its
 * subjectAltName, and one of them must match host.  GnuTLS's own host
 * name check falls back to the subject CN when there is no dNSName (and
 * gnutls_x509_crt_check_hostname2() does too), so the fallback case is
 * refused here before GnuTLS is asked: with a dNSName present it never
 * looks at the CN. */
static int leaf_dns_id(const gnutls_datum_t *der, const char *host,
		       const char **rpt, char *why, size_t len)
{
	gnutls_x509_crt_t crt;
	char name[256];
	bool have_dns = false;
	int rc;

	if (gnutls_x509_crt_init(&crt) < 0) {
		snprintf(why, len, "out of memory");
		return MTA_ETLS;
	}
	rc = gnutls_x509_crt_import(crt, der, GNUTLS_X509_FMT_DER);
	if (rc < 0) {
		snprintf(why, len, "leaf certificate unreadable: %s",
			 gnutls_strerror(rc));
		gnutls_x509_crt_deinit(crt);
		return MTA_ETLS;
	}
	for (unsigned i = 0; i < 1024; i++) {
		size_t n = sizeof(name);
		unsigned critical;

		rc = gnutls_x509_crt_get_subject_alt_name(crt, i, name, &n,
							  &critical);
		if (rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
			break;
		if (rc == GNUTLS_SAN_DNSNAME) {
			have_dns = true;
			break;
		}
		/* other types go on; names too long to be host names too */
		if (rc < 0 && rc != GNUTLS_E_SHORT_MEMORY_BUFFER)
			break;
	}
	if (!have_dns) {
		*rpt = "certificate-host-mismatch";
		snprintf(why, len,
			 "certificate has no subjectAltName dNSName (DNS-ID "
			 "required, subject CN not used)");
		gnutls_x509_crt_deinit(crt);
		return MTA_ETLS;
	}
	rc = gnutls_x509_crt_check_hostname2(crt, host, 0) ? 0 : MTA_ETLS;
	gnutls_x509_crt_deinit(crt);
	if (rc != 0) {
		*rpt = "certificate-host-mismatch";
		snprintf(why, len, "no DNS-ID of the certificate matches %s",
			 host);
	}
	return rc;
}

int mta_tls_verify_webpki(struct mta_tls *t, const char *host,
			  const char **rpt, char *why, size_t len)
{
	gnutls_datum_t out = {NULL, 0};
	const gnutls_datum_t *chain;
	unsigned status = 0, n = 0;
	const char *dummy;
	int rc;

	if (rpt == NULL)
		rpt = &dummy;
	*rpt = "certificate-not-trusted";
	chain = gnutls_certificate_get_peers(t->session, &n);
	if (chain == NULL || n == 0) {
		snprintf(why, len, "no certificate presented");
		return MTA_ETLS;
	}
	/* the chain to the trust of the credentials, no name: the name is
	 * checked below, DNS-ID only */
	rc = gnutls_certificate_verify_peers(t->session, NULL, 0, &status);
	if (rc < 0) {
		snprintf(why, len, "certificate verification failed: %s",
			 gnutls_strerror(rc));
		return MTA_ETLS;
	}
	if (status != 0) {
		if (status & GNUTLS_CERT_EXPIRED)
			*rpt = "certificate-expired";
		if (gnutls_certificate_verification_status_print(
			    status, GNUTLS_CRT_X509, &out, 0) == 0) {
			snprintf(why, len, "%s", (const char *)out.data);
			gnutls_free(out.data);
		} else {
			snprintf(why, len,
				 "certificate not valid (status 0x%x)",
				 status);
		}
		return MTA_ETLS;
	}
	return leaf_dns_id(&chain[0], host, rpt, why, len);
}

const gnutls_datum_t *mta_tls_peer_chain(const struct mta_tls *t, size_t *n)
{
	unsigned int count = 0;
	const gnutls_datum_t *c = gnutls_certificate_get_peers(t->session,
							       &count);
	*n = c != NULL ? count : 0;
	return c;
}

int mta_tls_cert_info(const gnutls_datum_t *der, struct mta_tls_certinfo *out)
{
	gnutls_x509_crt_t crt;
	unsigned char id[32];
	size_t len;
	int rc = MTA_ETLS;

	memset(out, 0, sizeof(*out));
	if (gnutls_x509_crt_init(&crt) < 0)
		return MTA_ETLS;
	if (gnutls_x509_crt_import(crt, der, GNUTLS_X509_FMT_DER) < 0)
		goto out;
	len = sizeof(out->subject);
	if (gnutls_x509_crt_get_dn(crt, out->subject, &len) < 0)
		snprintf(out->subject, sizeof(out->subject), "?");
	len = sizeof(out->issuer);
	if (gnutls_x509_crt_get_issuer_dn(crt, out->issuer, &len) < 0)
		snprintf(out->issuer, sizeof(out->issuer), "?");
	len = sizeof(id);
	if (gnutls_x509_crt_get_key_id(crt, GNUTLS_KEYID_USE_SHA256, id,
				       &len) == 0 && len == sizeof(id))
		for (size_t i = 0; i < len; i++)
			snprintf(out->spki_sha256 + 2 * i, 3, "%02x", id[i]);
	out->not_before = (int64_t)gnutls_x509_crt_get_activation_time(crt);
	out->not_after = (int64_t)gnutls_x509_crt_get_expiration_time(crt);
	rc = 0;
out:
	gnutls_x509_crt_deinit(crt);
	return rc;
}

int mta_tls_peer_issuer(const struct mta_tls *t, gnutls_datum_t *out)
{
	gnutls_x509_crt_t leaf = NULL, iss = NULL;
	const gnutls_datum_t *chain;
	size_t n = 0;
	void *cred = NULL;
	int rc = MTA_ENOTFOUND;

	out->data = NULL;
	out->size = 0;
	chain = mta_tls_peer_chain(t, &n);
	if (n == 0 || gnutls_x509_crt_init(&leaf) < 0)
		return MTA_ENOTFOUND;
	if (gnutls_x509_crt_import(leaf, &chain[0], GNUTLS_X509_FMT_DER) < 0)
		goto out;
	/* the peer's chain first, then the trust store (the lab's and
	 * many servers' chains stop at the leaf) */
	for (size_t i = 1; i < n && rc != 0; i++) {
		gnutls_x509_crt_t c;
		if (gnutls_x509_crt_init(&c) < 0)
			break;
		if (gnutls_x509_crt_import(c, &chain[i], GNUTLS_X509_FMT_DER) >=
			    0 &&
		    gnutls_x509_crt_check_issuer(leaf, c) &&
		    gnutls_x509_crt_export2(c, GNUTLS_X509_FMT_DER, out) >= 0)
			rc = 0;
		gnutls_x509_crt_deinit(c);
	}
	if (rc != 0 &&
	    gnutls_credentials_get(t->session, GNUTLS_CRD_CERTIFICATE, &cred) >=
		    0 &&
	    cred != NULL &&
	    gnutls_certificate_get_issuer(cred, leaf, &iss,
					  GNUTLS_TL_GET_COPY) >= 0) {
		if (gnutls_x509_crt_export2(iss, GNUTLS_X509_FMT_DER, out) >= 0)
			rc = 0;
		gnutls_x509_crt_deinit(iss);
	}
out:
	gnutls_x509_crt_deinit(leaf);
	return rc;
}
