#include "sandbox.h"

#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/landlock.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ASan build, with its LeakSanitizer (GCC's macro, clang's
 * __has_feature): the only builds that get the relaxation below */
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZER_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZER_BUILD 1
#endif
#endif
#ifndef SANITIZER_BUILD
#define SANITIZER_BUILD 0
#endif

/* ------------------------------------------------------------------------ */
/* Landlock (raw syscalls: glibc 2.36 has no wrappers) */

#define LL_FS_ABI1                                                            \
	(LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE |         \
	 LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR |         \
	 LANDLOCK_ACCESS_FS_REMOVE_DIR | LANDLOCK_ACCESS_FS_REMOVE_FILE |     \
	 LANDLOCK_ACCESS_FS_MAKE_CHAR | LANDLOCK_ACCESS_FS_MAKE_DIR |         \
	 LANDLOCK_ACCESS_FS_MAKE_REG | LANDLOCK_ACCESS_FS_MAKE_SOCK |         \
	 LANDLOCK_ACCESS_FS_MAKE_FIFO | LANDLOCK_ACCESS_FS_MAKE_BLOCK |       \
	 LANDLOCK_ACCESS_FS_MAKE_SYM)
/* ABI 2: REFER (1 << 13); ABI 3: TRUNCATE (1 << 14) */
#define LL_REFER (1ULL << 13)
#define LL_TRUNCATE (1ULL << 14)

#define LL_READ (LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR)

static int add_rule(int ruleset, const char *path, uint64_t want,
		    uint64_t handled, char *err, size_t errlen)
{
	struct landlock_path_beneath_attr pb;
	struct stat st;
	int fd = open(path, O_PATH | O_CLOEXEC);

	if (fd < 0) {
		/* nothing there to allow, or nothing the user may reach
		 * anyway (the rules are made after the drop) */
		if (errno == ENOENT || errno == EACCES)
			return 0;
		snprintf(err, errlen, "landlock: %s: %s", path,
			 strerror(errno));
		return -1;
	}
	memset(&pb, 0, sizeof(pb));
	pb.parent_fd = fd;
	pb.allowed_access = want & handled;
	/* a file takes only file rights */
	if (fstat(fd, &st) == 0 && !S_ISDIR(st.st_mode))
		pb.allowed_access &=
			LANDLOCK_ACCESS_FS_READ_FILE |
			LANDLOCK_ACCESS_FS_WRITE_FILE | LL_TRUNCATE;
	if (syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH,
		    &pb, 0) != 0) {
		snprintf(err, errlen, "landlock: add %s: %s", path,
			 strerror(errno));
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

/* Threads of this process per /proc/self/status, or 0 when unknown. */
static long thread_count(void)
{
	char line[128];
	long n = 0;
	FILE *f = fopen("/proc/self/status", "re");

	if (f == NULL)
		return 0;
	while (fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "Threads: %ld", &n) == 1)
			break;
	fclose(f);
	return n;
}

int mta_sandbox_landlock(const char *const *rw, size_t nrw,
			 const char *const *ro, size_t nro, int *abi,
			 char *err, size_t errlen)
{
	struct landlock_ruleset_attr ra;
	uint64_t handled = LL_FS_ABI1;
	long v;
	int rs;

	*abi = 0;
	/* Landlock and Landlock alone binds only the calling thread: a
	 * thread started before this would stay outside (seccomp's TSYNC
	 * would cover it, Landlock not) */
	if (thread_count() > 1) {
		snprintf(err, errlen,
			 "landlock: %ld threads already running (the sandbox "
			 "must come before the first thread)", thread_count());
		return -1;
	}
	v = syscall(SYS_landlock_create_ruleset, NULL, 0,
		    LANDLOCK_CREATE_RULESET_VERSION);
	if (v < 1)
		return 0; /* ENOSYS / EOPNOTSUPP: the kernel lacks it */
	if (v >= 2)
		handled |= LL_REFER;
	if (v >= 3)
		handled |= LL_TRUNCATE;
	memset(&ra, 0, sizeof(ra));
	ra.handled_access_fs = handled;
	rs = (int)syscall(SYS_landlock_create_ruleset, &ra, sizeof(ra), 0);
	if (rs < 0) {
		snprintf(err, errlen, "landlock_create_ruleset: %s",
			 strerror(errno));
		return -1;
	}
	for (size_t i = 0; i < nrw; i++)
		if (rw[i] != NULL &&
		    add_rule(rs, rw[i], handled & ~LANDLOCK_ACCESS_FS_EXECUTE,
			     handled, err, errlen) != 0)
			goto fail;
	for (size_t i = 0; i < nro; i++)
		if (ro[i] != NULL &&
		    add_rule(rs, ro[i], LL_READ, handled, err, errlen) != 0)
			goto fail;
#if SANITIZER_BUILD
	if (add_rule(rs, "/proc/self", LL_READ, handled, err, errlen) != 0)
		goto fail;
#endif
	if (syscall(SYS_landlock_restrict_self, rs, 0) != 0) {
		snprintf(err, errlen, "landlock_restrict_self: %s",
			 strerror(errno));
		goto fail;
	}
	close(rs);
	*abi = (int)v;
	return 0;

fail:
	close(rs);
	return -1;
}

/* ------------------------------------------------------------------------ */
/* seccomp */

/* Found by running the integration tests with the filter in force (the
 * log_only switch had the kernel log every call missing); see
 * docs/security.md. */
static const char *const daemon_calls[] = {
	/* files (Landlock decides which) */
	"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv",
	"pwritev", "lseek", "close", "open", "openat", "stat", "fstat",
	"lstat", "newfstatat", "statx", "fstatfs", "statfs", "access",
	"faccessat", "faccessat2", "readlink", "readlinkat", "getdents64",
	"mkdir", "mkdirat", "rename", "renameat", "renameat2", "unlink",
	"unlinkat", "rmdir", "fsync", "fdatasync", "ftruncate", "fallocate",
	"flock", "fcntl", "dup", "dup2", "dup3", "pipe", "pipe2", "umask",
	"getcwd", "chmod", "fchmod", "sync_file_range",
	/* memory */
	"mmap", "munmap", "mprotect", "mremap", "madvise", "brk", "msync",
	"mincore", "membarrier",
	/* network */
	"socket", "connect", "accept", "accept4", "bind", "listen",
	"getsockname", "getpeername", "setsockopt", "getsockopt", "sendto",
	"recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown",
	"socketpair",
	/* event loop */
	"epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait",
	"epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select", "pselect6",
	"eventfd", "eventfd2", "timerfd_create", "timerfd_settime",
	"timerfd_gettime", "signalfd", "signalfd4",
	/* threads, signals, time, ids */
	"futex", "set_robust_list", "get_robust_list", "rseq", "sched_yield",
	"sched_getaffinity", "set_tid_address", "gettid", "getpid",
	"getppid", "getuid", "geteuid", "getgid", "getegid", "getresuid",
	"getresgid", "getgroups", "exit", "exit_group", "tgkill", "tkill",
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
	"rt_sigtimedwait", "nanosleep", "clock_nanosleep", "clock_gettime",
	"clock_getres", "gettimeofday", "time", "getrandom", "uname",
	"prlimit64", "getrlimit", "getrusage", "sysinfo", "restart_syscall",
	"wait4", "getpgrp", "getsid", "ioctl", "prctl", "getpriority",
	"sched_getparam", "sched_getscheduler", "sched_setscheduler",
	"mlock", "munlock",
};

static const char *const holder_calls[] = {
	"read", "write", "readv", "writev", "recvmsg", "sendmsg", "recvfrom",
	"sendto", "close", "mmap", "munmap", "mremap", "mprotect", "madvise",
	"brk", "futex", "getrandom", "clock_gettime", "gettimeofday",
	"exit", "exit_group", "rt_sigreturn", "rt_sigprocmask", "getpid",
	"gettid", "fstat", "newfstatat", "poll", "ppoll", "restart_syscall",
	/* RELOAD: the key file and the relayhost auth file (Landlock: those
	 * two only) */
	"open", "openat", "lseek",
};

static int allow(scmp_filter_ctx ctx, const char *name)
{
	int nr = seccomp_syscall_resolve_name(name);

	if (nr == __NR_SCMP_ERROR)
		return 0; /* not on this architecture */
	return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
}

int mta_sandbox_seccomp(enum mta_sandbox_role role, bool log_only, char *err,
			size_t errlen)
{
	const char *const *list;
	size_t n;
	uint32_t def = SCMP_ACT_KILL_PROCESS;
	scmp_filter_ctx ctx;
	int rc;

#ifdef MTAD_TEST_HOOKS
	/* developing the list: a call not on it is allowed and the kernel
	 * writes an audit record (dmesg: type=1326 ... syscall=N
	 * code=0x7ffc0000); docs/security.md says how it is used */
	if (log_only)
		def = SCMP_ACT_LOG;
#else
	(void)log_only;
#endif
	if (role == MTA_SANDBOX_HOLDER) {
		list = holder_calls;
		n = sizeof(holder_calls) / sizeof(holder_calls[0]);
	} else {
		list = daemon_calls;
		n = sizeof(daemon_calls) / sizeof(daemon_calls[0]);
	}
	/* the kernel (or an emulator such as valgrind) without seccomp:
	 * optional where it is missing, as Landlock is */
	if (syscall(SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0,
		    &(uint32_t){SECCOMP_RET_KILL_PROCESS}) != 0 &&
	    errno == ENOSYS)
		return 1;
	if ((ctx = seccomp_init(def)) == NULL) {
		snprintf(err, errlen, "seccomp_init failed");
		return -1;
	}
	rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
	for (size_t i = 0; rc == 0 && i < n; i++)
		rc = allow(ctx, list[i]);
	if (rc == 0 && role == MTA_SANDBOX_DAEMON) {
		/* threads only: a fork would escape nothing Landlock or
		 * seccomp hold, but there is no reason for one */
		rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
				      SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD,
					      CLONE_THREAD));
		/* clone3 passes its flags in memory seccomp cannot read:
		 * ENOSYS makes glibc fall back to clone */
		if (rc == 0)
			rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS),
					      SCMP_SYS(clone3), 0);
		/* io_uring's submissions are not seen by seccomp: refused
		 * (libuv >= 1.45 then falls back to its thread pool) */
		if (rc == 0)
			rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS),
					      SCMP_SYS(io_uring_setup), 0);
#if SANITIZER_BUILD
		/* Test-build relaxation (docs/security.md), never in a
		 * production build: LeakSanitizer's exit-time check stops
		 * the world from a tracer it starts with exactly this
		 * clone (a process sharing our memory, not a thread),
		 * which lists our threads with getdents and ptrace()s
		 * them.  Found with the kernel's seccomp audit records
		 * (dmesg type=1326) of a daemon that hung at exit. */
		if (rc == 0)
			rc = seccomp_rule_add(
				ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
				SCMP_A0(SCMP_CMP_MASKED_EQ, 0xffffffffu,
					CLONE_VM | CLONE_FS | CLONE_FILES |
						CLONE_UNTRACED));
		if (rc == 0)
			rc = allow(ctx, "ptrace");
		if (rc == 0)
			rc = allow(ctx, "getdents");
#endif
	}
	if (rc == 0 && role == MTA_SANDBOX_HOLDER && SANITIZER_BUILD)
		/* ASan removes its alternate signal stack on _exit() */
		rc = allow(ctx, "sigaltstack");
#if SANITIZER_BUILD
	/* LeakSanitizer ptrace()s its own threads at exit; the drop made the
	 * process non-dumpable, which forbids that (sanitizer builds only) */
	if (rc == 0 && role == MTA_SANDBOX_DAEMON)
		(void)prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
#endif
	if (rc == 0)
		rc = seccomp_load(ctx);
	seccomp_release(ctx);
	if (rc != 0) {
		snprintf(err, errlen, "seccomp: %s", strerror(-rc));
		return -1;
	}
	return 0;
}

#ifdef MTAD_TEST_HOOKS
void mta_sandbox_test_escape(const char *what, const char *arg)
{
	struct mta_logline ll;
	int fd, e = 0;

	if (strcmp(what, "shadow") == 0) {
		fd = open("/etc/shadow", O_RDONLY | O_CLOEXEC);
		e = fd < 0 ? errno : 0;
		if (fd >= 0)
			close(fd);
	} else if (strcmp(what, "write") == 0) {
		fd = open(arg, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
		e = fd < 0 ? errno : 0;
		if (fd >= 0)
			close(fd);
	} else if (strcmp(what, "exec") == 0) {
		char *const argv[] = {(char *)"/bin/sh", (char *)"-c",
				      (char *)"true", NULL};
		char *const envp[] = {NULL};
		execve("/bin/sh", argv, envp);
		e = errno;
	} else {
		return;
	}
	mta_log_begin(&ll, MTA_LOG_WARN, "test_escape");
	mta_log_str(&ll, "what", what);
	mta_log_str(&ll, "result", e == 0 ? "allowed" : strerrorname_np(e));
	mta_log_end(&ll);
}
#endif
