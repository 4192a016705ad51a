#include "sts_fetch.h"

#include "envelope.h" /* struct mta_buf */
#include "err.h"
#include "sts.h"

#include <arpa/inet.h>
#include <assert.h>
#include <curl/curl.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FETCH_DEFAULT_TIMEOUT_MS 10000u
#define FETCH_DOMAIN_MAX (MTA_STS_DOMAIN_MAX - 8) /* room for "mta-sts." */

/* One uv_poll_t per socket curl asked us to watch; linked into the
 * fetcher so a socket curl forgets to remove is still closed at free. */
struct sock_ctx {
	uv_poll_t poll;
	curl_socket_t fd;
	struct mta_sts_fetcher *f;
	struct sock_ctx *prev, *next;
};

struct mta_sts_fetcher {
	uv_loop_t *loop;
	CURLM *multi;
	uv_timer_t timer;
	struct mta_sts_fetch *fetches; /* outstanding, doubly linked */
	struct sock_ctx *socks;
	int dispatching;	       /* > 0 while callbacks run */
};

enum abort_reason {
	ABORT_NONE,
	ABORT_STATUS,
	ABORT_CTYPE,
	ABORT_BIG,
	ABORT_NOMEM,
	ABORT_NO_SAN,
	ABORT_NOHDR,
};

struct mta_sts_fetch {
	struct mta_sts_fetcher *f;
	struct mta_sts_fetch *prev, *next;
	CURL *easy;
	struct curl_slist *connect_to;
	struct curl_slist *hdrs; /* POST: Content-Type */
	bool post;		 /* a POST (opts.url): 2xx is success */
	mta_sts_fetch_cb cb;
	void *ud;
	struct mta_buf body;
	size_t max_body;
	bool headers_checked;
	enum abort_reason abort;
	char errbuf[CURL_ERROR_SIZE];
	char why[160];
	char ctype[128];
};

/* ---- socket and timer plumbing (curl multi-socket <-> libuv) ---- */

static void process_done(struct mta_sts_fetcher *f);

static void on_poll(uv_poll_t *h, int status, int events)
{
	struct sock_ctx *s = h->data;
	struct mta_sts_fetcher *f = s->f;
	int flags = 0, running;

	if (status < 0)
		flags = CURL_CSELECT_ERR;
	if (events & UV_READABLE)
		flags |= CURL_CSELECT_IN;
	if (events & UV_WRITABLE)
		flags |= CURL_CSELECT_OUT;
	(void)curl_multi_socket_action(f->multi, s->fd, flags, &running);
	process_done(f);
}

static void on_timer(uv_timer_t *t)
{
	struct mta_sts_fetcher *f = t->data;
	int running;

	(void)curl_multi_socket_action(f->multi, CURL_SOCKET_TIMEOUT, 0,
				       &running);
	process_done(f);
}

/* CURLMOPT_TIMERFUNCTION: -1 stops the timer; 0 means "as soon as
 * possible", which we do from the loop, never from inside this call. */
static int timer_cb(CURLM *multi, long ms, void *ud)
{
	struct mta_sts_fetcher *f = ud;

	(void)multi;
	if (ms < 0)
		uv_timer_stop(&f->timer);
	else
		uv_timer_start(&f->timer, on_timer, (uint64_t)ms, 0);
	return 0;
}

static void sock_closed(uv_handle_t *h)
{
	free(h->data);
}

static void sock_release(struct mta_sts_fetcher *f, struct sock_ctx *s)
{
	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		f->socks = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	uv_poll_stop(&s->poll);
	uv_close((uv_handle_t *)&s->poll, sock_closed);
}

/* CURLMOPT_SOCKETFUNCTION: watch s for what curl asks, via one uv_poll_t
 * kept with curl_multi_assign(). */
static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *ud,
		     void *sockp)
{
	struct mta_sts_fetcher *f = ud;
	struct sock_ctx *s = sockp;
	int ev = 0;

	(void)easy;
	if (what == CURL_POLL_REMOVE) {
		if (s != NULL) {
			curl_multi_assign(f->multi, fd, NULL);
			sock_release(f, s);
		}
		return 0;
	}
	if (s == NULL) {
		s = calloc(1, sizeof(*s));
		if (s == NULL)
			return -1;
		if (uv_poll_init_socket(f->loop, &s->poll, fd) != 0) {
			free(s);
			return -1;
		}
		s->fd = fd;
		s->f = f;
		s->poll.data = s;
		s->next = f->socks;
		if (f->socks != NULL)
			f->socks->prev = s;
		f->socks = s;
		curl_multi_assign(f->multi, fd, s);
	}
	if (what & CURL_POLL_IN)
		ev |= UV_READABLE;
	if (what & CURL_POLL_OUT)
		ev |= UV_WRITABLE;
	if (uv_poll_start(&s->poll, ev, on_poll) != 0)
		return -1;
	return 0;
}

/* ---- one fetch ---- */

/* RFC 8461 3.3 / RFC 6125: the policy host is identified by a DNS-ID only.
 * curl (GnuTLS) has verified the chain and the name, but GnuTLS falls back
 * to the subject CN when the certificate has no dNSName SAN.  GnuTLS
 * ignores the CN when a dNSName is present, so "verified by curl and has
 * a dNSName SAN" means "matched by a DNS-ID".  Returns false when the leaf
 * has no dNSName SAN or cannot be read. */
static bool peer_has_dns_san(CURL *easy)
{
	struct curl_tlssessioninfo *ti = NULL;
	const gnutls_datum_t *peers;
	unsigned int npeers = 0;
	gnutls_x509_crt_t crt;
	bool found = false;

	if (curl_easy_getinfo(easy, CURLINFO_TLS_SSL_PTR, &ti) != CURLE_OK ||
	    ti == NULL || ti->backend != CURLSSLBACKEND_GNUTLS ||
	    ti->internals == NULL)
		return false;
	peers = gnutls_certificate_get_peers(ti->internals, &npeers);
	if (peers == NULL || npeers == 0 || gnutls_x509_crt_init(&crt) < 0)
		return false;
	if (gnutls_x509_crt_import(crt, &peers[0], GNUTLS_X509_FMT_DER) >= 0) {
		for (unsigned int i = 0; !found; i++) {
			char name[256];
			size_t len = sizeof(name);
			int t = gnutls_x509_crt_get_subject_alt_name(
				crt, i, name, &len, NULL);

			if (t == GNUTLS_E_SHORT_MEMORY_BUFFER)
				continue; /* too long for a host name */
			if (t < 0)
				break;
			found = t == GNUTLS_SAN_DNSNAME;
		}
	}
	gnutls_x509_crt_deinit(crt);
	return found;
}

/* The checks done once the response headers are in, before any byte of the
 * body is kept: the certificate identity, the status, the media type. */
static enum abort_reason check_response(struct mta_sts_fetch *q)
{
	long code = 0;
	char *ct = NULL;

	if (!peer_has_dns_san(q->easy))
		return ABORT_NO_SAN;
	curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &code);
	if (q->post)
		return code >= 200 && code < 300 ? ABORT_NONE : ABORT_STATUS;
	if (code != 200)
		return ABORT_STATUS;
	curl_easy_getinfo(q->easy, CURLINFO_CONTENT_TYPE, &ct);
	if (!mta_sts_content_type_ok(ct))
		return ABORT_CTYPE;
	return ABORT_NONE;
}

/* CURLOPT_HEADERFUNCTION: at the end of the (final) header block, while
 * the TLS session is still up, the response is checked before any byte of
 * the body is read. */
static size_t header_cb(char *p, size_t size, size_t nmemb, void *ud)
{
	struct mta_sts_fetch *q = ud;
	size_t n = size * nmemb;
	long code = 0;

	if (!((n == 2 && p[0] == '\r' && p[1] == '\n') ||
	      (n == 1 && p[0] == '\n')))
		return n;
	curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &code);
	if (code >= 100 && code < 200)
		return n; /* an interim response; the final one follows */
	q->headers_checked = true;
	q->abort = check_response(q);
	return q->abort == ABORT_NONE ? n : 0;
}

/* CURLOPT_WRITEFUNCTION: the body, capped. */
static size_t write_cb(char *p, size_t size, size_t nmemb, void *ud)
{
	struct mta_sts_fetch *q = ud;
	size_t n = size * nmemb;

	if (!q->headers_checked) {
		q->abort = ABORT_NOHDR;
		return CURL_WRITEFUNC_ERROR;
	}
	if (n > q->max_body - q->body.len) {
		q->abort = ABORT_BIG;
		return CURL_WRITEFUNC_ERROR;
	}
	if (mta_buf_append(&q->body, p, n) != 0) {
		q->abort = ABORT_NOMEM;
		return CURL_WRITEFUNC_ERROR;
	}
	return n;
}

static void fetch_unlink(struct mta_sts_fetch *q)
{
	struct mta_sts_fetcher *f = q->f;

	if (q->prev != NULL)
		q->prev->next = q->next;
	else
		f->fetches = q->next;
	if (q->next != NULL)
		q->next->prev = q->prev;
	q->prev = q->next = NULL;
}

/* Remove from curl and free.  Never from inside a curl callback. */
static void fetch_destroy(struct mta_sts_fetch *q)
{
	if (q->easy != NULL) {
		curl_multi_remove_handle(q->f->multi, q->easy);
		curl_easy_cleanup(q->easy);
	}
	curl_slist_free_all(q->connect_to);
	curl_slist_free_all(q->hdrs); /* POST's Content-Type (TLSRPT) */
	mta_buf_free(&q->body);
	free(q);
}

#pragma GCC diagnostic push
/* CURLcode has about a hundred values; these switches name the few that
 * matter and send the rest to default on purpose */
#pragma GCC diagnostic ignored "-Wswitch-enum"
static bool is_tls_error(CURLcode rc)
{
	switch (rc) {
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_INVALIDCERTSTATUS:
	case CURLE_SSL_CRL_BADFILE:
	case CURLE_SSL_ENGINE_INITFAILED:
	case CURLE_SSL_ENGINE_NOTFOUND:
	case CURLE_SSL_ENGINE_SETFAILED:
	case CURLE_USE_SSL_FAILED:
		return true;
	default:
		return false;
	}
}
#pragma GCC diagnostic pop

#pragma GCC diagnostic push
/* CURLcode has about a hundred values; these switches name the few that
 * matter and send the rest to default on purpose */
#pragma GCC diagnostic ignored "-Wswitch-enum"
/* The one place curl's transfer result is translated. */
static void classify(struct mta_sts_fetch *q, CURLcode rc,
		     struct mta_sts_fetch_result *r)
{
	const char *curl_why = q->errbuf[0] ? q->errbuf : curl_easy_strerror(rc);

	r->why = q->why;
	switch (q->abort) {
	case ABORT_STATUS:
		r->status = MTA_STS_FETCH_HTTP_STATUS;
		snprintf(q->why, sizeof(q->why), "HTTP status %ld, not 200",
			 r->http_code);
		return;
	case ABORT_CTYPE:
		r->status = MTA_STS_FETCH_CONTENT_TYPE;
		snprintf(q->why, sizeof(q->why), "Content-Type is not text/plain");
		return;
	case ABORT_BIG:
		r->status = MTA_STS_FETCH_TOO_BIG;
		snprintf(q->why, sizeof(q->why), "body larger than %zu bytes",
			 q->max_body);
		return;
	case ABORT_NOMEM:
		r->status = MTA_STS_FETCH_ERROR;
		snprintf(q->why, sizeof(q->why), "out of memory");
		return;
	case ABORT_NOHDR:
		r->status = MTA_STS_FETCH_ERROR;
		snprintf(q->why, sizeof(q->why), "no response headers");
		return;
	case ABORT_NO_SAN:
		r->status = MTA_STS_FETCH_TLS;
		snprintf(q->why, sizeof(q->why),
			 "certificate has no subjectAltName DNS name");
		return;
	case ABORT_NONE:
		break;
	}
	switch (rc) {
	case CURLE_OK:
		if (q->post && r->http_code >= 200 && r->http_code < 300) {
			r->status = MTA_STS_FETCH_OK;
			snprintf(q->why, sizeof(q->why), "ok");
		} else if (r->http_code != 200) {
			r->status = MTA_STS_FETCH_HTTP_STATUS;
			snprintf(q->why, sizeof(q->why),
				 "HTTP status %ld, not 200", r->http_code);
		} else if (!mta_sts_content_type_ok(r->content_type)) {
			r->status = MTA_STS_FETCH_CONTENT_TYPE;
			snprintf(q->why, sizeof(q->why),
				 "Content-Type is not text/plain");
		} else {
			r->status = MTA_STS_FETCH_OK;
			snprintf(q->why, sizeof(q->why), "ok");
		}
		return;
	case CURLE_FILESIZE_EXCEEDED:
		r->status = MTA_STS_FETCH_TOO_BIG;
		break;
	case CURLE_OPERATION_TIMEDOUT:
		r->status = MTA_STS_FETCH_TIMEOUT;
		break;
	case CURLE_COULDNT_CONNECT:
	case CURLE_COULDNT_RESOLVE_HOST:
		r->status = MTA_STS_FETCH_CONNECT;
		break;
	default:
		r->status = is_tls_error(rc) ? MTA_STS_FETCH_TLS
					     : MTA_STS_FETCH_ERROR;
		break;
	}
	r->why = curl_why;
}
#pragma GCC diagnostic pop

static void fetch_finish(struct mta_sts_fetch *q, CURLcode rc)
{
	struct mta_sts_fetch_result r;
	char *ct = NULL;

	memset(&r, 0, sizeof(r));
	r.curl_code = (int)rc;
	curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &r.http_code);
	curl_easy_getinfo(q->easy, CURLINFO_CONTENT_TYPE, &ct);
	if (ct != NULL) {
		snprintf(q->ctype, sizeof(q->ctype), "%s", ct);
		r.content_type = q->ctype;
	}
	if (rc == CURLE_OK && !q->headers_checked)
		q->abort = ABORT_NOHDR;
	classify(q, rc, &r);
	if (r.status == MTA_STS_FETCH_OK) {
		r.body = q->body.len ? (const char *)q->body.data : "";
		r.body_len = q->body.len;
	}
	/* curl is done with this transfer before the user sees it */
	curl_multi_remove_handle(q->f->multi, q->easy);
	curl_easy_cleanup(q->easy);
	q->easy = NULL;
	fetch_unlink(q);
	q->cb(&r, q->ud);
	fetch_destroy(q);
}

static void process_done(struct mta_sts_fetcher *f)
{
	CURLMsg *msg;
	int left;

	f->dispatching++;
	while ((msg = curl_multi_info_read(f->multi, &left)) != NULL) {
		struct mta_sts_fetch *q = NULL;
		CURLcode rc;

		if (msg->msg != CURLMSG_DONE)
			continue;
		rc = msg->data.result;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &q);
		assert(q != NULL);
		fetch_finish(q, rc); /* msg is invalid from here on */
	}
	f->dispatching--;
}

static bool domain_ok(const char *d)
{
	size_t n = strlen(d), lab = 0;

	if (n == 0 || n > FETCH_DOMAIN_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = d[i];

		if (c == '.') {
			if (lab == 0)
				return false;
			lab = 0;
		} else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			   (c >= '0' && c <= '9') || c == '-') {
			if (++lab > 63)
				return false;
		} else {
			return false;
		}
	}
	return lab > 0;
}

#pragma GCC diagnostic push
/* CURLcode has about a hundred values; these switches name the few that
 * matter and send the rest to default on purpose */
#pragma GCC diagnostic ignored "-Wswitch-enum"
static int curl_to_err(CURLcode rc)
{
	switch (rc) {
	case CURLE_OK:
		return 0;
	case CURLE_OUT_OF_MEMORY:
		return -ENOMEM;
	case CURLE_UNKNOWN_OPTION:
	case CURLE_NOT_BUILT_IN:
	case CURLE_UNSUPPORTED_PROTOCOL:
		return -ENOTSUP;
	default:
		return -EINVAL;
	}
}
#pragma GCC diagnostic pop

/* Over 100 lines on purpose: one curl easy handle configured option by
 * option, each RFC 8461 3.3 constraint (HTTPS only, no redirects, no
 * proxy, size and time limits, the address already resolved) next to its
 * setopt, released through one exit. */
int mta_sts_fetch_start(struct mta_sts_fetcher *f,
			const struct mta_sts_fetch_opts *o,
			mta_sts_fetch_cb cb, void *ud,
			struct mta_sts_fetch **out)
{
	struct mta_sts_fetch *q;
	unsigned char addrbuf[sizeof(struct in6_addr)];
	char url[320], map[400], host[MTA_STS_DOMAIN_MAX + 1];
	bool v6 = false;
	long timeout;
	CURLcode rc = CURLE_OK;
	int err;

	assert(cb != NULL);
	if (o->url != NULL) {
		if (o->url_host == NULL || !domain_ok(o->url_host) ||
		    strncmp(o->url, "https://", 8) != 0 ||
		    strlen(o->url) >= sizeof(url) || o->post == NULL ||
		    o->post_type == NULL)
			return -EINVAL;
	} else if (o->domain == NULL || !domain_ok(o->domain)) {
		return -EINVAL;
	}
	if (o->connect_addr == NULL)
		return -EINVAL;
	if (inet_pton(AF_INET6, o->connect_addr, addrbuf) == 1)
		v6 = true;
	else if (inet_pton(AF_INET, o->connect_addr, addrbuf) != 1)
		return -EINVAL;
	if (o->url != NULL) {
		unsigned uport = o->url_port ? o->url_port : 443u;
		snprintf(host, sizeof(host), "%s", o->url_host);
		snprintf(url, sizeof(url), "%s", o->url);
		snprintf(map, sizeof(map),
			 v6 ? "%s:%u:[%s]:%u" : "%s:%u:%s:%u", host, uport,
			 o->connect_addr,
			 o->https_port ? (unsigned)o->https_port : uport);
	} else {
		snprintf(host, sizeof(host), "mta-sts.%s", o->domain);
		for (char *c = host; *c; c++)
			if (*c >= 'A' && *c <= 'Z')
				*c = (char)(*c - 'A' + 'a');
		snprintf(url, sizeof(url), "https://%s/.well-known/mta-sts.txt",
			 host);
		snprintf(map, sizeof(map),
			 v6 ? "%s:443:[%s]:%u" : "%s:443:%s:%u", host,
			 o->connect_addr,
			 o->https_port ? (unsigned)o->https_port : 443u);
	}
	for (char *c = map; *c && *c != ':'; c++)
		if (*c >= 'A' && *c <= 'Z')
			*c = (char)(*c - 'A' + 'a');
	timeout = (long)(o->timeout_ms ? o->timeout_ms
				       : FETCH_DEFAULT_TIMEOUT_MS);

	q = calloc(1, sizeof(*q));
	if (q == NULL)
		return -ENOMEM;
	q->f = f;
	q->cb = cb;
	q->ud = ud;
	q->max_body = o->max_body ? o->max_body : MTA_STS_POLICY_MAX;
	q->post = o->url != NULL;
	q->connect_to = curl_slist_append(NULL, map);
	if (q->connect_to == NULL) {
		err = -ENOMEM;
		goto fail_free;
	}
	if (q->post) {
		char ct[160];
		snprintf(ct, sizeof(ct), "Content-Type: %s", o->post_type);
		q->hdrs = curl_slist_append(NULL, ct);
		if (q->hdrs == NULL) {
			err = -ENOMEM;
			goto fail_free;
		}
	}
	q->easy = curl_easy_init();
	if (q->easy == NULL) {
		err = -ENOMEM;
		goto fail_free;
	}

#define SET(opt, val)                                          \
	do {                                                   \
		if (rc == CURLE_OK)                            \
			rc = curl_easy_setopt(q->easy, opt, val); \
	} while (0)
	SET(CURLOPT_URL, url);
	SET(CURLOPT_CONNECT_TO, q->connect_to);
	SET(CURLOPT_PROTOCOLS_STR, "https");
	SET(CURLOPT_REDIR_PROTOCOLS_STR, "https");
	SET(CURLOPT_FOLLOWLOCATION, 0L);
	if (q->post) {
		SET(CURLOPT_POST, 1L);
		SET(CURLOPT_POSTFIELDS, o->post);
		SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->post_len);
		SET(CURLOPT_HTTPHEADER, q->hdrs);
	} else {
		SET(CURLOPT_HTTPGET, 1L);
	}
	SET(CURLOPT_NOSIGNAL, 1L);
	SET(CURLOPT_TIMEOUT_MS, timeout);
	SET(CURLOPT_CONNECTTIMEOUT_MS, timeout);
	SET(CURLOPT_SSL_VERIFYPEER, 1L);
	SET(CURLOPT_SSL_VERIFYHOST, 2L);
	SET(CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	SET(CURLOPT_SSL_SESSIONID_CACHE, 0L);
	if (o->ca_file != NULL) {
		SET(CURLOPT_CAINFO, o->ca_file);
		SET(CURLOPT_CAPATH, (char *)NULL);
	}
	SET(CURLOPT_PROXY, "");
	SET(CURLOPT_NOPROXY, "*");
	SET(CURLOPT_FORBID_REUSE, 1L);
	SET(CURLOPT_FRESH_CONNECT, 1L);
	SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)q->max_body);
	SET(CURLOPT_USERAGENT, "mtad-mta-sts/1");
	SET(CURLOPT_WRITEFUNCTION, write_cb);
	SET(CURLOPT_WRITEDATA, q);
	SET(CURLOPT_HEADERFUNCTION, header_cb);
	SET(CURLOPT_HEADERDATA, q);
	SET(CURLOPT_PRIVATE, q);
	SET(CURLOPT_ERRORBUFFER, q->errbuf);
#undef SET
	if (rc != CURLE_OK) {
		err = curl_to_err(rc);
		goto fail_free;
	}
	/* curl asks for a 0 ms timer here: the transfer starts on the next
	 * loop turn, so the callback is never called from inside this call. */
	if (curl_multi_add_handle(f->multi, q->easy) != CURLM_OK) {
		err = -ENOMEM;
		goto fail_free;
	}
	q->next = f->fetches;
	if (f->fetches != NULL)
		f->fetches->prev = q;
	f->fetches = q;
	if (out != NULL)
		*out = q;
	return 0;

fail_free:
	if (q->easy != NULL)
		curl_easy_cleanup(q->easy);
	curl_slist_free_all(q->connect_to);
	curl_slist_free_all(q->hdrs);
	free(q);
	return err;
}

void mta_sts_fetch_cancel(struct mta_sts_fetch *q)
{
	fetch_unlink(q);
	fetch_destroy(q);
}

/* ---- the fetcher ---- */

int mta_sts_fetcher_init(uv_loop_t *loop, struct mta_sts_fetcher **out)
{
	struct mta_sts_fetcher *f;
	int rc;

	f = calloc(1, sizeof(*f));
	if (f == NULL)
		return -ENOMEM;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		rc = MTA_ECONFIG;
		goto fail_free;
	}
	f->multi = curl_multi_init();
	if (f->multi == NULL) {
		rc = -ENOMEM;
		goto fail_global;
	}
	if (curl_multi_setopt(f->multi, CURLMOPT_SOCKETFUNCTION, socket_cb) !=
		    CURLM_OK ||
	    curl_multi_setopt(f->multi, CURLMOPT_SOCKETDATA, f) != CURLM_OK ||
	    curl_multi_setopt(f->multi, CURLMOPT_TIMERFUNCTION, timer_cb) !=
		    CURLM_OK ||
	    curl_multi_setopt(f->multi, CURLMOPT_TIMERDATA, f) != CURLM_OK) {
		rc = MTA_ECONFIG;
		goto fail_multi;
	}
	rc = uv_timer_init(loop, &f->timer);
	if (rc != 0)
		goto fail_multi;
	f->timer.data = f;
	f->loop = loop;
	*out = f;
	return 0;

fail_multi:
	curl_multi_cleanup(f->multi);
fail_global:
	curl_global_cleanup();
fail_free:
	free(f);
	return rc;
}

static void fetcher_closed(uv_handle_t *h)
{
	free(h->data);
}

void mta_sts_fetcher_free(struct mta_sts_fetcher *f)
{
	if (f == NULL)
		return;
	assert(f->dispatching == 0);
	while (f->fetches != NULL)
		mta_sts_fetch_cancel(f->fetches);
	curl_multi_cleanup(f->multi);
	f->multi = NULL;
	curl_global_cleanup();
	while (f->socks != NULL) /* sockets curl did not remove */
		sock_release(f, f->socks);
	uv_timer_stop(&f->timer);
	uv_close((uv_handle_t *)&f->timer, fetcher_closed);
}

const char *mta_sts_fetch_status_name(enum mta_sts_fetch_status s)
{
	switch (s) {
	case MTA_STS_FETCH_OK:
		return "OK";
	case MTA_STS_FETCH_HTTP_STATUS:
		return "HTTP_STATUS";
	case MTA_STS_FETCH_CONTENT_TYPE:
		return "CONTENT_TYPE";
	case MTA_STS_FETCH_TOO_BIG:
		return "TOO_BIG";
	case MTA_STS_FETCH_TIMEOUT:
		return "TIMEOUT";
	case MTA_STS_FETCH_CONNECT:
		return "CONNECT";
	case MTA_STS_FETCH_TLS:
		return "TLS";
	case MTA_STS_FETCH_ERROR:
		return "ERROR";
	}
	return "?";
}
