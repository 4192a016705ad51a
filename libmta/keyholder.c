#include "keyholder.h"

#include "err.h"
#include "log.h"
#include "sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

enum kh_type {
	KH_SIGN_DATA = 1,
	KH_SIGN_HASH = 2,
	KH_DECRYPT = 3,
	KH_AUTH_PLAIN = 4,
	KH_RELOAD = 5,
};

struct kh_req {
	uint32_t type;
	uint32_t algo;	/* gnutls_sign_algorithm_t */
	uint32_t flags; /* GnuTLS sign flags */
	uint32_t len;	/* payload bytes that follow */
};

struct kh_ans {
	int32_t status; /* 0 or a GnuTLS error code */
	uint32_t len;
};

struct mta_keyholder {
	int fd;
	pid_t pid;
	/* one round trip at a time: inbound sessions of several loop
	 * threads (server.threads) sign through the same socket */
	pthread_mutex_t mu;
	bool dead; /* under mu */
	gnutls_pk_algorithm_t pk;
	unsigned bits;
};

/* ------------------------------------------------------------------------ */
/* the holder (child) */

struct holder {
	gnutls_privkey_t key; /* NULL: no TLS key given */
	char user[256], pass[256];
	char plain[700];      /* base64("\0user\0pass"), "" = none */
	const char *key_file, *auth_file; /* as started: RELOAD reads them */
};

static int holder_reload(struct holder *h);

static int holder_answer(int fd, int status, const void *p, size_t n)
{
	unsigned char buf[sizeof(struct kh_ans) + MTA_KEYHOLDER_MAX];
	struct kh_ans a = {.status = status, .len = (uint32_t)n};

	if (n > MTA_KEYHOLDER_MAX)
		return -1;
	memcpy(buf, &a, sizeof(a));
	if (n > 0)
		memcpy(buf + sizeof(a), p, n);
	return send(fd, buf, sizeof(a) + n, MSG_NOSIGNAL) < 0 ? -1 : 0;
}

static void holder_serve(int fd, struct holder *h)
{
	unsigned char buf[sizeof(struct kh_req) + MTA_KEYHOLDER_MAX + 1];

	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		struct kh_req r;
		gnutls_datum_t in, out = {NULL, 0};
		int rc;

		if (n == 0)
			return; /* the daemon is gone */
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		if ((size_t)n < sizeof(r)) {
			holder_answer(fd, GNUTLS_E_INVALID_REQUEST, NULL, 0);
			continue;
		}
		memcpy(&r, buf, sizeof(r));
		if (r.len > MTA_KEYHOLDER_MAX ||
		    (size_t)n != sizeof(r) + r.len) {
			holder_answer(fd, GNUTLS_E_INVALID_REQUEST, NULL, 0);
			continue;
		}
		in.data = buf + sizeof(r);
		in.size = r.len;
		switch (r.type) {
		case KH_SIGN_DATA:
			rc = h->key == NULL ? GNUTLS_E_INVALID_REQUEST
					    : gnutls_privkey_sign_data2(
						      h->key, r.algo, r.flags,
						      &in, &out);
			break;
		case KH_SIGN_HASH:
			rc = h->key == NULL ? GNUTLS_E_INVALID_REQUEST
					    : gnutls_privkey_sign_hash2(
						      h->key, r.algo, r.flags,
						      &in, &out);
			break;
		case KH_DECRYPT:
			rc = h->key == NULL ? GNUTLS_E_INVALID_REQUEST
					    : gnutls_privkey_decrypt_data(
						      h->key, 0, &in, &out);
			break;
		case KH_AUTH_PLAIN:
			if (r.len != 0 || h->plain[0] == '\0') {
				rc = GNUTLS_E_INVALID_REQUEST;
				break;
			}
			holder_answer(fd, 0, h->plain, strlen(h->plain));
			continue;
		case KH_RELOAD:
			/* both files again, from the paths of the start; on
			 * any failure the old key and password stay */
			if (r.len != 0 || holder_reload(h) != 0) {
				rc = GNUTLS_E_FILE_ERROR;
				break;
			}
			holder_answer(fd, 0, h->user, strlen(h->user));
			continue;
		default:
			rc = GNUTLS_E_INVALID_REQUEST;
			break;
		}
		if (rc < 0 || out.size > MTA_KEYHOLDER_MAX)
			holder_answer(fd, rc < 0 ? rc : GNUTLS_E_INTERNAL_ERROR,
				      NULL, 0);
		else
			holder_answer(fd, 0, out.data, out.size);
		if (out.data != NULL) {
			explicit_bzero(out.data, out.size);
			gnutls_free(out.data);
		}
	}
}

static int read_file(const char *path, gnutls_datum_t *d)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t got;

	if (fd < 0)
		return -1;
	if (fstat(fd, &st) != 0 || st.st_size <= 0 || st.st_size > 1 << 20 ||
	    (d->data = gnutls_malloc((size_t)st.st_size)) == NULL) {
		close(fd);
		return -1;
	}
	got = read(fd, d->data, (size_t)st.st_size);
	close(fd);
	if (got != st.st_size) {
		gnutls_free(d->data);
		return -1;
	}
	d->size = (unsigned)got;
	return 0;
}

static const char b64[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void base64(const unsigned char *in, size_t n, char *out)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i += 3) {
		unsigned v = (unsigned)in[i] << 16;
		if (i + 1 < n)
			v |= (unsigned)in[i + 1] << 8;
		if (i + 2 < n)
			v |= in[i + 2];
		out[o++] = b64[(v >> 18) & 63];
		out[o++] = b64[(v >> 12) & 63];
		out[o++] = i + 1 < n ? b64[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < n ? b64[v & 63] : '=';
	}
	out[o] = '\0';
}

/* The AUTH PLAIN blob of user and pass into out[700]; 0 or -1. */
static int make_plain(const char *user, const char *pass, char *out)
{
	unsigned char raw[520];
	size_t u = strlen(user), p = strlen(pass);

	if (u + p + 2 > sizeof(raw))
		return -1;
	raw[0] = '\0';
	memcpy(raw + 1, user, u);
	raw[1 + u] = '\0';
	memcpy(raw + 2 + u, pass, p);
	base64(raw, u + p + 2, out);
	explicit_bzero(raw, sizeof(raw));
	return 0;
}

/* The private key in PEM from path; 0 or -1. */
static int load_key(const char *path, gnutls_privkey_t *out)
{
	gnutls_datum_t d = {NULL, 0};
	gnutls_privkey_t k = NULL;
	int rc = -1;

	if (read_file(path, &d) != 0)
		return -1;
	if (gnutls_privkey_init(&k) >= 0 &&
	    gnutls_privkey_import_x509_raw(k, &d, GNUTLS_X509_FMT_PEM, NULL,
					   0) >= 0) {
		*out = k;
		k = NULL;
		rc = 0;
	}
	if (k != NULL)
		gnutls_privkey_deinit(k);
	explicit_bzero(d.data, d.size);
	gnutls_free(d.data);
	return rc;
}

/* RELOAD: the key and the relayhost "username password" line again,
 * read as the holder's user (with CAP_DAC_READ_SEARCH, inside its
 * Landlock rules: these two files only).  All or nothing. */
static int holder_reload(struct holder *h)
{
	gnutls_privkey_t nk = NULL;
	char line[600], user[256], pass[256], plain[700];
	ssize_t n;
	int fd;

	if (h->key_file != NULL && load_key(h->key_file, &nk) != 0)
		return -1;
	if (h->auth_file != NULL) {
		fd = open(h->auth_file, O_RDONLY | O_CLOEXEC);
		n = fd < 0 ? -1 : read(fd, line, sizeof(line) - 1);
		if (fd >= 0)
			close(fd);
		line[n > 0 ? n : 0] = '\0';
		line[strcspn(line, "\n")] = '\0';
		if (n <= 0 || sscanf(line, "%255s %255s", user, pass) != 2 ||
		    make_plain(user, pass, plain) != 0) {
			explicit_bzero(line, sizeof(line));
			explicit_bzero(pass, sizeof(pass));
			if (nk != NULL)
				gnutls_privkey_deinit(nk);
			return -1;
		}
		explicit_bzero(line, sizeof(line));
		memcpy(h->user, user, sizeof(user));
		memcpy(h->pass, pass, sizeof(pass));
		memcpy(h->plain, plain, sizeof(plain));
		explicit_bzero(pass, sizeof(pass));
		explicit_bzero(plain, sizeof(plain));
	}
	if (nk != NULL) {
		gnutls_privkey_deinit(h->key);
		h->key = nk;
	}
	return 0;
}

/* After the drop (PR_SET_KEEPCAPS kept the permitted set): keep only
 * CAP_DAC_READ_SEARCH, so RELOAD can read a key that is root's alone
 * (0600); Landlock limits it to the holder's two files. */
static int keep_read_cap(char *err, size_t errlen)
{
	struct __user_cap_header_struct hd = {
		.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	struct __user_cap_data_struct cd[2];

	memset(cd, 0, sizeof(cd));
	cd[0].permitted = cd[0].effective = 1u << CAP_DAC_READ_SEARCH;
	if (syscall(SYS_capset, &hd, cd) != 0 ||
	    prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0) {
		snprintf(err, errlen, "capset: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* In the child: never returns. */
__attribute__((noreturn)) static void
holder_main(int fd, pid_t parent, const char *key_file,
	    const char *auth_file, const char *user, const char *pass,
	    const struct mta_privdrop *pd)
{
	struct holder h;
	char err[300] = "";
	const char *ro[2] = {key_file, auth_file};
	int abi;

	memset(&h, 0, sizeof(h));
	h.key_file = key_file;
	h.auth_file = auth_file;
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
		_exit(1);
	(void)prctl(PR_SET_NAME, "mtad-keyholder");
	if (key_file != NULL && load_key(key_file, &h.key) != 0) {
		fprintf(stderr, "mtad-keyholder: %s: cannot load\n", key_file);
		_exit(1);
	}
	if (user != NULL && pass != NULL) {
		/* kept as given too: this is where the secret lives */
		snprintf(h.user, sizeof(h.user), "%s", user);
		snprintf(h.pass, sizeof(h.pass), "%s", pass);
		if (make_plain(user, pass, h.plain) != 0)
			_exit(1);
	}
	/* nothing but the socket and stderr */
	if (fd != 3) {
		if (dup2(fd, 3) < 0)
			_exit(1);
		fd = 3;
	}
	(void)close(0);
	(void)close(1);
	(void)syscall(SYS_close_range, 4, ~0U, 0);
	if ((pd->active && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) ||
	    mta_privdrop_apply(pd, err, sizeof(err)) != 0 ||
	    (pd->active && keep_read_cap(err, sizeof(err)) != 0) ||
	    mta_sandbox_landlock(NULL, 0, ro, 2, &abi, err, sizeof(err)) !=
		    0 ||
	    mta_sandbox_seccomp(MTA_SANDBOX_HOLDER, false, err, sizeof(err)) <
		    0) {
		fprintf(stderr, "mtad-keyholder: %s\n", err);
		_exit(1);
	}
	holder_serve(fd, &h);
	_exit(0);
}

/* ------------------------------------------------------------------------ */
/* the daemon side */

int mta_keyholder_start(const char *key_file, const char *auth_file,
			const char *auth_user, const char *auth_pass,
			const struct mta_privdrop *pd,
			struct mta_keyholder **out, char *err, size_t errlen)
{
	struct mta_keyholder *kh = calloc(1, sizeof(*kh));
	pid_t parent = getpid();
	int sv[2];

	if (kh == NULL)
		return -ENOMEM;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
		snprintf(err, errlen, "socketpair: %s", strerror(errno));
		free(kh);
		return -errno;
	}
	fflush(stderr);
	kh->pid = fork();
	if (kh->pid < 0) {
		snprintf(err, errlen, "fork: %s", strerror(errno));
		close(sv[0]);
		close(sv[1]);
		free(kh);
		return -EAGAIN;
	}
	if (kh->pid == 0) {
		close(sv[0]);
		holder_main(sv[1], parent, key_file, auth_file, auth_user,
			    auth_pass, pd);
	}
	close(sv[1]);
	kh->fd = sv[0];
	pthread_mutex_init(&kh->mu, NULL); /* cannot fail on Linux */
	*out = kh;
	return 0;
}

/* One request, one answer.  The answer's payload goes to *out (gnutls
 * memory) or, when out is NULL, into raw[0..rawlen). */
/* Logged once: from here on every request fails at once. */
static void mark_dead(struct mta_keyholder *kh)
{
	struct mta_logline ll;

	if (kh->dead)
		return;
	kh->dead = true;
	mta_log_begin(&ll, MTA_LOG_ERR, "keyholder_died");
	mta_log_int(&ll, "pid", (long long)kh->pid);
	mta_log_str(&ll, "effect",
		    "STARTTLS is no longer offered and relayhost AUTH fails "
		    "until mtad is restarted; queued mail is kept");
	mta_log_end(&ll);
}

static int roundtrip_locked(struct mta_keyholder *kh, uint32_t type,
			    uint32_t algo, uint32_t flags,
			    const gnutls_datum_t *in, gnutls_datum_t *out,
			    size_t *outlen, char *raw, size_t rawlen)
{
	unsigned char buf[sizeof(struct kh_req) + MTA_KEYHOLDER_MAX + 1];
	struct kh_req r = {.type = type, .algo = algo, .flags = flags};
	struct kh_ans a;
	size_t inlen = in != NULL ? in->size : 0;
	ssize_t n;

	if (kh->dead)
		return GNUTLS_E_PK_SIGN_FAILED;
	if (inlen > MTA_KEYHOLDER_MAX)
		return GNUTLS_E_INVALID_REQUEST;
	r.len = (uint32_t)inlen;
	memcpy(buf, &r, sizeof(r));
	if (inlen > 0)
		memcpy(buf + sizeof(r), in->data, inlen);
	do
		n = send(kh->fd, buf, sizeof(r) + inlen, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		goto dead;
	do
		n = recv(kh->fd, buf, sizeof(buf), 0);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		goto dead;
	if ((size_t)n < sizeof(a))
		return GNUTLS_E_INTERNAL_ERROR;
	memcpy(&a, buf, sizeof(a));
	if (a.len > MTA_KEYHOLDER_MAX || (size_t)n != sizeof(a) + a.len)
		return GNUTLS_E_INTERNAL_ERROR;
	if (a.status < 0)
		return a.status;
	if (out != NULL) {
		out->data = gnutls_malloc(a.len ? a.len : 1);
		if (out->data == NULL)
			return GNUTLS_E_MEMORY_ERROR;
		memcpy(out->data, buf + sizeof(a), a.len);
		out->size = a.len;
	} else {
		if (a.len >= rawlen)
			return GNUTLS_E_SHORT_MEMORY_BUFFER;
		memcpy(raw, buf + sizeof(a), a.len);
		raw[a.len] = '\0';
		*outlen = a.len;
	}
	explicit_bzero(buf, sizeof(buf));
	return 0;

dead:
	mark_dead(kh);
	return GNUTLS_E_PK_SIGN_FAILED;
}

static int roundtrip(struct mta_keyholder *kh, uint32_t type, uint32_t algo,
		     uint32_t flags, const gnutls_datum_t *in,
		     gnutls_datum_t *out, size_t *outlen, char *raw,
		     size_t rawlen)
{
	int rc;

	pthread_mutex_lock(&kh->mu);
	rc = roundtrip_locked(kh, type, algo, flags, in, out, outlen, raw,
			      rawlen);
	pthread_mutex_unlock(&kh->mu);
	return rc;
}

static int cb_sign_data(gnutls_privkey_t key, gnutls_sign_algorithm_t algo,
			void *ud, unsigned flags, const gnutls_datum_t *data,
			gnutls_datum_t *sig)
{
	return roundtrip(ud, KH_SIGN_DATA, (uint32_t)algo, flags, data, sig,
			 NULL, NULL, 0);
}

static int cb_sign_hash(gnutls_privkey_t key, gnutls_sign_algorithm_t algo,
			void *ud, unsigned flags, const gnutls_datum_t *hash,
			gnutls_datum_t *sig)
{
	return roundtrip(ud, KH_SIGN_HASH, (uint32_t)algo, flags, hash, sig,
			 NULL, NULL, 0);
}

static int cb_decrypt(gnutls_privkey_t key, void *ud,
		      const gnutls_datum_t *ct, gnutls_datum_t *pt)
{
	return roundtrip(ud, KH_DECRYPT, 0, 0, ct, pt, NULL, NULL, 0);
}

static int cb_info(gnutls_privkey_t key, unsigned flags, void *ud)
{
	struct mta_keyholder *kh = ud;

	if (flags & GNUTLS_PRIVKEY_INFO_PK_ALGO)
		return (int)kh->pk;
	if (flags & GNUTLS_PRIVKEY_INFO_PK_ALGO_BITS)
		return (int)kh->bits;
	if (flags & GNUTLS_PRIVKEY_INFO_HAVE_SIGN_ALGO)
		return gnutls_sign_supports_pk_algorithm(
			GNUTLS_FLAGS_TO_SIGN_ALGO(flags), kh->pk);
	return -1;
}

int mta_keyholder_privkey(struct mta_keyholder *kh, gnutls_pubkey_t pub,
			  gnutls_privkey_t *out)
{
	gnutls_privkey_t k;
	unsigned bits = 0;
	int pk = gnutls_pubkey_get_pk_algorithm(pub, &bits);

	if (pk < 0)
		return MTA_ETLS;
	kh->pk = (gnutls_pk_algorithm_t)pk;
	kh->bits = bits;
	if (gnutls_privkey_init(&k) < 0)
		return -ENOMEM;
	if (gnutls_privkey_import_ext4(k, kh, cb_sign_data, cb_sign_hash,
				       cb_decrypt, NULL, cb_info, 0) < 0) {
		gnutls_privkey_deinit(k);
		return MTA_ETLS;
	}
	*out = k;
	return 0;
}

int mta_keyholder_auth(struct mta_keyholder *kh, char *buf, size_t len)
{
	size_t got = 0;

	return roundtrip(kh, KH_AUTH_PLAIN, 0, 0, NULL, NULL, &got, buf,
			 len) == 0
		       ? 0
		       : -EPIPE;
}

int mta_keyholder_reload(struct mta_keyholder *kh, char *user, size_t len)
{
	size_t got = 0;

	return roundtrip(kh, KH_RELOAD, 0, 0, NULL, NULL, &got, user, len) ==
			       0
		       ? 0
		       : MTA_ETLS;
}

bool mta_keyholder_alive(struct mta_keyholder *kh)
{
	struct pollfd p;
	char c;
	bool alive = true;

	if (kh == NULL)
		return false;
	pthread_mutex_lock(&kh->mu);
	if (kh->dead) {
		pthread_mutex_unlock(&kh->mu);
		return false;
	}
	/* between round trips nothing is due from the holder: a readable
	 * socket is its end of file (or junk: either way not trusted) */
	p.fd = kh->fd;
	p.events = POLLIN;
	p.revents = 0;
	if (poll(&p, 1, 0) == 1 &&
	    ((p.revents & (POLLHUP | POLLERR)) ||
	     recv(kh->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) >= 0)) {
		mark_dead(kh);
		alive = false;
	}
	pthread_mutex_unlock(&kh->mu);
	return alive;
}

pid_t mta_keyholder_pid(const struct mta_keyholder *kh)
{
	return kh->pid;
}

void mta_keyholder_free(struct mta_keyholder *kh)
{
	if (kh == NULL)
		return;
	close(kh->fd);
	(void)waitpid(kh->pid, NULL, 0);
	pthread_mutex_destroy(&kh->mu);
	free(kh);
}
