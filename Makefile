# mtad - top-level entry points. Everything real lives in meson.build and
# tests/run_all.sh; this file installs what is missing and wires them up.
#
#   make run     install missing Debian packages, build, start mtad in the
#                foreground with etc/mtad.conf
#   make test    the same set-up, then every test (unit, fuzz corpus replay,
#                ASan+UBSan, TSan, integration against the real daemon)
#   make build   just build (./build)
#   make fuzz    run the libFuzzer targets for a while (clang)
#   make bench   benchmarks against Postfix (tests/bench/README.md)
#   make clean

SHELL := /bin/bash
BUILD ?= build
WERROR ?= true

# Debian 12 packages the build, the tests and the lab need.
DEB_PACKAGES := gcc clang libclang-rt-14-dev meson ninja-build pkg-config \
	libuv1-dev libgetdns-dev liblmdb-dev lmdb-utils libinih-dev \
	libgnutls28-dev gnutls-bin libcurl4-gnutls-dev libcmocka-dev libcrypt-dev zlib1g-dev openssl \
	libseccomp-dev libseccomp2 strace \
	swaks libnet-ssleay-perl python3-pytest python3-aiosmtpd python3-dnspython \
	python3-cryptography python3-dkim python3-nacl python3-yaml postfix knot ldnsutils unbound \
	prometheus buildah mmdebstrap

.PHONY: all deps build run test certs fuzz bench clean

all: build

deps:
	@bash tests/install_deps.sh $(DEB_PACKAGES)

$(BUILD)/build.ninja:
	meson setup $(BUILD) -Dwerror=$(WERROR)

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

certs: var/tls/cert.pem

var/tls/cert.pem:
	@mkdir -p var/tls
	openssl req -x509 -newkey rsa:2048 -nodes -days 3650 \
		-subj "/CN=$$(hostname -f 2>/dev/null || hostname)" \
		-keyout var/tls/key.pem -out var/tls/cert.pem 2>/dev/null
	@chmod 600 var/tls/key.pem

run: build certs
	@mkdir -p var/spool
	@# as root, mtad drops to server.user (mtad): make it exist and own
	@# the spool (as an ordinary user mtad simply runs as that user)
	@if [ "$$(id -u)" -eq 0 ]; then \
		getent group mtad >/dev/null || groupadd --system mtad; \
		getent passwd mtad >/dev/null || useradd --system --gid mtad \
			--no-create-home --home-dir /nonexistent \
			--shell /usr/sbin/nologin mtad; \
		chown -R mtad:mtad var/spool; \
	fi
	exec $(BUILD)/mtad -c etc/mtad.conf

test: deps
	@bash tests/run_all.sh

fuzz: deps
	@bash tests/fuzz/run_fuzzers.sh $${FUZZ_SECONDS:-60}

# Benchmarks against Postfix, Exim and OpenSMTPD (tests/bench/README.md);
# never part of `make test`.  Exim and OpenSMTPD are not installed (one MTA
# package at a time): run.py unpacks their .debs into build-bench/peers/, and
# these are their shared libraries, installed normally.
BENCH_PEER_LIBS := libcrypt1 libdb5.3 libgnutls-dane0 libgnutls30 libidn12 \
	libidn2-0 libnsl2 libpcre2-8-0 libevent-2.1-7 libpam0g libssl3 zlib1g
bench: deps
	@bash tests/install_deps.sh valgrind $(BENCH_PEER_LIBS)
	@[ -f build-bench/build.ninja ] || meson setup build-bench --buildtype=release -Dwerror=$(WERROR)
	ninja -C build-bench
	/usr/bin/python3 tests/bench/run.py --build build-bench $(BENCH_ARGS)

clean:
	rm -rf build build-asan build-tsan build-fuzz build-bench
