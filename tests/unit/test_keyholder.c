/* Unit tests of the key holder (libmta/keyholder.c): a signature made
 * through the external key verifies with the public key, the AUTH PLAIN
 * blob is base64("\0user\0pass"), a request after the holder died fails
 * at once and mta_keyholder_alive() (what mta_tls_creds_usable() asks
 * before STARTTLS is offered) turns false.  Run as any user: not root,
 * the holder keeps the ids (privdrop.h) but installs its sandbox. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "keyholder.h"
#include "privdrop.h"

struct fx {
	char keyfile[256];
	gnutls_pubkey_t pub;
	struct mta_keyholder *kh;
};

static int setup(void **st)
{
	struct fx *f = calloc(1, sizeof(*f));
	const char *dir = getenv("MTA_TEST_TMPDIR");
	gnutls_x509_privkey_t k;
	gnutls_privkey_t pk;
	gnutls_datum_t pem = {NULL, 0};
	struct mta_privdrop pd;
	char err[300] = "";
	FILE *out;

	assert_non_null(f);
	snprintf(f->keyfile, sizeof(f->keyfile), "%s/test_keyholder.%d.key",
		 dir ? dir : "/tmp", (int)getpid());
	assert_int_equal(gnutls_x509_privkey_init(&k), 0);
	assert_int_equal(gnutls_x509_privkey_generate(k, GNUTLS_PK_ECDSA,
			 GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0), 0);
	assert_int_equal(gnutls_x509_privkey_export2(k, GNUTLS_X509_FMT_PEM,
						     &pem), 0);
	out = fopen(f->keyfile, "w");
	assert_non_null(out);
	assert_int_equal(fwrite(pem.data, 1, pem.size, out), pem.size);
	fclose(out);
	gnutls_free(pem.data);
	assert_int_equal(gnutls_privkey_init(&pk), 0);
	assert_int_equal(gnutls_privkey_import_x509(pk, k, 0), 0);
	assert_int_equal(gnutls_pubkey_init(&f->pub), 0);
	assert_int_equal(gnutls_pubkey_import_privkey(f->pub, pk, 0, 0), 0);
	gnutls_privkey_deinit(pk);
	gnutls_x509_privkey_deinit(k);

	if (geteuid() == 0) {
		/* as root the holder would drop to a user: use nobody */
		assert_int_equal(mta_privdrop_resolve("nobody", "nogroup", &pd,
						      err, sizeof(err)), 0);
	} else {
		assert_int_equal(mta_privdrop_resolve(NULL, NULL, &pd, err,
						      sizeof(err)), 0);
	}
	assert_int_equal(mta_keyholder_start(f->keyfile, NULL, "relayuser",
					     "s3cret", &pd, &f->kh, err,
					     sizeof(err)), 0);
	*st = f;
	return 0;
}

static int teardown(void **st)
{
	struct fx *f = *st;

	mta_keyholder_free(f->kh);
	gnutls_pubkey_deinit(f->pub);
	unlink(f->keyfile);
	free(f);
	return 0;
}

static void signs_with_held_key(void **st)
{
	struct fx *f = *st;
	gnutls_privkey_t ext;
	const gnutls_datum_t data = {(unsigned char *)"handshake", 9};
	gnutls_datum_t sig = {NULL, 0};

	assert_true(mta_keyholder_alive(f->kh));
	assert_int_equal(mta_keyholder_privkey(f->kh, f->pub, &ext), 0);
	assert_int_equal(gnutls_privkey_sign_data(ext, GNUTLS_DIG_SHA256, 0,
						  &data, &sig), 0);
	assert_true(gnutls_pubkey_verify_data2(f->pub,
					       GNUTLS_SIGN_ECDSA_SHA256, 0,
					       &data, &sig) >= 0);
	gnutls_free(sig.data);
	gnutls_privkey_deinit(ext);
}

static void auth_blob(void **st)
{
	struct fx *f = *st;
	char buf[100];

	/* base64 of "\0relayuser\0s3cret" */
	assert_int_equal(mta_keyholder_auth(f->kh, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "AHJlbGF5dXNlcgBzM2NyZXQ=");
}

static void death_is_noticed(void **st)
{
	struct fx *f = *st;
	char buf[100];
	int status;
	pid_t pid = mta_keyholder_pid(f->kh);

	assert_true(mta_keyholder_alive(f->kh));
	assert_int_equal(kill(pid, SIGKILL), 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	/* no request made yet: the closed socket alone says so */
	assert_false(mta_keyholder_alive(f->kh));
	assert_true(mta_keyholder_auth(f->kh, buf, sizeof(buf)) < 0);
	assert_false(mta_keyholder_alive(f->kh));
}

static void write_text(const char *path, const char *text)
{
	FILE *out = fopen(path, "w");

	assert_non_null(out);
	fputs(text, out);
	fclose(out);
	assert_int_equal(chmod(path, 0600), 0); /* root's alone */
}

/* RELOAD (SIGHUP): the holder reads its key file and relayhost file
 * again, from the paths it was started with, as the dropped user (with
 * CAP_DAC_READ_SEARCH when started as root: the files are 0600 here),
 * inside its Landlock and seccomp; a failed reload keeps the old ones. */
static void reload_rereads_files(void **st)
{
	struct fx *f = *st;
	struct mta_keyholder *kh;
	struct mta_privdrop pd;
	char auth[300], err[300] = "", user[64] = "", buf[100];

	snprintf(auth, sizeof(auth), "%s.auth", f->keyfile);
	write_text(auth, "relayuser s3cret\n");
	assert_int_equal(chmod(f->keyfile, 0600), 0);
	if (geteuid() == 0)
		assert_int_equal(mta_privdrop_resolve("nobody", "nogroup", &pd,
						      err, sizeof(err)), 0);
	else
		assert_int_equal(mta_privdrop_resolve(NULL, NULL, &pd, err,
						      sizeof(err)), 0);
	assert_int_equal(mta_keyholder_start(f->keyfile, auth, "relayuser",
					     "s3cret", &pd, &kh, err,
					     sizeof(err)), 0);
	assert_int_equal(mta_keyholder_auth(kh, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "AHJlbGF5dXNlcgBzM2NyZXQ=");
	/* new credentials in place: the next blob is theirs */
	write_text(auth, "other pw2\n");
	assert_int_equal(mta_keyholder_reload(kh, user, sizeof(user)), 0);
	assert_string_equal(user, "other");
	assert_int_equal(mta_keyholder_auth(kh, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "AG90aGVyAHB3Mg=="); /* "\0other\0pw2" */
	/* a broken file: refused, the old blob stays, the key still signs */
	write_text(auth, "only-one-word\n");
	assert_true(mta_keyholder_reload(kh, user, sizeof(user)) < 0);
	assert_int_equal(mta_keyholder_auth(kh, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "AG90aGVyAHB3Mg==");
	assert_true(mta_keyholder_alive(kh));
	gnutls_privkey_t ext;
	const gnutls_datum_t data = {(unsigned char *)"after", 5};
	gnutls_datum_t sig = {NULL, 0};
	assert_int_equal(mta_keyholder_privkey(kh, f->pub, &ext), 0);
	assert_int_equal(gnutls_privkey_sign_data(ext, GNUTLS_DIG_SHA256, 0,
						  &data, &sig), 0);
	assert_true(gnutls_pubkey_verify_data2(f->pub,
					       GNUTLS_SIGN_ECDSA_SHA256, 0,
					       &data, &sig) >= 0);
	gnutls_free(sig.data);
	gnutls_privkey_deinit(ext);
	mta_keyholder_free(kh);
	unlink(auth);
}

int main(void)
{
#if defined(__SANITIZE_THREAD__)
	/* TSan's runtime in the forked holder makes calls its seccomp list
	 * refuses (the holder has one thread: nothing for TSan to see) */
	puts("skipped under ThreadSanitizer");
	return 77;
#endif
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(signs_with_held_key, setup,
						teardown),
		cmocka_unit_test_setup_teardown(auth_blob, setup, teardown),
		cmocka_unit_test_setup_teardown(death_is_noticed, setup,
						teardown),
		cmocka_unit_test_setup_teardown(reload_rereads_files, setup,
						teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
