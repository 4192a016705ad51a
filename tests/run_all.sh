#!/usr/bin/env bash
# Every test of `make test`: the warning-free build, unit tests and fuzz
# corpus replay, the same under ASan+UBSan, the threaded parts under TSan,
# then the integration suite against the real daemon (ASan build) and the
# container image (tests/container: built with buildah and run).
# Results go to build/test-results/ for tests/summarize.py.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
res=build/test-results
mkdir -p build
rm -rf "$res"
mkdir -p "$res"
fail=0
step() {
	local name=$1
	shift
	echo "== $name"
	if ! "$@"; then
		echo "!! $name failed"
		echo "$name" >>"$res/failed_steps"
		fail=1
		return 1
	fi
}
setup() { # dir, meson options...
	local dir=$1
	shift
	if [ ! -f "$dir/build.ninja" ]; then
		meson setup "$dir" -Dwerror=true "$@" >/dev/null || return 1
	else
		# an existing dir gets the options too (e.g. test_hooks)
		meson configure "$dir" -Dwerror=true "$@" >/dev/null || return 1
	fi
	ninja -C "$dir"
}
mtest() { # dir, label, meson test args...
	local dir=$1 label=$2
	shift 2
	meson test -C "$dir" --print-errorlogs --num-processes 2 "$@"
	local rc=$?
	cp "$dir/meson-logs/testlog.json" "$res/meson-$label.json" 2>/dev/null
	return $rc
}

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1

if step build setup build; then
	step unit mtest build plain
fi
if step build-asan setup build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dtest_hooks=true; then
	step unit-asan mtest build-asan asan --suite unit --suite fuzz
fi
if step build-tsan setup build-tsan -Db_sanitize=thread -Db_lundef=false; then
	step unit-tsan mtest build-tsan tsan unit_writer unit_spool
fi
# the daemon's loop threads (server.threads) and writer ports under TSan;
# the TLS cases need the key holder, whose seccomp list kills TSan's own
# background thread, so they run under ASan only
if [ -x build-tsan/mtad ]; then
	step integration-tsan env MTAD_BUILD_DIR="$root/build-tsan" \
		/usr/bin/python3 -m pytest -q -rs -p no:cacheprovider \
		--junitxml="$res/integration-tsan.xml" \
		-k "not reload and not auth_failures" \
		tests/integration/test_threads.py tests/integration/test_basic.py \
		tests/integration/test_limits_signals.py
fi
if [ -x build-asan/mtad ]; then
	step integration env MTAD_BUILD_DIR="$root/build-asan" \
		/usr/bin/python3 -m pytest -q -rs -p no:cacheprovider \
		--junitxml="$res/integration.xml" tests/integration tests/reliability \
		tests/container
fi
exit $fail
