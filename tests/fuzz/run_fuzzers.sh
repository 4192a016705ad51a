#!/usr/bin/env bash
# Runs every libFuzzer target (clang) for SECONDS each (default 60), starting
# from its corpus in tests/fuzz/corpus/<target>. New inputs go to
# build-fuzz/corpus-<target>; crashes to build-fuzz/crash-*. The committed
# corpus is replayed by `make test` (tests/meson.build: fuzz_replay_*).
set -euo pipefail
secs=${1:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=build-fuzz
mkdir -p "$out"
flags="-g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Ilibmta"
common="libmta/envelope.c libmta/err.c"
declare -A extra=(
	[smtp_server]="libmta/smtp_server.c libmta/smtp_server_body.c libmta/smtp_syntax.c libmta/log.c"
	[smtp_client]="libmta/smtp_client.c libmta/log.c"
	[dane]="libmta/dane.c $(pkg-config --libs gnutls)"
	[tlspolicy]=" "
	[routes]="libmta/routes.c libmta/shaping.c libmta/tlspolicy.c"
	[policy]="libmta/policy.c libmta/dane.c libmta/sts.c libmta/tlspolicy.c libmta/ct.c $(pkg-config --libs gnutls)"
	[sts]=" "
	[spool_records]=" "
	[config]="libmta/config.c libmta/config_values.c libmta/log.c libmta/dkim.c libmta/tlspolicy.c libmta/policy.c libmta/ct.c libmta/dane.c libmta/sts.c $(pkg-config --libs inih gnutls)"
	[dns]="$(pkg-config --libs getdns libuv)"
	[http]="libmta/http_request.c"
	[dkim]="libmta/dkim.c $(pkg-config --libs gnutls)"
)
status=0
for f in tests/fuzz/fuzz_*.c; do
	t=$(basename "$f" .c)
	t=${t#fuzz_}
	[ -n "${extra[$t]:-}" ] || { echo "skip $t (no source list)"; continue; }
	# shellcheck disable=SC2086
	clang $flags "$f" ${extra[$t]} $common -o "$out/fuzz_$t"
	mkdir -p "$out/corpus-$t"
	echo "== fuzz_$t for ${secs}s"
	if ! "$out/fuzz_$t" -max_total_time="$secs" -artifact_prefix="$out/crash-$t-" \
		"$out/corpus-$t" "tests/fuzz/corpus/$t"; then
		status=1
	fi
done
exit $status
