/*
 * sandbox.h - Landlock and seccomp for the network-facing process and the
 * key holder.
 *
 * DESCRIPTION
 *	mta_sandbox_landlock() restricts the file system view of the calling
 *	thread and every thread or process it starts later (Landlock,
 *	raw syscalls, ABI >= 1): read-write below each path in rw (the
 *	spool), read-only on each path in ro (config, TLS, CA, trust anchor
 *	and policy files, and what GnuTLS, getdns and curl read at run time:
 *	see docs/security.md for how that list was found).  Paths that do
 *	not exist are skipped.  Execution is handled and granted nowhere.
 *	*abi is set to the kernel's Landlock ABI, 0 when the kernel lacks
 *	Landlock (then nothing is done and 0 is returned: the layer is
 *	optional only where the kernel lacks it).
 *
 *	mta_sandbox_seccomp() installs a seccomp allow-list (libseccomp) on
 *	every thread of the process (TSYNC): any system call not on the
 *	list kills the process (SECCOMP_RET_KILL_PROCESS), so execve,
 *	ptrace, mount, module loading, kexec, bpf, keyctl, unshare and the
 *	like end it.  role MTA_SANDBOX_DAEMON allows what the event loop, the
 *	spool writer, getdns, GnuTLS and curl use; MTA_SANDBOX_HOLDER
 *	allows little more than reading and writing its socket and memory.
 *	log_only (honoured only in MTAD_TEST_HOOKS builds, for developing
 *	the list) lets a call not on the list through and has the kernel
 *	log it instead (SECCOMP_RET_LOG: an audit record type=1326 with
 *	the syscall number in dmesg), so one run finds every missing call.
 *	It must be called after mta_privdrop_apply() (no_new_privs set).
 *	It returns 0 when the filter is installed, 1 when the kernel lacks
 *	seccomp (seccomp(2) answers ENOSYS, as it does under valgrind:
 *	nothing is done, the caller logs the layer as inactive), -1 with
 *	err filled on failure.
 *
 *	mta_sandbox_test_escape() exists only in MTAD_TEST_HOOKS builds:
 *	the daemon calls it after start-up to prove the sandbox ("shadow":
 *	open /etc/shadow; "write": create the file arg; "exec": execve
 *	/bin/sh).  It logs event=test_escape with the result; an exec that
 *	seccomp allowed would be a bug and is logged as such.
 *
 * THREADS
 *	Start-up only.  Landlock covers the calling thread and what it
 *	starts later: call it before any other thread exists
 *	(mta_sandbox_landlock() checks /proc/self/status and fails when
 *	another thread is running).
 *
 * ERRORS
 *	0 or -1 with one line in err.
 *
 * SECURITY
 *	Defence in depth behind the privilege drop: a parser exploit in the
 *	daemon can read only the files listed, write only the spool, and
 *	cannot execute a program or trace another process.
 *
 * CAVEATS
 *	ASan builds (and only they) additionally allow what LeakSanitizer's
 *	exit-time stop-the-world needs: clone with exactly
 *	CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_UNTRACED, ptrace, getdents, a
 *	dumpable process and reading /proc/self; the holder sigaltstack
 *	(docs/security.md, "Sanitizer builds").  The production build does
 *	not.  The seccomp list is
 *	x86_64 / aarch64 Linux; calls named but unknown to the running
 *	architecture are skipped.
 */
#ifndef MTA_SANDBOX_H
#define MTA_SANDBOX_H

#include <stdbool.h>
#include <stddef.h>

enum mta_sandbox_role {
	MTA_SANDBOX_DAEMON,
	MTA_SANDBOX_HOLDER,
};

int mta_sandbox_landlock(const char *const *rw, size_t nrw,
			 const char *const *ro, size_t nro, int *abi,
			 char *err, size_t errlen);
int mta_sandbox_seccomp(enum mta_sandbox_role role, bool log_only, char *err,
			size_t errlen);
#ifdef MTAD_TEST_HOOKS
void mta_sandbox_test_escape(const char *what, const char *arg);
#endif

#endif
